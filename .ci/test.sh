#!/usr/bin/env bash
# Runs every test of event_crypto on this machine, installing what is missing first (.ci/setup.sh):
#   1. cargo fmt --check and cargo clippy -D warnings
#   2. core unit, known-answer and frozen-vector tests (plain cargo test), the consumer library's and CLI's unit tests,
#      and 30 s of cargo fuzz per target
#   3. #[pg_test] tests inside PostgreSQL (cargo pgrx test)
#   4. pg_regress golden files for the SQL API (tests/pg_regress)
#   5. isolation tests (PostgreSQL's isolation tester: explicit interleavings of sessions, tests/isolation)
#   6. the upgrade from every release (tests/upgrade.sh: ALTER EXTENSION UPDATE on data each release's build made)
#   7. demo/demo.sql in a fresh database, then integration tests over real connections: several sessions, a hot standby, pg_dump/pg_restore, a second cluster with
#      another master key, key files with bad permissions (crates/event_crypto_it, clusters from tests/clusters.sh)
#   8. consumers outside PostgreSQL (tests/consumers.sh, its own cluster with wal2json): the event-crypto CLI on
#      pg_recvlogical's stream and on Debezium events, shred within the TTL, key patterns, revocation; then the Python
#      package (a wheel built with maturin) with pytest against the same cluster
#   9. the Debian package and the atomic install (tests/package.sh: build, metadata and files, install over a running
#      server with packaging/install.sh and apt-get, event-crypto-keygen, the demo on the package, removal)
# Every install into the system PostgreSQL renames files into place (packaging/install.sh; cargo pgrx test's own
# `sudo cp` goes through .ci/pgrx-sudo), so servers of this machine that preload event_crypto keep running.
# Usage: bash .ci/test.sh            (as root; postgres is the OS user that runs the test servers)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
ROOT=$(pwd)
PG_BIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PG_BIN/pg_config
PG_REGRESS=/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress
PG_ISOLATION=/usr/lib/postgresql/15/lib/pgxs/src/test/isolation/pg_isolation_regress
RUN_AS=postgres
SCRATCH=${EVENT_CRYPTO_SCRATCH:-/tmp/ec-ci}     # short: unix socket paths are limited to ~107 bytes

install -d -m 755 "$SCRATCH"
LOG="$SCRATCH/test.log"
exec > >(tee "$LOG") 2>&1

bash .ci/setup.sh

t0=$SECONDS
step() { echo "=== [test $((SECONDS - t0))s] $*"; }

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

step "core tests"
cargo test -p event_crypto_core --features json
# the consumer library and CLI: key cache and expiry, batches, policies, key files, record formats, inspect
cargo test -p event_crypto_client -p event_crypto_cli

# Coverage-guided fuzzing of the envelope parser, field paths and the binary jsonb walks (cargo fuzz on the stable
# toolchain, without a sanitizer: the targets assert their own properties). Seeds and the inputs of past finds are
# in crates/event_crypto_core/fuzz/corpus; new inputs go to the scratch directory. Longer: FUZZ_SECONDS=3600.
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
for target in envelope field_path jsonb_document; do
  step "fuzz $target (${FUZZ_SECONDS}s)"
  install -d "$SCRATCH/fuzz/$target"
  # a finding, a failed build or any other failure makes cargo fuzz exit non-zero
  if ! (cd crates/event_crypto_core &&
        cargo fuzz run "$target" -s none --dev "$SCRATCH/fuzz/$target" "fuzz/corpus/$target" -- \
          -max_total_time="$FUZZ_SECONDS" -print_final_stats=1) > "$SCRATCH/fuzz/$target.log" 2>&1; then
    tail -60 "$SCRATCH/fuzz/$target.log"
    echo "fuzz target $target failed (inputs in crates/event_crypto_core/fuzz/artifacts/$target)" >&2
    exit 1
  fi
  grep -E '^(Done |stat::number_of_executed_units)' "$SCRATCH/fuzz/$target.log" || true
done

step "cargo pgrx test"
rm -rf "$SCRATCH/pgdata"
install -d -o "$RUN_AS" -g "$RUN_AS" "$SCRATCH/pgdata"
# cargo pgrx test installs its test build with `sudo cp`, which would rewrite a loaded library in place
PATH="$ROOT/.ci/pgrx-sudo:$PATH" cargo pgrx test pg15 --runas "$RUN_AS" --pgdata "$SCRATCH/pgdata"

