#!/usr/bin/env bash
# Upgrade test. Builds the previous release from the commit CHANGELOG.md names, makes data with it in a server that
# runs a private copy of the PostgreSQL installation (the system one is not touched), installs this build (taken from
# the system PostgreSQL, where packaging/install.sh put it), runs ALTER EXTENSION event_crypto UPDATE, and checks that
#   - every encrypted row reads as it did, the key catalog is the same, the audit chain verifies;
#   - what this release adds works on the old data (tests/upgrade/after.sql against tests/upgrade/after.out);
#   - the extension's objects equal those of a fresh install of this release (tests/upgrade/schema.sql).
# Usage: bash tests/upgrade.sh SCRATCH    (as root; needs the full git history of the repository)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRATCH=$1
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
RUN_AS=postgres
PORT=54340
as_pg() { runuser -u "$RUN_AS" -- "$@"; }
t0=$(date +%s%3N)

# The previous release: the newest "## x.y.z" heading of CHANGELOG.md that names a commit.
PREV=$(awk '/^## [0-9]+\.[0-9]+\.[0-9]+$/ { v = $2 } /^Commit `/ && v != "" { print v; exit }' "$ROOT/CHANGELOG.md")
PREV_COMMIT=$(awk -v v="$PREV" '$0 == "## " v { f = 1 } f && /^Commit `/ { gsub(/[^0-9a-f]/, "", $2); print $2; exit }' "$ROOT/CHANGELOG.md")
NEW=$(awk -F'"' '/^version = / { print $2; exit }' "$ROOT/Cargo.toml")
echo "upgrade test: $PREV ($PREV_COMMIT) -> $NEW"
if ! git -C "$ROOT" cat-file -e "$PREV_COMMIT^{commit}" 2>/dev/null &&
   [ "$(git -C "$ROOT" rev-parse --is-shallow-repository)" = true ]; then
    git -C "$ROOT" fetch --quiet --unshallow || true
fi
if ! git -C "$ROOT" cat-file -e "$PREV_COMMIT^{commit}" 2>/dev/null; then
    echo "commit $PREV_COMMIT of release $PREV is not in this clone: fetch the full history (git fetch --unshallow)" >&2
    exit 1
fi

rm -rf "$SCRATCH" && install -d -o "$RUN_AS" -g "$RUN_AS" "$SCRATCH"
# 1. the previous release, built from its own sources
mkdir -p "$SCRATCH/src"
git -C "$ROOT" archive "$PREV_COMMIT" | tar -x -C "$SCRATCH/src"
(cd "$SCRATCH/src" && CARGO_TARGET_DIR="$ROOT/target/upgrade" cargo pgrx package --debug --pg-config "$PG_CONFIG" \
     --out-dir "$SCRATCH/pkg" > "$SCRATCH/build.log" 2>&1) || { tail -40 "$SCRATCH/build.log"; exit 1; }

# 2. a private copy of the PostgreSQL installation: the server finds its share and lib directories relative to
#    its binary, so the copy runs with the extension files installed into it
P="$SCRATCH/pg"
mkdir -p "$P/lib/postgresql" "$P/share/postgresql"
cp -a /usr/lib/postgresql/15 "$P/lib/postgresql/"
cp -a /usr/share/postgresql/15 "$P/share/postgresql/"
LIB="$P/lib/postgresql/15/lib"
EXT="$P/share/postgresql/15/extension"
BIN="$P/lib/postgresql/15/bin"
install_release() {   # $1: a directory with usr/lib/postgresql/15/lib and usr/share/postgresql/15/extension
    rm -f "$LIB/event_crypto.so" "$EXT"/event_crypto*
    cp "$1/usr/lib/postgresql/15/lib/event_crypto.so" "$LIB/"
    cp "$1"/usr/share/postgresql/15/extension/event_crypto* "$EXT/"
}
install_release "$SCRATCH/pkg"
chown -R "$RUN_AS:$RUN_AS" "$SCRATCH"

