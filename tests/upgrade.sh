#!/usr/bin/env bash
# Upgrade test, from every release. CHANGELOG.md names each release's commit; for each release R this builds R from
# that commit, makes data with it (tests/upgrade/R/data.sql) in a server that runs a private copy of the PostgreSQL
# installation (the system one is not touched), installs this build (taken from the system PostgreSQL, where
# packaging/install.sh put it), runs ALTER EXTENSION event_crypto UPDATE (PostgreSQL chains the upgrade scripts
# from R to this version), and checks that
#   - every C symbol R's SQL objects name is defined by this library, and under R's objects (the server restarted
#     before the update) rows read the same, a function removed since R fails with a clear error, functions whose
#     signature gained parameters work as R defined them (tests/upgrade/R/old-calls.sql against old-calls.out),
#     nothing crashes;
#   - every encrypted row reads as it did, the key catalog is the same, the audit chain verifies
#     (tests/upgrade/R/decrypted.sql, before and after);
#   - the update prints what it must (tests/upgrade/R/update-messages: one fixed string per line, when present);
#   - what the later releases add works on R's data (tests/upgrade/R/after.sql against after.out);
#   - the extension's objects equal those of a fresh install of this version (tests/upgrade/schema.sql).
# A release without its directory in tests/upgrade fails the test: every release keeps being upgraded from.
# Usage: bash tests/upgrade.sh SCRATCH [RELEASE...]   (as root; needs the full git history of the repository)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRATCH=$1
shift
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
RUN_AS=postgres
BASE_PORT=54340
as_pg() { runuser -u "$RUN_AS" -- "$@"; }

