#!/usr/bin/env bash
# Builds the Debian package postgresql-15-event-crypto_<version>_<arch>.deb from `cargo pgrx package`, laid out as
# Debian lays out PostgreSQL extensions:
#   /usr/lib/postgresql/15/lib/event_crypto.so                  (stripped, 0644)
#   /usr/share/postgresql/15/extension/event_crypto.control, event_crypto--*.sql
#   /usr/bin/event-crypto-keygen, /usr/share/man/man1/event-crypto-keygen.1.gz (creates a master key file)
#   /usr/share/doc/postgresql-15-event-crypto/ (copyright, changelog.gz, README.md.gz, CHANGELOG.md.gz, docs/*.md.gz)
# Depends: postgresql-15 and the shared libraries the library links against (dpkg-shlibdeps). The postinst says
# which running servers still run a previous event_crypto.so and must be restarted (packaging/restart-notice.sh).
# dpkg itself replaces files atomically: it unpacks each to <path>.dpkg-new and renames it over the old one.
# The version is Cargo.toml's (it must equal the default_version of the built control file).
#
# Usage: bash packaging/build-deb.sh [--debug] [--pg-config PATH] [--out-dir DIR]
#   --debug           package a debug build (quicker when one exists already; tests/package.sh uses it in CI)
#   --pg-config PATH  the PostgreSQL 15 to build against (default /usr/lib/postgresql/15/bin/pg_config); the package
#                     uses Debian's paths whatever this installation's prefix is
#   --out-dir DIR     where to write the .deb (default ${CARGO_TARGET_DIR:-target}/deb)
# Environment: DEB_MAINTAINER ("Name <address>") for the Maintainer field; SOURCE_DATE_EPOCH (default: the time of
# the HEAD commit) for file times and the changelog date.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PROFILE=release
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET" in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
OUT_DIR=$TARGET/deb
usage() { echo "Usage: bash packaging/build-deb.sh [--debug] [--pg-config PATH] [--out-dir DIR]"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --debug) PROFILE=debug; shift ;;
        --pg-config) [ $# -ge 2 ] || { usage >&2; exit 2; }; PG_CONFIG=$2; shift 2 ;;
        --pg-config=*) PG_CONFIG=${1#*=}; shift ;;
        --out-dir) [ $# -ge 2 ] || { usage >&2; exit 2; }; OUT_DIR=$2; shift 2 ;;
        --out-dir=*) OUT_DIR=${1#*=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build-deb.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
for tool in dpkg-deb dpkg-shlibdeps strip gzip; do
    command -v "$tool" > /dev/null || { echo "build-deb.sh: $tool is missing (apt-get install dpkg-dev)" >&2; exit 1; }
done
[ -x "$PG_CONFIG" ] || { echo "build-deb.sh: $PG_CONFIG is not an executable pg_config" >&2; exit 1; }
case "$("$PG_CONFIG" --version)" in
    "PostgreSQL 15."*) ;;
    *) echo "build-deb.sh: $PG_CONFIG is not PostgreSQL 15" >&2; exit 1 ;;
esac

PKG=postgresql-15-event-crypto
VERSION=$(awk -F'"' '/^\[package\]/ { p = 1 } p && /^version = / { print $2; exit }' "$ROOT/Cargo.toml")
[[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "build-deb.sh: no version in Cargo.toml" >&2; exit 1; }
ARCH=$(dpkg --print-architecture)
MAINTAINER=${DEB_MAINTAINER:-event_crypto maintainers <maintainers@users.noreply.h-seed-0cd76128.example>}
COMMIT=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ "$COMMIT" != unknown ] && [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    COMMIT="$COMMIT with local changes"
fi
# not exported before the build: a changed environment makes cargo rebuild pgrx-pg-sys (its C code)
EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}
WORK=$TARGET/deb-build/$PROFILE
STAGE=$WORK/stage
PKGROOT=$WORK/root
DOC=$PKGROOT/usr/share/doc/$PKG
LIBDIR=/usr/lib/postgresql/15/lib
EXTDIR=/usr/share/postgresql/15/extension

echo "=== building event_crypto $VERSION ($PROFILE) with $PG_CONFIG"
rm -rf "$WORK"
mkdir -p "$WORK"
build_flags=()
[ "$PROFILE" = debug ] && build_flags+=(--debug)
(cd "$ROOT" && cargo pgrx package "${build_flags[@]}" --pg-config "$PG_CONFIG" --out-dir "$STAGE")
SRC_LIB=$STAGE$("$PG_CONFIG" --pkglibdir)/event_crypto.so
SRC_EXT=$STAGE$("$PG_CONFIG" --sharedir)/extension
[ -f "$SRC_LIB" ] || { echo "build-deb.sh: the build did not produce $SRC_LIB" >&2; exit 1; }
built_version=$(sed -n "s/^default_version = '\(.*\)'$/\1/p" "$SRC_EXT/event_crypto.control")
if [ "$built_version" != "$VERSION" ] || [ ! -f "$SRC_EXT/event_crypto--$VERSION.sql" ]; then
    echo "build-deb.sh: the control file says version '$built_version', Cargo.toml $VERSION" >&2
    exit 1
fi

echo "=== laying out $PKG $VERSION"
umask 022
install -d "$PKGROOT/DEBIAN" "$PKGROOT$LIBDIR" "$PKGROOT$EXTDIR" "$PKGROOT/usr/bin" "$PKGROOT/usr/share/man/man1" \
    "$DOC/docs"
