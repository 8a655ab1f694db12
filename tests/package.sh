#!/usr/bin/env bash
# The package test (issue 14). In the system PostgreSQL 15 (or, with --root, in a relocated copy of it):
#   1. packaging/build-deb.sh builds the .deb; its metadata and file list (dpkg-deb --info, --contents) are checked,
#      and its library still exports what PostgreSQL looks for (Pg_magic_func, _PG_init) after stripping;
#   2. a server that preloads event_crypto runs, a session of it in the middle of its work, while
#      a. packaging/install.sh replaces the library, then
#      b. the .deb is installed over it (apt-get install ./…deb);
#      after each the server is up with the same postmaster, no process died (its log has no "terminated by
#      signal"), the session finished its work, the library file is a new file (renamed into place, not rewritten:
#      the server still maps the old one, "(deleted)"), and the restart notice (install.sh's, the postinst's)
#      names this server;
#   3. event-crypto-keygen (from the package) makes the server's master key file: owner postgres, mode 0600, one
#      link, 64 hex digits; it never overwrites a file, refuses a relative path, a path in a data directory and an
#      unknown user; the server restarted with that file runs the packaged library, and demo/demo.sql passes;
#   4. apt-get remove removes every file of the package;
#   5. whatever event_crypto files were installed before the test are put back (renamed into place), so later
#      steps of .ci/test.sh find the extension as they left it. This also runs when the test fails.
# Usage: bash tests/package.sh SCRATCH [--release] [--port N] [--root DIR]
#   --release   package a release build (default: a debug build; CI has one already)
#   --port N    the test server's port (default 54350)
#   --root DIR  work in DIR, a relocated copy of PostgreSQL 15 laid out like / (DIR/usr/lib/postgresql/15, …;
#               e.g. made by copying /usr/lib/postgresql/15 and /usr/share/postgresql/15 there), installing the
#               package with `dpkg --root DIR` instead of apt-get: leaves the system PostgreSQL alone
# As root; the test server runs as the OS user postgres.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

SCRATCH=""
R=""
PORT=54350
PROFILE=debug
usage() { echo "Usage: bash tests/package.sh SCRATCH [--release] [--port N] [--root DIR]"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --release) PROFILE=release; shift ;;
        --port) [ $# -ge 2 ] || { usage >&2; exit 2; }; PORT=$2; shift 2 ;;
        --root) [ $# -ge 2 ] || { usage >&2; exit 2; }; R=$(cd "$2" && pwd -P); shift 2 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "package test: unknown option '$1'" >&2; usage >&2; exit 2 ;;
        *) [ -z "$SCRATCH" ] || { usage >&2; exit 2; }; SCRATCH=$1; shift ;;
    esac
done
[ -n "$SCRATCH" ] || { usage >&2; exit 2; }
[ "$R" != / ] || R=""
RUN_AS=postgres
PKG=postgresql-15-event-crypto
VERSION=$(awk -F'"' '/^\[package\]/ { p = 1 } p && /^version = / { print $2; exit }' "$ROOT/Cargo.toml")
ARCH=$(dpkg --print-architecture)
BIN=$R/usr/lib/postgresql/15/bin
PG_CONFIG=$BIN/pg_config
LIB=$R/usr/lib/postgresql/15/lib/event_crypto.so
EXT=$R/usr/share/postgresql/15/extension
KEYGEN=$R/usr/bin/event-crypto-keygen
[ "$("$PG_CONFIG" --pkglibdir)" = "$(dirname "$LIB")" ] || { echo "package test: $PG_CONFIG is not laid out as expected" >&2; exit 1; }
as_pg() { runuser -u "$RUN_AS" -- "$@"; }
fail() { echo "package test: FAILED: $*" >&2; exit 1; }
ms() { echo $(( $(date +%s%3N) - $1 )); }
if [ -z "$R" ]; then
    dpkg_() { dpkg "$@"; }
    pkg_install() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "$1"; }
    pkg_remove() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 remove -y -q "$PKG"; }
