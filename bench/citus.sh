#!/usr/bin/env bash
# Insert throughput of a protected event table on Citus (a coordinator and two workers) against one server, with
# pgbench (not part of the test run, not timed by CI). Needs the clusters that tests/citus-clusters.sh starts from
# a PostgreSQL with Citus installed, and their env file; without them it says so and exits 0 (CI has no Citus).
#   bash bench/citus.sh [ENV_FILE] [--seconds N] [--clients N]     (ENV_FILE default: /work/citus-run/env)
# Measures, for each of {one server, Citus}: single-row INSERTs into a plain table and into a protected one
# (2 encrypted fields + a blind index, per-subject keys created beforehand), and 100-row INSERT ... SELECT batches
# into the protected one (with Citus's default connection pool, and with one connection per worker). Prints a Markdown table (docs/scaling.md#citus records one).
set -euo pipefail
ENV_FILE=/work/citus-run/env
SECONDS_EACH=15
CLIENTS=8
while [ $# -gt 0 ]; do
  case $1 in
    --seconds) SECONDS_EACH=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    *) ENV_FILE=$1; shift ;;
  esac
done
if ! [ -f "$ENV_FILE" ]; then
  echo "SKIPPED bench/citus.sh: no Citus clusters ($ENV_FILE missing; start them with tests/citus-clusters.sh, see docs/scaling.md#citus)"
  exit 0
fi
# shellcheck disable=SC1090
source "$ENV_FILE"
BIN=${EC_CITUS_PG_BIN:-/usr/lib/postgresql/15/bin}
as_pg() { runuser -u postgres -- "$@"; }
psql_on() { local dsn=$1; shift; as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -d "$dsn" "$@"; }
if ! psql_on "$EC_CITUS_COORDINATOR" -Atc "SELECT 1 FROM pg_extension WHERE extname = 'citus'" 2>/dev/null | grep -q 1; then
  echo "SKIPPED bench/citus.sh: the Citus coordinator ($EC_CITUS_COORDINATOR) cannot be reached or has no citus"
  exit 0
fi
WORK=$(mktemp -d)
chmod 755 "$WORK"
trap 'rm -rf "$WORK"' EXIT

SUBJECTS=1000
setup() {   # $1: dsn, $2: citus or single
  local dist=""
  if [ "$2" = citus ]; then
    dist="SELECT create_distributed_table('bench_plain', 'subject_id');
          SELECT create_distributed_table('bench_events', 'subject_id');"
  fi
  psql_on "$1" >/dev/null <<SQL
SET client_min_messages = warning;
DROP TABLE IF EXISTS bench_plain, bench_events CASCADE;
SET citus.enable_unsafe_triggers = on;
CREATE TABLE bench_plain (id bigserial, subject_id text NOT NULL, stream_id text NOT NULL, payload jsonb, email_idx text,
                          PRIMARY KEY (subject_id, id));
CREATE TABLE bench_events (LIKE bench_plain INCLUDING ALL);
$dist
SQL
  psql_on "$1" -c "SET client_min_messages = warning" -c "SET citus.enable_unsafe_triggers = on" \
    -c "SELECT event_crypto.create_key('bench-tenant') WHERE NOT EXISTS (SELECT FROM event_crypto.keys WHERE key_id = 'bench-tenant')" \
    -c "SELECT event_crypto.protect('bench_events', 'payload', fields => ARRAY['email', 'address.street'],
                                    key_column => 'subject_id', key_prefix => 'bench:', context_column => 'stream_id')" \
    -c "SELECT event_crypto.add_blind_index('bench_events', 'payload', 'email', 'email_idx', 'bench-tenant', 'lower')" \
    -c "SELECT pg_catalog.count(event_crypto.create_key(k)) FROM (SELECT event_crypto.subject_key_id('bench:', 's' || i, 1) AS k
          FROM generate_series(0, $SUBJECTS - 1) i) x WHERE NOT EXISTS (SELECT FROM event_crypto.keys WHERE key_id = x.k)" >/dev/null
}

