#!/usr/bin/env bash
# Starts (or stops) a Citus coordinator and two workers on 127.0.0.1 for crates/event_crypto_it/tests/citus.rs and
# bench/citus.sh, from a PostgreSQL 15 that already has Citus and event_crypto installed (this script builds and
# fetches nothing: Citus is not packaged for Debian bookworm's PostgreSQL 15; see docs/scaling.md#citus).
#   coordinator  EC_CITUS_PORT_BASE     (57700)
#   worker 1     EC_CITUS_PORT_BASE + 1 (57701)
#   worker 2     EC_CITUS_PORT_BASE + 2 (57702)
#   single       EC_CITUS_PORT_BASE + 3 (57703)  one server without Citus, for bench/citus.sh to compare with
# Every node gets the same master key (event_crypto.master_key_command) and shared_preload_libraries =
# 'citus,event_crypto' (Citus first). The database `postgres` on the coordinator gets both extensions, the
# workers are added, and event_crypto's catalog is distributed with event_crypto.citus_setup().
# Usage: tests/citus-clusters.sh start|stop DIR   (as root; servers run as postgres). Writes DIR/env:
#   EC_CITUS_COORDINATOR, EC_CITUS_WORKERS (connection strings, workers separated by ';'), EC_CITUS_SINGLE,
#   EC_CITUS_PG_BIN.
# EC_CITUS_PG_BIN: the PostgreSQL 15 bin directory with Citus (default: /usr/lib/postgresql/15/bin).
set -euo pipefail
ACTION=$1
DIR=$2
PG_BIN=${EC_CITUS_PG_BIN:-/usr/lib/postgresql/15/bin}
PORT_BASE=${EC_CITUS_PORT_BASE:-57700}
RUN_AS=postgres
NODES="coordinator worker1 worker2 single"
as_pg() { runuser -u "$RUN_AS" -- "$@"; }

stop_all() {
  for n in $NODES; do
    if [ -f "$DIR/$n/data/postmaster.pid" ]; then
      as_pg "$PG_BIN/pg_ctl" -D "$DIR/$n/data" -m fast stop >/dev/null 2>&1 || true
    fi
  done
}

if [ "$ACTION" = stop ]; then
  stop_all
  exit 0
fi

if ! [ -f "$("$PG_BIN/pg_config" --sharedir)/extension/citus.control" ]; then
  echo "Citus is not installed in $("$PG_BIN/pg_config" --sharedir): nothing to start" >&2
  exit 2
fi

stop_all
rm -rf "$DIR"
install -d -o "$RUN_AS" -g "$RUN_AS" "$DIR"
# one master key for every node (a test key; never a production key on a command line)
KEY=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')

port=$PORT_BASE
for n in $NODES; do
  install -d -o "$RUN_AS" -g "$RUN_AS" "$DIR/$n"
  as_pg "$PG_BIN/initdb" -D "$DIR/$n/data" -A trust -U postgres --no-sync >/dev/null
  cat >> "$DIR/$n/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$DIR/$n'
shared_preload_libraries = '$([ "$n" = single ] && echo event_crypto || echo citus,event_crypto)'
event_crypto.master_key_command = 'echo $KEY'
fsync = off
max_connections = 300
max_prepared_transactions = 300
log_min_messages = warning
CONF
  as_pg "$PG_BIN/pg_ctl" -D "$DIR/$n/data" -l "$DIR/$n/server.log" -w start >/dev/null
  if [ "$n" = single ]; then
    as_pg "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$port" -d postgres -c "CREATE EXTENSION event_crypto"
  else
    as_pg "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$port" -d postgres -c "CREATE EXTENSION citus"
  fi
  port=$((port + 1))
done

psql_c() { as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT_BASE" -d postgres "$@"; }
psql_c -c "SELECT citus_set_coordinator_host('127.0.0.1', $PORT_BASE)" >/dev/null
psql_c -c "SELECT citus_add_node('127.0.0.1', $((PORT_BASE + 1)))" >/dev/null
psql_c -c "SELECT citus_add_node('127.0.0.1', $((PORT_BASE + 2)))" >/dev/null
psql_c -c "CREATE EXTENSION event_crypto" >/dev/null
psql_c -c "SELECT event_crypto.citus_setup()" >/dev/null

cat > "$DIR/env" <<ENV
export EC_CITUS_PG_BIN=$PG_BIN
export EC_CITUS_COORDINATOR="host=127.0.0.1 port=$PORT_BASE user=postgres dbname=postgres"
export EC_CITUS_WORKERS="host=127.0.0.1 port=$((PORT_BASE + 1)) user=postgres dbname=postgres;host=127.0.0.1 port=$((PORT_BASE + 2)) user=postgres dbname=postgres"
export EC_CITUS_SINGLE="host=127.0.0.1 port=$((PORT_BASE + 3)) user=postgres dbname=postgres"
ENV
echo "Citus coordinator and 2 workers (ports $PORT_BASE-$((PORT_BASE + 2))) and a single server ($((PORT_BASE + 3))) started under $DIR"