else
    mkdir -p "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates"
    touch "$R/var/lib/dpkg/status"
    dpkg_() { dpkg --root="$R" "$@"; }
    # the copy's dpkg database lists no postgresql-15 or libc6; maintainer scripts run outside a chroot, with
    # DPKG_ROOT set
    pkg_install() { dpkg --root="$R" --force-depends --force-script-chrootless -i "$1"; }
    pkg_remove() { dpkg --root="$R" --force-depends --force-script-chrootless -r "$PKG"; }
fi
installed() { [ "$(dpkg_ -s "$PKG" 2> /dev/null | sed -n 's/^Status: //p')" = "install ok installed" ]; }
installed && fail "$PKG is installed already; remove it before running this test"

rm -rf "$SCRATCH"
install -d -m 755 "$SCRATCH" "$SCRATCH/saved" "$SCRATCH/keys"
SCRATCH=$(cd "$SCRATCH" && pwd -P)
DATA=$SCRATCH/data
SOCK=$SCRATCH/sock
install -d -o "$RUN_AS" -g "$RUN_AS" "$SOCK"
install -d -o "$RUN_AS" -g "$RUN_AS" "$SCRATCH/log"
LOG=$SCRATCH/log/server.log

# 0. what is installed now, to put back at the end
for f in "$LIB" "$EXT"/event_crypto.control "$EXT"/event_crypto--*.sql; do
    [ ! -f "$f" ] || cp -p "$f" "$SCRATCH/saved/"