NEW=$(awk -F'"' '/^version = / { print $2; exit }' "$ROOT/Cargo.toml")
# every release: "## x.y.z" headings of CHANGELOG.md followed by their "Commit `sha`" line, newest first
mapfile -t RELEASES < <(awk '/^## [0-9]+\.[0-9]+\.[0-9]+$/ { v = $2; next } /^## / { v = "" }
                             /^Commit `/ && v != "" { c = $2; gsub(/[^0-9a-f]/, "", c); print v " " c; v = "" }' \
                        "$ROOT/CHANGELOG.md")
[ "${#RELEASES[@]}" -gt 0 ] || { echo "CHANGELOG.md names no release with its commit" >&2; exit 1; }
if [ "$(git -C "$ROOT" rev-parse --is-shallow-repository)" = true ]; then
    git -C "$ROOT" fetch --quiet --unshallow || true
fi
rm -rf "$SCRATCH" && install -d -o "$RUN_AS" -g "$RUN_AS" "$SCRATCH"

upgrade_from() {   # $1: release, $2: its commit, $3: a port of its own
    local PREV=$1 PREV_COMMIT=$2 PORT=$3 t0 D="$ROOT/tests/upgrade/$1" S="$SCRATCH/$1"
    t0=$(date +%s%3N)
    echo "upgrade test: $PREV ($PREV_COMMIT) -> $NEW"
    [ -f "$D/data.sql" ] && [ -f "$D/decrypted.sql" ] && [ -f "$D/after.sql" ] && [ -f "$D/after.out" ] || {
        echo "tests/upgrade/$PREV/{data.sql,decrypted.sql,after.sql,after.out} are missing: every release is tested" >&2
        return 1
    }
    if ! git -C "$ROOT" cat-file -e "$PREV_COMMIT^{commit}" 2>/dev/null; then
        echo "commit $PREV_COMMIT of release $PREV is not in this clone: fetch the full history (git fetch --unshallow)" >&2
        return 1
    fi
    install -d -o "$RUN_AS" -g "$RUN_AS" "$S"
    # 1. the release, built from its own sources (a target directory per release: cargo would otherwise keep one
    #    release's library as the other's output when both builds are up to date)
    mkdir -p "$S/src"
    git -C "$ROOT" archive "$PREV_COMMIT" | tar -x -C "$S/src"
    (cd "$S/src" && CARGO_TARGET_DIR="$ROOT/target/upgrade-$PREV" cargo pgrx package --debug --pg-config "$PG_CONFIG" \
         --out-dir "$S/pkg" > "$S/build.log" 2>&1) || { tail -40 "$S/build.log"; return 1; }
    local old_sql="$S/pkg/usr/share/postgresql/15/extension/event_crypto--$PREV.sql"
    [ -f "$old_sql" ] || { echo "the build of $PREV has no $old_sql" >&2; return 1; }

    # 2. a private copy of the PostgreSQL installation: the server finds its share and lib directories relative to
    #    its binary, so the copy runs with the extension files installed into it
    local P="$S/pg"
    mkdir -p "$P/lib/postgresql" "$P/share/postgresql"
    cp -a /usr/lib/postgresql/15 "$P/lib/postgresql/"
    cp -a /usr/share/postgresql/15 "$P/share/postgresql/"
    local LIB="$P/lib/postgresql/15/lib" EXT="$P/share/postgresql/15/extension" BIN="$P/lib/postgresql/15/bin"
    install_release() {   # $1: a directory with usr/lib/postgresql/15/lib and usr/share/postgresql/15/extension
        rm -f "$LIB/event_crypto.so" "$EXT"/event_crypto*
        cp "$1/usr/lib/postgresql/15/lib/event_crypto.so" "$LIB/"
        cp "$1"/usr/share/postgresql/15/extension/event_crypto* "$EXT/"
    }
    install_release "$S/pkg"
    chown -R "$RUN_AS:$RUN_AS" "$S"

    as_pg "$BIN/initdb" -D "$S/data" -A trust -U postgres --no-sync > /dev/null
    cat >> "$S/data/postgresql.conf" <<CONF
listen_addresses = ''
port = $PORT
unix_socket_directories = '$S'
shared_preload_libraries = 'event_crypto'
event_crypto.master_key_command = 'echo 5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e'
fsync = off
CONF
    STOP_DATA="$S/data" STOP_BIN="$BIN"
    as_pg "$BIN/pg_ctl" -D "$S/data" -l "$S/server.log" -w start > /dev/null
    psql_db() { as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$S" -p "$PORT" -d "$1" "${@:2}"; }
    psql_db postgres -c "CREATE DATABASE up"
    psql_db up -f "$D/data.sql" > "$S/data.out"
    psql_db up -At -f "$D/decrypted.sql" > "$S/before.txt"

    # 3. this build, over the release's objects
    stop_server
    install_release /   # the system PostgreSQL, where this build was installed
    chown -R "$RUN_AS:$RUN_AS" "$P"
    as_pg "$BIN/pg_ctl" -D "$S/data" -l "$S/server.log" -w start > /dev/null

    # 3a. every C symbol the release's SQL objects name is still defined by this library (a removed function's
    #     symbol raises a clear error: src/compat.rs)
    local missing
    missing=$(comm -23 \
        <(grep -o "'MODULE_PATHNAME', '[A-Za-z0-9_]*'" "$old_sql" | sed "s/.*, '//; s/'\$//" | sort -u) \
        <(nm -D --defined-only "$LIB/event_crypto.so" | awk '{ print $3 }' | sort -u))
    if [ -n "$missing" ]; then
        echo "symbols the $PREV SQL objects call are missing from this library: $missing" >&2
        return 1
    fi
    # 3b. this library under the release's SQL objects: rows read the same, a function removed since then is a
    #     clear error, and no server process crashes
    psql_db up -At -f "$D/decrypted.sql" > "$S/mid.txt"
    if ! diff -u "$S/before.txt" "$S/mid.txt"; then
        echo "rows read differently with this library under the $PREV SQL objects" >&2
        return 1
    fi
    if grep -q "'record_maintenance_wrapper'" "$old_sql"; then
        if psql_db up -c "SELECT event_crypto.record_maintenance('x', '{}', '{}')" 2> "$S/removed.err" ||
           ! grep -q "was removed in event_crypto" "$S/removed.err"; then
            cat "$S/removed.err"
            echo "a function removed since $PREV did not fail with the clear error" >&2
            return 1
        fi
    fi
    # functions whose signature gained parameters since the release, called as it defined them (src/compat.rs)
    if [ -f "$D/old-calls.sql" ]; then
        if ! psql_db up -At -f "$D/old-calls.sql" > "$S/old-calls.txt" 2>&1 || ! diff -u "$D/old-calls.out" "$S/old-calls.txt"; then
            cat "$S/old-calls.txt"
            echo "a function called as $PREV defined it failed or answered differently under its SQL objects" >&2
            return 1
        fi
    fi
    if grep -q "terminated by signal" "$S/server.log"; then
        grep "terminated by signal" "$S/server.log" >&2
        echo "a server process crashed under the $PREV SQL objects" >&2
        return 1
    fi
    if ! psql_db up -v ON_ERROR_STOP=1 -c "ALTER EXTENSION event_crypto UPDATE TO '$NEW'" 2> "$S/update.err"; then
        cat "$S/update.err"
        echo "ALTER EXTENSION event_crypto UPDATE from $PREV failed" >&2
        return 1
    fi
    if [ -f "$D/update-messages" ]; then
        while IFS= read -r m; do
            [ -z "$m" ] || grep -qF -- "$m" "$S/update.err" ||
                { cat "$S/update.err"; echo "the update from $PREV did not say \"$m\"" >&2; return 1; }
        done < "$D/update-messages"
    fi
    psql_db up -At -f "$D/decrypted.sql" > "$S/after.txt"
    if ! diff -u "$S/before.txt" "$S/after.txt"; then
        echo "rows read differently after the upgrade from $PREV" >&2
        return 1
    fi
    # from stdin: messages name <stdin>, not the checkout
    psql_db up -a -f - < "$D/after.sql" > "$S/after.out" 2>&1
    if ! diff -u "$D/after.out" "$S/after.out"; then
        echo "what later releases add does not work as expected on data made by $PREV" >&2
        return 1
    fi

    # 4. the upgraded objects equal a fresh install's
    psql_db postgres -c "CREATE DATABASE fresh"
    psql_db fresh -c "CREATE EXTENSION event_crypto"
    psql_db up -At -f "$ROOT/tests/upgrade/schema.sql" > "$S/schema-upgraded.txt"
    psql_db fresh -At -f "$ROOT/tests/upgrade/schema.sql" > "$S/schema-fresh.txt"
    if ! diff -u "$S/schema-fresh.txt" "$S/schema-upgraded.txt"; then
        echo "the extension upgraded from $PREV differs from a fresh install of $NEW" >&2
        return 1
    fi
    stop_server
    local rows objects
    rows=$(wc -l < "$S/before.txt")
    objects=$(wc -l < "$S/schema-fresh.txt")
    [ "$objects" -gt 100 ] || { echo "the schema listing is too short ($objects lines)" >&2; return 1; }
    echo "upgrade $PREV -> $NEW: $rows rows and keys read the same, $objects object details equal a fresh install"
    echo "test upgrade_from_${PREV//./_} ... ok $(( $(date +%s%3N) - t0 )) ms"
}

STOP_DATA= STOP_BIN=
stop_server() {
    [ -z "$STOP_DATA" ] || as_pg "$STOP_BIN/pg_ctl" -D "$STOP_DATA" -m fast -w stop > /dev/null 2>&1 || true
}
trap stop_server EXIT

i=0
for r in "${RELEASES[@]}"; do
    read -r rel commit <<< "$r"
    i=$((i + 1))
    if [ $# -gt 0 ] && [[ " $* " != *" $rel "* ]]; then
        continue
    fi
    upgrade_from "$rel" "$commit" $((BASE_PORT + i))
    STOP_DATA=
done
