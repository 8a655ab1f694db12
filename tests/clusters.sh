#!/usr/bin/env bash
# Starts (or stops) the throwaway PostgreSQL 15 clusters the integration tests connect to, all on 127.0.0.1:
#   a (54331)  master key file A                      -- the main cluster (wal_level = logical: it publishes to f
#              in the replication test); started with RUST_BACKTRACE=1 (no Rust backtrace may reach an error)
#   b (54332)  master key file B                      -- "restore with a different master key"; runs the
#              maintenance worker in database postgres every second, as role ec_worker (created here, LOGIN, no
#              superuser; the worker test grants it event_crypto_admin)
#   c (54333)  key file readable by group and others  -- must be refused
#   d (54334)  key file inside the data directory     -- must be refused
#   e (54335)  preloaded, no master key configured    -- clear error, never a crash
#   f (54336)  master key ring file, restarted by the tests with other rings (rotation, rewrap, crashes);
#              (DIR/f/first.key is the key it starts with, DIR/f/new.key a second key for them)
#   s (54337)  a hot standby of a, made with pg_basebackup (streaming replication, the same master key file);
#              the standby test promotes it at its end
# Usage: tests/clusters.sh start|stop DIR      (as root; servers run as postgres). Writes DIR/env for the tests.
# EC_IT_PG_BIN (another PostgreSQL 15 bin directory) and EC_IT_PORT_BASE (first port, 54331) move them elsewhere,
# so that two checkouts can run their clusters side by side.
# EC_IT_CLUSTERS (default "a b c d e f s") starts only the clusters it names (s needs a): tests/consumers.sh starts
# "a" alone. Cluster a may use wal2json as an output plugin where the server restricts them (output_plugin_libraries).
set -euo pipefail
ACTION=$1
DIR=$2
PG_BIN=${EC_IT_PG_BIN:-/usr/lib/postgresql/15/bin}
PORT_BASE=${EC_IT_PORT_BASE:-54331}
CLUSTERS=" ${EC_IT_CLUSTERS:-a b c d e f s} "
RUN_AS=postgres
as_pg() { runuser -u "$RUN_AS" -- "$@"; }

stop_all() {
  for n in a b c d e f s; do
    if [ -f "$DIR/$n/data/postmaster.pid" ]; then
      as_pg "$PG_BIN/pg_ctl" -D "$DIR/$n/data" -m immediate stop >/dev/null 2>&1 || true
    fi
  done
}

if [ "$ACTION" = stop ]; then
  stop_all
  exit 0
fi

stop_all
rm -rf "$DIR"
install -d -o "$RUN_AS" -g "$RUN_AS" "$DIR"
newkey() { (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$1"); chown "$RUN_AS:$RUN_AS" "$1"; chmod 600 "$1"; }

# a server that lists the libraries allowed as logical decoding output plugins must allow wal2json on cluster a
# (tests/consumers.sh); a stock server has no such setting and would refuse to start with it
plugins=""
if "$PG_BIN/postgres" --describe-config 2>/dev/null | grep -c '^output_plugin_libraries' >/dev/null; then
  plugins="output_plugin_libraries = 'pgoutput, test_decoding, wal2json'"
fi

port=$PORT_BASE
for n in a b c d e f; do
  case $CLUSTERS in *" $n "*) ;; *) port=$((port + 1)); continue ;; esac
  install -d -o "$RUN_AS" -g "$RUN_AS" "$DIR/$n"
  as_pg "$PG_BIN/initdb" -D "$DIR/$n/data" -A trust -U postgres --no-sync >/dev/null
  case $n in
    a)   newkey "$DIR/$n/master.key"; key_line="event_crypto.master_key_file = '$DIR/$n/master.key'
wal_level = logical
$plugins" ;;
    b)   newkey "$DIR/$n/master.key"; key_line="event_crypto.master_key_file = '$DIR/$n/master.key'
event_crypto.worker_database = 'postgres'
event_crypto.worker_role = 'ec_worker'
event_crypto.worker_interval = 1" ;;
    c)   newkey "$DIR/$n/master.key"; chmod 644 "$DIR/$n/master.key"
         key_line="event_crypto.master_key_file = '$DIR/$n/master.key'" ;;
    d)   newkey "$DIR/$n/data/master.key"; key_line="event_crypto.master_key_file = '$DIR/$n/data/master.key'" ;;
    e)   key_line="" ;;
    f)   newkey "$DIR/$n/first.key"; newkey "$DIR/$n/new.key"; cp -p "$DIR/$n/first.key" "$DIR/$n/master.key"
         key_line="event_crypto.master_key_file = '$DIR/$n/master.key'" ;;
  esac
  cat >> "$DIR/$n/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$DIR/$n'
shared_preload_libraries = 'event_crypto'
$key_line
fsync = off
max_connections = 40
log_min_messages = warning
CONF
  if [ "$n" = a ]; then
    runuser -u "$RUN_AS" -- env RUST_BACKTRACE=1 "$PG_BIN/pg_ctl" -D "$DIR/$n/data" -l "$DIR/$n/server.log" -w start >/dev/null
  else
    as_pg "$PG_BIN/pg_ctl" -D "$DIR/$n/data" -l "$DIR/$n/server.log" -w start >/dev/null
  fi
  if [ "$n" = b ]; then
    # the worker's role must exist when it connects: create it, then restart so the worker starts as it
    as_pg "$PG_BIN/psql" -X -q -h "$DIR/$n" -p "$port" -d postgres -c "CREATE ROLE ec_worker LOGIN"
    as_pg "$PG_BIN/pg_ctl" -D "$DIR/$n/data" -l "$DIR/$n/server.log" -w -m fast restart >/dev/null
  fi
  port=$((port + 1))
done

# the standby of a: a base backup with its recovery settings (-R), then its own port and socket
case $CLUSTERS in *" s "*)
install -d -o "$RUN_AS" -g "$RUN_AS" "$DIR/s"
as_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PORT_BASE" -U postgres -D "$DIR/s/data" -R -X stream --no-sync
cat >> "$DIR/s/data/postgresql.conf" <<CONF
port = $((PORT_BASE + 6))
unix_socket_directories = '$DIR/s'
hot_standby = on
CONF
as_pg "$PG_BIN/pg_ctl" -D "$DIR/s/data" -l "$DIR/s/server.log" -w start >/dev/null
;;
esac

cat > "$DIR/env" <<ENV
export EC_IT_PG_BIN=$PG_BIN
export EC_IT_A="host=127.0.0.1 port=$((PORT_BASE + 0)) user=postgres"
export EC_IT_B="host=127.0.0.1 port=$((PORT_BASE + 1)) user=postgres"
export EC_IT_C="host=127.0.0.1 port=$((PORT_BASE + 2)) user=postgres"
export EC_IT_D="host=127.0.0.1 port=$((PORT_BASE + 3)) user=postgres"
export EC_IT_E="host=127.0.0.1 port=$((PORT_BASE + 4)) user=postgres"
export EC_IT_F="host=127.0.0.1 port=$((PORT_BASE + 5)) user=postgres"
export EC_IT_S="host=127.0.0.1 port=$((PORT_BASE + 6)) user=postgres"
export EC_IT_F_DIR=$DIR/f
export EC_IT_SCRATCH=$DIR
ENV
echo "clusters$CLUSTERS started under $DIR"
