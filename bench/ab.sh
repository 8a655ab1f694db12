#!/usr/bin/env bash
# A/B benchmark of the protected insert (per-subject keys, 3 fields, bench/setup.sql's events) against the plain
# insert, for this checkout and an earlier commit, in two clusters on this machine, rounds alternating between them
# so that both see the same machine noise. Not part of the test run.
# Usage: bash bench/ab.sh OLD_COMMIT [ROUNDS]    (as root; needs .ci/setup.sh done; the old build goes into a private
# copy of PostgreSQL under SCRATCH, the new one into the system PostgreSQL by `packaging/install.sh --release`)
# Prints the medians (ms) and the protected/plain ratio of each build.
set -euo pipefail
OLD=$1
ROUNDS=${2:-7}
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
ROOT=$(pwd)
SCRATCH=${EVENT_CRYPTO_SCRATCH:-/tmp/ec-ab}
SYS=/usr/lib/postgresql/15
PRIV=$SCRATCH/pg/usr/lib/postgresql/15

# the old build: a worktree of OLD, installed into a relocated copy of PostgreSQL (binaries find their share and lib
# directories relative to themselves)
rm -rf "$SCRATCH" && mkdir -p "$SCRATCH/pg/usr/lib/postgresql" "$SCRATCH/pg/usr/share/postgresql" "$SCRATCH/pg/usr/include"
cp -a $SYS "$SCRATCH/pg/usr/lib/postgresql/"
cp -a /usr/share/postgresql/15 "$SCRATCH/pg/usr/share/postgresql/"
cp -a /usr/include/postgresql "$SCRATCH/pg/usr/include/"
chmod -R a+rX "$SCRATCH"
git worktree add -f "$SCRATCH/old" "$OLD" >/dev/null
trap 'git -C "$ROOT" worktree remove --force "$SCRATCH/old" >/dev/null 2>&1 || true' EXIT
mkdir -p "$SCRATCH/pgrx"
PGRX_HOME=$SCRATCH/pgrx cargo pgrx init --pg15 "$PRIV/bin/pg_config" >/dev/null
PGRX_HOME=$SCRATCH/pgrx CARGO_TARGET_DIR=$ROOT/target/ab-old \
   bash packaging/install.sh --release --source "$SCRATCH/old" --pg-config "$PRIV/bin/pg_config" >/dev/null
bash packaging/install.sh --release --pg-config $SYS/bin/pg_config >/dev/null

start() {  # name bindir port
  local d=$SCRATCH/$1
  install -d -o postgres -g postgres "$d"
  runuser -u postgres -- "$2/initdb" -D "$d/data" -A trust -U postgres >/dev/null
  cat >> "$d/data/postgresql.conf" <<CONF
port = $3
listen_addresses = ''
unix_socket_directories = '$d'
shared_preload_libraries = 'event_crypto'
event_crypto.master_key_command = 'echo 1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a7988'
shared_buffers = 512MB
max_wal_size = 4GB
CONF
  runuser -u postgres -- "$2/pg_ctl" -D "$d/data" -l "$d/log" -w start >/dev/null
  "$2/psql" -X -q -h "$d" -p "$3" -U postgres -d postgres -v rows=100000 -v subjects=1000 -f bench/setup.sql >/dev/null
}
stop() { runuser -u postgres -- "$2/pg_ctl" -D "$SCRATCH/$1/data" -m fast stop >/dev/null 2>&1 || true; }
start new $SYS/bin 55601
start old "$PRIV/bin" 55602
trap 'stop new $SYS/bin; stop old "$PRIV/bin"; git -C "$ROOT" worktree remove --force "$SCRATCH/old" >/dev/null 2>&1 || true' EXIT

q() {  # name bindir port sql...
  local n=$1 b=$2 p=$3; shift 3
  "$b/psql" -X -q -h "$SCRATCH/$n" -p "$p" -U postgres -d postgres "$@"
}
: > "$SCRATCH/times"
for r in $(seq "$ROUNDS"); do
  for build in "new $SYS/bin 55601" "old $PRIV/bin 55602"; do
    # shellcheck disable=SC2086
    set -- $build
    for t in t_plain t_ec; do
      q "$@" -c "TRUNCATE t_plain, t_ec; CHECKPOINT" >/dev/null
      ms=$(q "$@" -c '\timing on' \
             -c "INSERT INTO $t (stream_id, subject_id, type, payload) SELECT stream_id, subject_id, type, payload FROM src" |
           grep -o 'Time: [0-9.]*' | cut -d' ' -f2)
      echo "$1 $t $ms" >> "$SCRATCH/times"
    done
  done
done
python3 - "$SCRATCH/times" "$OLD" <<'PY'
import collections, statistics, sys
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    b, t, ms = line.split()
    d[(b, t)].append(float(ms))
for b, name in (("new", "this checkout"), ("old", sys.argv[2])):
    plain, ec = statistics.median(d[(b, "t_plain")]), statistics.median(d[(b, "t_ec")])
    print(f"{name}: plain {plain:.0f} ms, protected {ec:.0f} ms ({min(d[(b, 't_ec')]):.0f}-{max(d[(b, 't_ec')]):.0f}), "
          f"protected/plain {ec / plain:.2f}x")
PY
