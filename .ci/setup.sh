#!/usr/bin/env bash
# Installs everything event_crypto needs to build and test on a fresh Debian bookworm machine (as root):
# PostgreSQL 15 server + headers, pg_partman and pg_cron (tests with them), python3-yaml (the test of
# docs/postgres_exporter/queries.yaml reads it), clang for bindgen, dpkg-dev for the Debian package, cargo-pgrx
# 0.18.1, and `cargo pgrx init` against the system PostgreSQL; wal2json and a Python virtual environment with
# maturin, psycopg and pytest for the consumer tests (tests/consumers.sh, the Python package).
# Idempotent: each step is skipped when already done.
set -euo pipefail
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export DEBIAN_FRONTEND=noninteractive
FUZZ_VERSION=0.13.2
PGRX_VERSION=0.18.1
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
# the Python environment of the consumer package's build and tests (.ci/test.sh uses the same default)
VENV=${EVENT_CRYPTO_VENV:-$HOME/.cache/event_crypto/venv}

t0=$SECONDS
step() { echo "=== [setup $((SECONDS - t0))s] $*"; }

step "apt packages"
PKGS="postgresql-15 postgresql-server-dev-15 postgresql-contrib postgresql-15-partman postgresql-15-cron python3-yaml postgresql-15-wal2json libclang-dev clang pkg-config libssl-dev sudo dpkg-dev"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  apt-get -o DPkg::Lock::Timeout=600 update -q
  # postgresql-15 is named together with its headers so both land at the same minor version
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends $PKGS
fi

step "rust components"
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt

step "cargo-pgrx $PGRX_VERSION"
if [ "$(cargo pgrx --version 2>/dev/null || true)" != "cargo-pgrx $PGRX_VERSION" ]; then
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

step "cargo-fuzz $FUZZ_VERSION"
if [ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $FUZZ_VERSION" ]; then
  cargo install cargo-fuzz --version "$FUZZ_VERSION" --locked
fi

step "cargo pgrx init"
PGRX_CFG="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
if ! grep -qx "pg15 = \"$PG_CONFIG\"" "$PGRX_CFG" 2>/dev/null; then
  cargo pgrx init --pg15 "$PG_CONFIG"
fi
step "python venv for the consumer package ($VENV)"
if ! "$VENV/bin/python" -c 'import maturin, psycopg, pytest' 2>/dev/null; then
  if ! python3 -m venv --clear "$VENV" >/dev/null 2>&1; then
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends python3-venv
    python3 -m venv --clear "$VENV"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check 'maturin>=1.5,<2' 'psycopg[binary]>=3.1' 'pytest>=7'
fi
step "done"