step "install into the system PostgreSQL"
bash packaging/install.sh --pg-config "$PG_CONFIG"

step "pg_regress"
OUT="$SCRATCH/regress"
rm -rf "$OUT" && install -d -o "$RUN_AS" -g "$RUN_AS" "$OUT"
cp -r tests/pg_regress/sql tests/pg_regress/expected "$OUT/"
cat > "$OUT/regress.conf" <<CONF
shared_preload_libraries = 'event_crypto'
event_crypto.master_key_command = 'echo 1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a7988'
CONF
chown -R "$RUN_AS:$RUN_AS" "$OUT"
TESTS="setup $(cd "$OUT/sql" && ls -1 *.sql | sed 's/\.sql$//' | grep -vx setup | sort | tr '\n' ' ')"
if ! runuser -u "$RUN_AS" -- "$PG_REGRESS" --temp-instance="$OUT/tmp_check" --temp-config="$OUT/regress.conf" \
     --bindir="$PG_BIN" --inputdir="$OUT" --outputdir="$OUT" --dbname=event_crypto_regress $TESTS; then
  cat "$OUT/regression.diffs" 2>/dev/null || true
  exit 1
fi

step "isolation tests"
ISO="$SCRATCH/isolation"
rm -rf "$ISO" && install -d -o "$RUN_AS" -g "$RUN_AS" "$ISO"
cp -r tests/isolation/specs tests/isolation/expected "$ISO/"
cp "$OUT/regress.conf" "$ISO/regress.conf"
chown -R "$RUN_AS:$RUN_AS" "$ISO"
ISO_TESTS=$(cd "$ISO/specs" && ls -1 *.spec | sed 's/\.spec$//' | sort | tr '\n' ' ')
# shellcheck disable=SC2086
if ! runuser -u "$RUN_AS" -- "$PG_ISOLATION" --temp-instance="$ISO/tmp_check" --temp-config="$ISO/regress.conf" \
     --bindir="$PG_BIN" --inputdir="$ISO" --outputdir="$ISO" --dbname=event_crypto_isolation \
     --load-extension=event_crypto $ISO_TESTS; then
  cat "$ISO/regression.diffs" 2>/dev/null || true
  exit 1
fi

step "upgrade from every release"
bash tests/upgrade.sh "$SCRATCH/upgrade"

step "integration tests"
bash tests/clusters.sh start "$SCRATCH/it"
trap 'bash "$ROOT/tests/clusters.sh" stop "$SCRATCH/it"' EXIT
# shellcheck disable=SC1091
. "$SCRATCH/it/env"
# The demo's SQL (README's first command runs it in the system cluster) must keep working as written.
"$PG_BIN/psql" -X -q -d "$EC_IT_A dbname=postgres" -c "DROP DATABASE IF EXISTS demo_check" -c "CREATE DATABASE demo_check"
if ! "$PG_BIN/psql" -X -v ON_ERROR_STOP=1 -d "$EC_IT_A dbname=demo_check" -f demo/demo.sql > "$SCRATCH/demo.out" 2>&1; then
  tail -30 "$SCRATCH/demo.out"
  echo "demo/demo.sql failed" >&2
  exit 1
fi
echo "test demo_sql ... ok 0 ms"
cargo test -p event_crypto_it --tests -- --test-threads=1

step "consumers: event-crypto CLI end to end, Python package"
VENV=${EVENT_CRYPTO_VENV:-$HOME/.cache/event_crypto/venv}
cargo build -p event_crypto_cli
rm -rf "$SCRATCH/wheels"
"$VENV/bin/maturin" build --quiet -m crates/event_crypto_py/Cargo.toml -o "$SCRATCH/wheels"
"$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$SCRATCH"/wheels/event_crypto-*.whl
EC_PYTHON="$VENV/bin/python" bash tests/consumers.sh "$SCRATCH/consumers"

# Last: it installs the .deb into the system PostgreSQL and removes it (then puts back the files installed above).
step "packages"
bash tests/package.sh "$SCRATCH/package"
step "all tests passed"
# One plain closing line over every tier: cargo's "test result:" totals plus pg_regress's per-file lines.
awk '/^test result:/ { p += $4; f += $6 }
     /^test [A-Za-z0-9_]+ +\.\.\. ok +[0-9]+ ms/ { p += 1 }
     /^test [A-Za-z0-9_]+ +\.\.\. FAILED/ { f += 1 }
     /^[0-9]+ passed in / { p += $1 }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$LOG"