cat > "$WORK/plain.sql" <<SQL
\set s random(0, $((SUBJECTS - 1)))
INSERT INTO bench_plain (subject_id, stream_id, payload) VALUES ('s' || :s, 'stream-' || :s,
  jsonb_build_object('email', 'u' || :s || '@x.io', 'address', jsonb_build_object('street', '1 Main St'), 'amount', 12.5));
SQL
sed 's/bench_plain/bench_events/' "$WORK/plain.sql" > "$WORK/protected.sql"
cat > "$WORK/batch.sql" <<SQL
INSERT INTO bench_events (subject_id, stream_id, payload)
SELECT 's' || s, 'stream-' || s, jsonb_build_object('email', 'u' || s || '@x.io', 'address', jsonb_build_object('street', '1 Main St'), 'amount', 12.5)
FROM (SELECT (random() * $((SUBJECTS - 1)))::int AS s FROM generate_series(1, 100)) x;
SQL

run() {   # $1: dsn, $2: workload; prints rows/s
  local tps opts="" script=$2
  # batch1: the batches with one connection per worker (Citus opens up to one connection per shard for a
  # multi-shard INSERT ... SELECT and keeps one per worker: the others are new backends, which load event_crypto's
  # configuration and unwrap the keys again)
  if [ "$2" = batch1 ]; then opts="-c citus.max_adaptive_executor_pool_size=1"; script=batch; fi
  as_pg env PGOPTIONS="$opts" "$BIN/pgbench" -n -M prepared -c "$CLIENTS" -j 2 -T "$SECONDS_EACH" \
    -f "$WORK/$script.sql" "$1" > "$WORK/out" 2>&1 || true
  if grep -q "aborted" "$WORK/out"; then
    # a client that fails stops; its figure would be meaningless
    echo "aborted ($(grep -m1 -o 'ERROR: .*' "$WORK/out" | cut -c1-80))"
    return
  fi
  tps=$(awk '/^tps = / { print $3; exit }' "$WORK/out")
  case $2 in batch*) awk -v t="$tps" 'BEGIN { printf "%.0f", t * 100 }' ;; *) awk -v t="$tps" 'BEGIN { printf "%.0f", t }' ;; esac
}

echo "setting up (one server: $EC_CITUS_SINGLE; Citus: $EC_CITUS_COORDINATOR) ..." >&2
setup "$EC_CITUS_SINGLE" single
setup "$EC_CITUS_COORDINATOR" citus
declare -A R
for where in single citus; do
  dsn=$EC_CITUS_SINGLE
  [ $where = citus ] && dsn=$EC_CITUS_COORDINATOR
  for w in plain protected batch batch1; do
    echo "  $where $w ($SECONDS_EACH s, $CLIENTS clients) ..." >&2
    R[$where,$w]=$(run "$dsn" $w)
  done
done
# every protected row is stored encrypted, on both
for dsn in "$EC_CITUS_SINGLE" "$EC_CITUS_COORDINATOR"; do
  bad=$(psql_on "$dsn" -Atc "SELECT count(*) FROM bench_events WHERE payload->>'email' NOT LIKE '\$ec1\$%' OR email_idx IS NULL")
  [ "$bad" = 0 ] || { echo "bench/citus.sh: $bad rows not encrypted on $dsn" >&2; exit 1; }
done

echo
echo "rows inserted per second ($CLIENTS pgbench clients, $SECONDS_EACH s each, all nodes on this machine: $(nproc) cores)"
echo
echo "| workload | one server | Citus: coordinator + 2 workers | Citus / one server |"
echo "| --- | ---: | ---: | ---: |"
for w in plain protected batch batch1; do
  case $w in
    plain) label="plain table, 1 row per INSERT" ;;
    protected) label="protected table (2 fields + blind index), 1 row per INSERT" ;;
    batch) label="protected table, 100-row INSERT ... SELECT" ;;
    batch1) label="the same, citus.max_adaptive_executor_pool_size = 1" ;;
  esac
  echo "| $label | ${R[single,$w]} | ${R[citus,$w]} | $(awk -v a="${R[citus,$w]}" -v b="${R[single,$w]}" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else printf "-" }') |"
done
