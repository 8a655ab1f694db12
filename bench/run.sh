#!/usr/bin/env bash
# The benchmark (not part of the test run): event_crypto side by side with pgcrypto and plain PostgreSQL, in one run.
# Installs what it needs (PostgreSQL 15, contrib, gnuplot), installs event_crypto (release) into the system cluster
# with a master key, then runs bench/bench.py. Options: --rows 1000000, --rounds N (>= 5), --skip-slow.
# Output: docs/benchmarks.md and docs/benchmarks.png.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v gnuplot >/dev/null; then
  apt-get -o DPkg::Lock::Timeout=600 update -q
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends gnuplot-nox
fi
bash .ci/system-cluster.sh
python3 bench/bench.py "$@"
