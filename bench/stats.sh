#!/usr/bin/env bash
# What each query of docs/postgres_exporter/queries.yaml (and so each stats view it reads) costs over a large key
# catalog. Not part of the tests.
# Usage: bash bench/stats.sh "CONNINFO" [KEY_VERSIONS]     e.g. bash bench/stats.sh "host=/tmp port=5432 user=postgres" 1000000
# As a superuser (it writes the key catalog directly): drops and creates the database ec_stats_bench, creates the
# extension, adds KEY_VERSIONS key ids (default 1,000,000) of one version each, copying the wrapped bytes of one
# real key (the views never unwrap), every tenth shredded, a key_usage row for every fifth, then runs each query
# five times in one session and prints the median time. Needs psql (PSQL, default psql on PATH) and python3-yaml.
set -euo pipefail
CONN=$1
N=${2:-1000000}
PSQL=${PSQL:-psql}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
q() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$CONN dbname=$1" "${@:2}"; }

q postgres -c "DROP DATABASE IF EXISTS ec_stats_bench" -c "CREATE DATABASE ec_stats_bench"
q ec_stats_bench <<SQL
\o /dev/null
CREATE EXTENSION event_crypto;
SELECT event_crypto.create_key('bench:seed');
ALTER TABLE event_crypto.keys DISABLE TRIGGER USER;
INSERT INTO event_crypto.keys (key_id, version, algorithm, status, wrapped_key, wrapped_index_key, master_key_id, shredded_at)
SELECT 'subject:' || i, 1, 'aes-256-gcm', CASE WHEN i % 10 = 0 THEN 'shredded' ELSE 'active' END,
       CASE WHEN i % 10 = 0 THEN NULL ELSE k.wrapped_key END, CASE WHEN i % 10 = 0 THEN NULL ELSE k.wrapped_index_key END,
       k.master_key_id, CASE WHEN i % 10 = 0 THEN now() END
FROM generate_series(1, $N - 1) i, event_crypto.keys k WHERE k.key_id = 'bench:seed';
ALTER TABLE event_crypto.keys ENABLE TRIGGER USER;
INSERT INTO event_crypto.key_usage (key_id, version, encryptions)
SELECT 'subject:' || i, 1, i FROM generate_series(1, $N - 1, 5) i WHERE i % 10 <> 0;
SELECT * FROM event_crypto.run_maintenance();
VACUUM ANALYZE event_crypto.keys;
VACUUM ANALYZE event_crypto.key_usage;
SQL
echo "key versions: $(q ec_stats_bench -At -c 'SELECT count(*) FROM event_crypto.keys'), usage rows: $(q ec_stats_bench -At -c 'SELECT count(*) FROM event_crypto.key_usage')"

# every query five times in one session (the exporter keeps its connection), then the median of each
python3 - "$ROOT/docs/postgres_exporter/queries.yaml" > "${TMPDIR:-/tmp}/ec_stats_queries.sql" <<'PY'
import sys, yaml
print("\\timing on")
for name, e in yaml.safe_load(open(sys.argv[1])).items():
    for _ in range(5):
        print("\\echo " + name)
        print(" ".join(e["query"].split()) + ";")
PY
q ec_stats_bench -o /dev/null -f "${TMPDIR:-/tmp}/ec_stats_queries.sql" | python3 -c '
import sys
times, name = {}, None
for line in sys.stdin:
    if line.startswith("Time: "):
        times[name].append(float(line.split()[1]))
    elif line.strip():
        name = line.strip()
        times.setdefault(name, [])
total = 0.0
for name, t in times.items():
    m = sorted(t)[len(t) // 2]
    total += m
    print("%-34s %10.1f ms" % (name, m))
print("%-34s %10.1f ms" % ("all queries (one scrape)", total))
'
