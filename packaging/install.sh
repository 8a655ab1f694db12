#!/usr/bin/env bash
# Builds event_crypto (`cargo pgrx package` into a staging directory) and installs it into a PostgreSQL 15
# installation ATOMICALLY: each file is written beside its destination under a temporary name, then renamed over the
# old one (packaging/replace-file.sh). A running server that has the library loaded (shared_preload_libraries) keeps
# its mapping of the old file, which stays valid until it restarts. `cargo pgrx install` instead rewrites
# event_crypto.so in place, and the server's processes die with signal 11. SQL scripts go first, then the library,
# then the control file, so that a CREATE EXTENSION in between never finds a version without its files.
# Then says which running servers still run the previous library and need a restart (packaging/restart-notice.sh).
#
# Usage: bash packaging/install.sh [--pg-config PATH] [--release] [--source DIR]
#   --pg-config PATH  the PostgreSQL 15 installation to install into (default /usr/lib/postgresql/15/bin/pg_config)
#   --release         release build (default: debug build, like `cargo pgrx install`)
#   --source DIR      the event_crypto checkout to build (default: this one; bench/ab.sh builds an older commit)
# The staging directory is ${CARGO_TARGET_DIR:-SOURCE/target}/install-stage/<profile>; PGRX_HOME and
# CARGO_TARGET_DIR are honoured as by cargo pgrx.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SOURCE=$(cd "$HERE/.." && pwd)
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PROFILE=debug
usage() { echo "Usage: bash packaging/install.sh [--pg-config PATH] [--release] [--source DIR]"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --pg-config) [ $# -ge 2 ] || { usage >&2; exit 2; }; PG_CONFIG=$2; shift 2 ;;
        --pg-config=*) PG_CONFIG=${1#*=}; shift ;;
        --release) PROFILE=release; shift ;;
        --source) [ $# -ge 2 ] || { usage >&2; exit 2; }; SOURCE=$(cd "$2" && pwd); shift 2 ;;
        --source=*) SOURCE=$(cd "${1#*=}" && pwd); shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
[ -x "$PG_CONFIG" ] || { echo "install.sh: $PG_CONFIG is not an executable pg_config" >&2; exit 1; }
LIBDIR=$("$PG_CONFIG" --pkglibdir)
EXTDIR=$("$PG_CONFIG" --sharedir)/extension
[ -d "$LIBDIR" ] && [ -d "$EXTDIR" ] || { echo "install.sh: $LIBDIR or $EXTDIR does not exist" >&2; exit 1; }
STAGE=${CARGO_TARGET_DIR:-$SOURCE/target}/install-stage/$PROFILE
case "$STAGE" in /*) ;; *) STAGE=$SOURCE/$STAGE ;; esac

echo "=== building event_crypto ($PROFILE) from $SOURCE into $STAGE"
rm -rf "$STAGE"
build_flags=()
[ "$PROFILE" = debug ] && build_flags+=(--debug)
(cd "$SOURCE" && cargo pgrx package "${build_flags[@]}" --pg-config "$PG_CONFIG" --out-dir "$STAGE")

# cargo pgrx package lays the files out under the installation's own absolute paths
SRC_LIB=$STAGE$LIBDIR/event_crypto.so
SRC_EXT=$STAGE$EXTDIR
[ -f "$SRC_LIB" ] || { echo "install.sh: the build did not produce $SRC_LIB" >&2; exit 1; }
[ -f "$SRC_EXT/event_crypto.control" ] || { echo "install.sh: no control file in $SRC_EXT" >&2; exit 1; }

owner=$(dpkg-query -S "$LIBDIR/event_crypto.so" 2> /dev/null | cut -d: -f1 || true)
[ -z "$owner" ] || echo "note: this replaces files of the installed package $owner (dpkg -V $owner will list them)"

echo "=== installing into $LIBDIR and $EXTDIR (each file renamed into place)"
for f in "$SRC_EXT"/event_crypto*.sql "$SRC_LIB" "$SRC_EXT/event_crypto.control"; do
    case "$f" in
        *.so) dest=$LIBDIR/$(basename "$f"); mode=0755 ;;
        *) dest=$EXTDIR/$(basename "$f"); mode=0644 ;;
    esac
    bash "$HERE/replace-file.sh" "$f" "$dest" "$mode"
    echo "installed $dest"
done
sh "$HERE/restart-notice.sh" "$LIBDIR/event_crypto.so"