install -m 0644 "$SRC_LIB" "$PKGROOT$LIBDIR/event_crypto.so"
strip --strip-unneeded --remove-section=.comment "$PKGROOT$LIBDIR/event_crypto.so"
install -m 0644 "$SRC_EXT/event_crypto.control" "$SRC_EXT"/event_crypto--*.sql "$PKGROOT$EXTDIR/"
install -m 0755 "$ROOT/packaging/event-crypto-keygen" "$PKGROOT/usr/bin/event-crypto-keygen"
gzip -9n < "$ROOT/packaging/event-crypto-keygen.1" > "$PKGROOT/usr/share/man/man1/event-crypto-keygen.1.gz"
for f in README.md CHANGELOG.md; do
    gzip -9n < "$ROOT/$f" > "$DOC/$f.gz"
done
for f in "$ROOT"/docs/*.md; do
    name=$(basename "$f")
    gzip -9n < "$f" > "$DOC/docs/$name.gz"
done
{
    cat "$ROOT/packaging/copyright"
    echo
    echo "Files: usr/lib/postgresql/15/lib/event_crypto.so"
    echo "Copyright: the event_crypto contributors; the authors of the Rust crates listed below"
    echo "License: Apache-2.0 and rust-crates"
    echo
    echo "License: rust-crates"
    echo " The library statically links these Rust crates (cargo tree: name, version, SPDX license expression)."
    echo " Their license texts come with each crate's source (crates.io); Apache-2.0's is in"
    echo " /usr/share/common-licenses/Apache-2.0."
    echo " ."
    crates() { (cd "$ROOT" && cargo tree --locked "$@" -p event_crypto -e normal,no-proc-macro --prefix none -f '{p} {l}'); }
    { crates --offline 2> /dev/null || crates; } |   # online only if a manifest was never downloaded
        sed -e 's/ (\*)$//' -e 's/ (\/[^)]*)//' | grep -v '^event_crypto' | sort -u | sed 's/^/ /'
} > "$DOC/copyright"
cat > "$WORK/changelog" <<EOF
$PKG ($VERSION) unstable; urgency=medium

  * event_crypto $VERSION, built from commit $COMMIT. What changed: CHANGELOG.md.gz.

 -- $MAINTAINER  $(date -u -R -d "@$EPOCH")
EOF
gzip -9n < "$WORK/changelog" > "$DOC/changelog.gz"

# postinst: the restart notice (the function of restart-notice.sh)
{
    echo "#!/bin/sh"
    echo "# postinst of $PKG (made by packaging/build-deb.sh from packaging/restart-notice.sh)"
    echo "set -e"
    sed -n '/^restart_notice() {/,/^}/p' "$ROOT/packaging/restart-notice.sh"
    # shellcheck disable=SC2016 # the postinst's own $1
    echo 'if [ "$1" = configure ]; then'
    echo "    restart_notice \"\${DPKG_ROOT:-}$LIBDIR/event_crypto.so\" || true"
    echo "fi"
    echo "exit 0"
} > "$PKGROOT/DEBIAN/postinst"
chmod 0755 "$PKGROOT/DEBIAN/postinst"

# Depends: dpkg-shlibdeps reads debian/control of the directory it runs in. Its warnings about symbols that no
# library defines are expected: the server executable defines them (palloc, elog…).
mkdir -p "$WORK/debian"
printf 'Source: event-crypto\nMaintainer: %s\n\nPackage: %s\nArchitecture: any\n' "$MAINTAINER" "$PKG" \
    > "$WORK/debian/control"
shlibs=$(cd "$WORK" && dpkg-shlibdeps -O --warnings=0 "root$LIBDIR/event_crypto.so" | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "build-deb.sh: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
installed_size=$(du -sk --exclude=DEBIAN "$PKGROOT" | cut -f1)
cat > "$PKGROOT/DEBIAN/control" <<EOF
Package: $PKG
Version: $VERSION
Architecture: $ARCH
Maintainer: $MAINTAINER
Installed-Size: $installed_size
Depends: postgresql-15, $shlibs
Section: database
Priority: optional
Description: field-level encryption and crypto-shredding for PostgreSQL 15 (event_crypto)
 event_crypto encrypts the sensitive fields of JSONB (or json) event payloads inside
 PostgreSQL, under a data key per subject or tenant, with an authenticated envelope per
 field, blind indexes for equality lookups, key rotation and re-encryption. Shredding a
 subject's key makes its data unreadable in every copy: tables, dumps, replicas, backups.
 .
 This package holds the extension for PostgreSQL 15 and event-crypto-keygen, which creates
 the master key file the extension reads at server start. The library must be preloaded
 (shared_preload_libraries = 'event_crypto'); see /usr/share/doc/$PKG.
EOF
(cd "$PKGROOT" && find usr -type f -print0 | sort -z | xargs -0 md5sum) > "$PKGROOT/DEBIAN/md5sums"
chmod 0644 "$PKGROOT/DEBIAN/control" "$PKGROOT/DEBIAN/md5sums"
find "$PKGROOT" -exec touch -h -d "@$EPOCH" {} +

mkdir -p "$OUT_DIR"
DEB=$OUT_DIR/${PKG}_${VERSION}_${ARCH}.deb
SOURCE_DATE_EPOCH=$EPOCH dpkg-deb --root-owner-group --build "$PKGROOT" "$DEB"
echo "=== built $DEB"