as_pg "$BIN/initdb" -D "$SCRATCH/data" -A trust -U postgres --no-sync > /dev/null
cat >> "$SCRATCH/data/postgresql.conf" <<CONF
listen_addresses = ''
port = $PORT
unix_socket_directories = '$SCRATCH'
shared_preload_libraries = 'event_crypto'
event_crypto.master_key_command = 'echo 5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e'
fsync = off
CONF
stop() { as_pg "$BIN/pg_ctl" -D "$SCRATCH/data" -m fast -w stop > /dev/null 2>&1 || true; }
trap stop EXIT
as_pg "$BIN/pg_ctl" -D "$SCRATCH/data" -l "$SCRATCH/server.log" -w start > /dev/null
psql_db() { as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SCRATCH" -p "$PORT" -d "$1" "${@:2}"; }
psql_db postgres -c "CREATE DATABASE up"
psql_db up -f "$ROOT/tests/upgrade/old_data.sql" > "$SCRATCH/old_data.out"
psql_db up -At -f "$ROOT/tests/upgrade/decrypted.sql" > "$SCRATCH/before.txt"

# 3. this release, over the old objects
stop
install_release /   # the system PostgreSQL, where this build was installed
chown -R "$RUN_AS:$RUN_AS" "$P"
as_pg "$BIN/pg_ctl" -D "$SCRATCH/data" -l "$SCRATCH/server.log" -w start > /dev/null

# 3a. every C symbol the previous release's SQL objects name is still defined by this library (a removed function's
#     symbol raises a clear error: src/compat.rs)
missing=$(comm -23 \
    <(grep -o "'MODULE_PATHNAME', '[A-Za-z0-9_]*'" "$SCRATCH/pkg/usr/share/postgresql/15/extension/event_crypto--$PREV.sql" |
      sed "s/.*, '//; s/'\$//" | sort -u) \
    <(nm -D --defined-only "$LIB/event_crypto.so" | awk '{ print $3 }' | sort -u))
if [ -n "$missing" ]; then
    echo "symbols the $PREV SQL objects call are missing from this library: $missing" >&2
    exit 1
fi
# 3b. this library under the old SQL objects (the server restarted before ALTER EXTENSION UPDATE): rows read the
#     same, a function this release removed is a clear error, and no server process crashes
psql_db up -At -f "$ROOT/tests/upgrade/decrypted.sql" > "$SCRATCH/mid.txt"
if ! diff -u "$SCRATCH/before.txt" "$SCRATCH/mid.txt"; then
    echo "rows read differently with this library under the $PREV SQL objects" >&2
    exit 1
fi
if psql_db up -c "SELECT event_crypto.record_maintenance('x', '{}', '{}')" 2> "$SCRATCH/removed.err" ||
   ! grep -q "was removed in event_crypto" "$SCRATCH/removed.err"; then
    cat "$SCRATCH/removed.err"
    echo "a function removed since $PREV did not fail with the clear error" >&2
    exit 1
fi
if grep -q "terminated by signal" "$SCRATCH/server.log"; then
    grep "terminated by signal" "$SCRATCH/server.log" >&2
    echo "a server process crashed under the $PREV SQL objects" >&2
    exit 1
fi
if ! psql_db up -v ON_ERROR_STOP=1 -c "ALTER EXTENSION event_crypto UPDATE TO '$NEW'" 2> "$SCRATCH/update.err"; then
    cat "$SCRATCH/update.err"
    echo "ALTER EXTENSION event_crypto UPDATE failed" >&2
    exit 1
fi
grep -q "refresh_decrypted_views" "$SCRATCH/update.err" || { cat "$SCRATCH/update.err"; echo "the update did not warn about the views" >&2; exit 1; }
psql_db up -At -f "$ROOT/tests/upgrade/decrypted.sql" > "$SCRATCH/after.txt"
if ! diff -u "$SCRATCH/before.txt" "$SCRATCH/after.txt"; then
    echo "rows read differently after the upgrade" >&2
    exit 1
fi
psql_db up -a -f - < "$ROOT/tests/upgrade/after.sql" > "$SCRATCH/after.out" 2>&1   # from stdin: messages name <stdin>, not the checkout
if ! diff -u "$ROOT/tests/upgrade/after.out" "$SCRATCH/after.out"; then
    echo "what this release adds does not work as expected on upgraded data" >&2
    exit 1
fi

# 4. the upgraded objects equal a fresh install's
psql_db postgres -c "CREATE DATABASE fresh"
psql_db fresh -c "CREATE EXTENSION event_crypto"
psql_db up -At -f "$ROOT/tests/upgrade/schema.sql" > "$SCRATCH/schema-upgraded.txt"
psql_db fresh -At -f "$ROOT/tests/upgrade/schema.sql" > "$SCRATCH/schema-fresh.txt"
if ! diff -u "$SCRATCH/schema-fresh.txt" "$SCRATCH/schema-upgraded.txt"; then
    echo "the upgraded extension differs from a fresh install of $NEW" >&2
    exit 1
fi
rows=$(wc -l < "$SCRATCH/before.txt")
objects=$(wc -l < "$SCRATCH/schema-fresh.txt")
[ "$objects" -gt 100 ] || { echo "the schema listing is too short ($objects lines)" >&2; exit 1; }
echo "upgrade $PREV -> $NEW: $rows rows and keys read the same, $objects object details equal a fresh install"
echo "test upgrade_from_previous_release ... ok $(( $(date +%s%3N) - t0 )) ms"