done
server_up=0
cleanup() {
    local rc=$?
    set +e
    [ "$server_up" = 0 ] || as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w stop > /dev/null 2>&1
    if installed; then
        echo "package test: removing $PKG after a failure"
        pkg_remove > "$SCRATCH/cleanup-remove.out" 2>&1 || cat "$SCRATCH/cleanup-remove.out"
    fi
    for f in "$SCRATCH"/saved/*; do
        [ -f "$f" ] || continue
        case "$f" in
            *.so) bash "$ROOT/packaging/replace-file.sh" "$f" "$LIB" ;;
            *) bash "$ROOT/packaging/replace-file.sh" "$f" "$EXT/$(basename "$f")" ;;
        esac || { echo "package test: could not put back $(basename "$f")" >&2; rc=1; }
    done
    [ "$rc" = 0 ] || echo "package test: failed; files in $SCRATCH" >&2
    exit "$rc"
}
trap cleanup EXIT

# 1. the package
t=$(date +%s%3N)
build_flags=()
[ "$PROFILE" = debug ] && build_flags+=(--debug)
if ! bash "$ROOT/packaging/build-deb.sh" "${build_flags[@]}" --pg-config "$PG_CONFIG" --out-dir "$SCRATCH/deb" \
        > "$SCRATCH/build-deb.log" 2>&1; then
    tail -30 "$SCRATCH/build-deb.log"
    fail "packaging/build-deb.sh"
fi
DEB=$SCRATCH/deb/${PKG}_${VERSION}_${ARCH}.deb
[ -f "$DEB" ] || fail "no $DEB"
dpkg-deb --info "$DEB" > "$SCRATCH/info.txt"
field() { dpkg-deb --field "$DEB" "$1"; }
[ "$(field Package)" = "$PKG" ] || fail "Package: $(field Package)"
[ "$(field Version)" = "$VERSION" ] || fail "Version: $(field Version), Cargo.toml says $VERSION"
[ "$(field Architecture)" = "$ARCH" ] || fail "Architecture: $(field Architecture)"
[ "$(field Section)" = database ] || fail "Section: $(field Section)"
[ -n "$(field Maintainer)" ] && [ -n "$(field Description)" ] || fail "no Maintainer or Description"
[[ "$(field Installed-Size)" =~ ^[0-9]+$ ]] || fail "Installed-Size: $(field Installed-Size)"
depends=", $(field Depends),"
[[ "$depends" == *", postgresql-15,"* ]] || fail "Depends does not name postgresql-15: $depends"
[[ "$depends" =~ ", libc6 (>= 2."[0-9]+")," ]] || fail "Depends does not name libc6 with a version: $depends"
grep -Eq '^ +[0-9]+ bytes, +[0-9]+ lines +\* +postinst +#!/bin/sh' "$SCRATCH/info.txt" || fail "no executable postinst"
grep -Eq '^ +[0-9]+ bytes, +[0-9]+ lines +md5sums *$' "$SCRATCH/info.txt" || fail "no md5sums"
# the file list: owners, modes, and nothing outside the places Debian gives an extension package
dpkg-deb --contents "$DEB" > "$SCRATCH/contents.txt"
awk '$2 != "root/root" { print "not owned by root: " $0; bad = 1 } END { exit bad }' "$SCRATCH/contents.txt" || fail "owners"
files=$(awk '$1 !~ /^d/ { sub(/^\.\//, "", $6); print $6 }' "$SCRATCH/contents.txt" | sort)
DOC=usr/share/doc/$PKG
expected="usr/bin/event-crypto-keygen
usr/lib/postgresql/15/lib/event_crypto.so
usr/share/man/man1/event-crypto-keygen.1.gz
usr/share/postgresql/15/extension/event_crypto.control
usr/share/postgresql/15/extension/event_crypto--$VERSION.sql
$DOC/copyright
$DOC/changelog.gz
$DOC/README.md.gz
$DOC/CHANGELOG.md.gz"
for f in "$ROOT"/sql/event_crypto--*--*.sql; do expected="$expected
usr/share/postgresql/15/extension/$(basename "$f")"; done
for f in "$ROOT"/docs/*.md; do expected="$expected
$DOC/docs/$(basename "$f").gz"; done
if ! diff -u <(echo "$expected" | sort) <(echo "$files"); then
    fail "the package's files differ from the expected list (- expected, + in the package)"
fi
grep -Eq '^-rw-r--r-- .* \./usr/lib/postgresql/15/lib/event_crypto\.so$' "$SCRATCH/contents.txt" || fail "library mode"
grep -Eq '^-rwxr-xr-x .* \./usr/bin/event-crypto-keygen$' "$SCRATCH/contents.txt" || fail "keygen mode"
dpkg-deb -x "$DEB" "$SCRATCH/extract"
X=$SCRATCH/extract
nm -D --defined-only "$X/usr/lib/postgresql/15/lib/event_crypto.so" > "$SCRATCH/symbols.txt"
for sym in Pg_magic_func _PG_init; do
    grep -q " $sym\$" "$SCRATCH/symbols.txt" || fail "the packaged library does not export $sym"
done
! readelf -S "$X/usr/lib/postgresql/15/lib/event_crypto.so" | grep -q '\.debug_info' || fail "the library is not stripped"
grep -qx "default_version = '$VERSION'" "$X/usr/share/postgresql/15/extension/event_crypto.control" || fail "control file version"
grep -q '^License: Apache-2.0' "$X/$DOC/copyright" || fail "copyright"
dpkg-deb -e "$DEB" "$SCRATCH/control"
sh -n "$SCRATCH/control/postinst" || fail "postinst does not parse"
echo "test package_metadata_and_files ... ok $(ms "$t") ms"

# 2. a server that preloads the library, running while it is replaced
[ -f "$LIB" ] || bash "$ROOT/packaging/install.sh" --pg-config "$PG_CONFIG" > "$SCRATCH/first-install.out" 2>&1 ||
    { tail -20 "$SCRATCH/first-install.out"; fail "packaging/install.sh"; }
install -d -o "$RUN_AS" -g "$RUN_AS" "$DATA"
as_pg "$BIN/initdb" -D "$DATA" -A trust -U postgres --no-sync > /dev/null
cat >> "$DATA/postgresql.conf" <<CONF
listen_addresses = ''
port = $PORT
unix_socket_directories = '$SOCK'
shared_preload_libraries = 'event_crypto'
event_crypto.master_key_command = 'echo 5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e5a5e'
autovacuum_naptime = 1
fsync = off
CONF
as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w start > /dev/null
server_up=1
psql_() { as_pg "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" "$@"; }
psql_ -d postgres -c "CREATE EXTENSION event_crypto" -c "SELECT event_crypto.create_key('pkg-test')" > /dev/null
COMMAND_KEY_ID=$(psql_ -d postgres -c "SELECT event_crypto.master_key_id()")
runs_installed_library() {   # the postmaster maps the file now at $LIB (not a replaced one)
    grep -qF "$LIB" "/proc/$PM/maps" && ! grep -qF "$LIB (deleted)" "/proc/$PM/maps"
}
roundtrip() {   # $1: a value; prints it after encrypting and decrypting it in the server
    echo "SELECT event_crypto.decrypt_fields(event_crypto.encrypt_fields('{\"e\": \"$1\"}', ARRAY['e'], 'pkg-test'))->>'e'"
}

# replaced_under_server NAME COMMAND...: restarts the server (so that it maps the library installed now), then
# runs COMMAND while a session is half way through its work
replaced_under_server() {
    local name=$1 t ino_before ino_after
    shift
    t=$(date +%s%3N)
    as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -m fast -w restart > /dev/null
    PM=$(head -n 1 "$DATA/postmaster.pid")
    ino_before=$(stat -c %i "$LIB")
    runs_installed_library || fail "$name: the server does not run the installed library"
    psql_ -d postgres -c "$(roundtrip before)" -c "SELECT pg_sleep(4)" -c "$(roundtrip after)" \
        > "$SCRATCH/$name.session" 2>&1 &
    local session=$!
    for _ in $(seq 50); do   # until the session is in its pg_sleep
        [ "$(psql_ -d postgres -c "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(4)'")" = 1 ] && break
        sleep 0.1
    done
    if ! "$@" > "$SCRATCH/$name.out" 2>&1; then
        tail -30 "$SCRATCH/$name.out"
        fail "$name: $* failed"
    fi
    wait "$session" || { cat "$SCRATCH/$name.session"; fail "$name: the session working through the replacement failed"; }
    [ "$(grep -v '^$' "$SCRATCH/$name.session" | tr '\n' ' ')" = "before after " ] ||
        { cat "$SCRATCH/$name.session"; fail "$name: the session's results"; }
    sleep 2   # the autovacuum launcher wakes every second (autovacuum_naptime) and runs the library's hooks
    [ "$(psql_ -d postgres -c "$(roundtrip new)")" = new ] || fail "$name: a new session after the replacement"
    if grep -E "terminated by signal|all server processes terminated" "$LOG"; then
        fail "$name: server processes died while the library was replaced (see $LOG)"
    fi
    [ "$(head -n 1 "$DATA/postmaster.pid")" = "$PM" ] || fail "$name: the postmaster changed"
    ino_after=$(stat -c %i "$LIB")
    [ "$ino_after" != "$ino_before" ] || fail "$name: $LIB was rewritten in place (same inode $ino_before), not replaced"
    grep -qF "$LIB (deleted)" "/proc/$PM/maps" || fail "$name: the server does not map the replaced library"
    grep -qF "data directory $DATA (postmaster PID $PM)" "$SCRATCH/$name.out" ||
        { cat "$SCRATCH/$name.out"; fail "$name: the restart notice does not name the running server"; }
    echo "test $name ... ok $(ms "$t") ms"
}
install_flags=()
[ "$PROFILE" = release ] && install_flags+=(--release)
replaced_under_server install_sh_under_running_server \
    bash "$ROOT/packaging/install.sh" --pg-config "$PG_CONFIG" "${install_flags[@]}"
replaced_under_server package_install_under_running_server pkg_install "$DEB"
installed || fail "$PKG is not installed after installing it"
[ -z "$(dpkg_ --verify "$PKG")" ] || { dpkg_ --verify "$PKG"; fail "installed files differ from the package's"; }

# 3. the key file tool, and the demo on the packaged library
t=$(date +%s%3N)
KEY=$SCRATCH/keys/event_crypto.key
[ -x "$KEYGEN" ] || fail "no $KEYGEN"
refused() {   # $1: what the message must say; the rest: the arguments
    local want=$1 out
    shift
    if out=$("$KEYGEN" "$@" 2>&1); then fail "event-crypto-keygen $* succeeded"; fi
    [[ "$out" == *"$want"* ]] || fail "event-crypto-keygen $*: '$out' does not say '$want'"
}
refused "not an absolute path" keys/event_crypto.key
refused "inside the PostgreSQL data directory" "$DATA/event_crypto.key"
refused "no such user" --owner no_such_user_ec "$SCRATCH/keys/other.key"
refused "does not exist" "$SCRATCH/no/such/dir/event_crypto.key"
[ -z "$(ls -A "$SCRATCH/keys")" ] || fail "refused calls left files behind: $(ls -A "$SCRATCH/keys")"
"$KEYGEN" "$KEY" > "$SCRATCH/keygen.out" 2>&1 || { cat "$SCRATCH/keygen.out"; fail "event-crypto-keygen $KEY"; }
grep -qx "event_crypto.master_key_file = '$KEY'" "$SCRATCH/keygen.out" || fail "keygen does not print the setting"
grep -qx "shared_preload_libraries = 'event_crypto'" "$SCRATCH/keygen.out" || fail "keygen does not print the preload line"
[ "$(stat -c '%U %G %a %h %s' "$KEY")" = "$RUN_AS $(id -gn "$RUN_AS") 600 1 65" ] ||
    fail "key file: $(stat -c '%U %G %a %h %s' "$KEY") (want owner $RUN_AS, mode 600, 1 link, 65 bytes)"
grep -qxE '[0-9a-f]{64}' "$KEY" || fail "the key file does not hold 64 hex digits"
! grep -qF "$(cat "$KEY")" "$SCRATCH/keygen.out" || fail "keygen printed the key"
[ "$(ls -A "$SCRATCH/keys")" = event_crypto.key ] || fail "keygen left files behind: $(ls -A "$SCRATCH/keys")"
sum=$(md5sum < "$KEY")
refused "already exists" "$KEY"
[ "$(md5sum < "$KEY")" = "$sum" ] || fail "keygen changed an existing key file"
"$KEYGEN" --owner root "$SCRATCH/keys/root.key" > /dev/null || fail "keygen --owner root"
[ "$(stat -c '%U %a' "$SCRATCH/keys/root.key")" = "root 600" ] || fail "keygen --owner root: $(stat -c '%U %a' "$SCRATCH/keys/root.key")"
! cmp -s "$KEY" "$SCRATCH/keys/root.key" || fail "two keys are equal"
echo "event_crypto.master_key_file = '$KEY'" >> "$DATA/postgresql.conf"   # takes precedence over the command
as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -m fast -w restart > /dev/null
PM=$(head -n 1 "$DATA/postmaster.pid")
runs_installed_library || fail "the restarted server does not run the installed library"
FILE_KEY_ID=$(psql_ -d postgres -c "SELECT event_crypto.master_key_id()")
[[ "$FILE_KEY_ID" =~ ^[0-9a-f]{16}$ ]] && [ "$FILE_KEY_ID" != "$COMMAND_KEY_ID" ] ||
    fail "the server did not load the key file (master key id $FILE_KEY_ID, before $COMMAND_KEY_ID)"
psql_ -d postgres -c "CREATE DATABASE demo_package"
if ! as_pg "$BIN/psql" -X -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -d demo_package < "$ROOT/demo/demo.sql" \
        > "$SCRATCH/demo.out" 2>&1; then
    tail -30 "$SCRATCH/demo.out"
    fail "demo/demo.sql on the packaged library"
fi
echo "test package_keygen_and_demo ... ok $(ms "$t") ms"

# 4. removal
t=$(date +%s%3N)
as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w stop > /dev/null
server_up=0
pkg_remove > "$SCRATCH/remove.out" 2>&1 || { cat "$SCRATCH/remove.out"; fail "removing $PKG"; }
! installed || fail "$PKG is still installed"
left=$(while IFS= read -r f; do [ ! -e "$R/$f" ] || echo "$R/$f"; done <<< "$files")
[ -z "$left" ] || fail "files left after removing the package: $left"
[ ! -e "$R/$DOC" ] || fail "$R/$DOC is left after removing the package"
echo "test package_remove ... ok $(ms "$t") ms"
