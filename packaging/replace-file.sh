#!/usr/bin/env bash
# Replaces DEST by a copy of SRC atomically: the copy is written beside DEST under a temporary name (same directory,
# so same file system), flushed, given MODE, then renamed over DEST. Whoever has the old DEST open or mapped (a server
# that loaded event_crypto.so) keeps the old file intact; whoever opens DEST sees the old or the new file, never a
# partial one. Writing DEST in place (cp, `cargo pgrx install`) changes the pages a running server has mapped and
# kills its processes with signal 11.
# Usage: bash packaging/replace-file.sh SRC DEST [MODE]    (MODE: octal; default SRC's mode without group/other write)
set -euo pipefail
[ $# -ge 2 ] && [ $# -le 3 ] || { echo "Usage: bash packaging/replace-file.sh SRC DEST [MODE]" >&2; exit 2; }
src=$1
dest=$2
mode=${3:-$(printf '%o' $(( 0$(stat -c %a "$src") & ~022 )))}
[ -f "$src" ] || { echo "replace-file.sh: $src is not a file" >&2; exit 1; }
[ ! -d "$dest" ] || { echo "replace-file.sh: $dest is a directory" >&2; exit 1; }
dir=$(dirname "$dest")
tmp=$(mktemp "$dir/.$(basename "$dest").XXXXXX")
trap 'rm -f "$tmp"' EXIT
cp "$src" "$tmp"
chmod "$mode" "$tmp"
sync "$tmp"
mv -fT "$tmp" "$dest"   # rename(2)
trap - EXIT
sync "$dir"
