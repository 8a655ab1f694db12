#!/bin/sh
# Says which running PostgreSQL servers still run a replaced copy of event_crypto.so and must be restarted to load
# the new one. A library replaced by rename (packaging/install.sh, dpkg) stays mapped in the processes that loaded
# it; the kernel then names that mapping "<path> (deleted)" in /proc/<pid>/maps. The processes are grouped by their
# working directory, which for a PostgreSQL server process is its data directory.
# Usage: sh packaging/restart-notice.sh LIBRARY     (LIBRARY: the absolute path of the event_crypto.so just replaced)
# POSIX sh: build-deb.sh copies the function below into the package's postinst. Always exits 0.

restart_notice() {
    lib=$1
    dirs=""
    unchecked=0
    for maps in /proc/[0-9]*/maps; do
        pid=${maps#/proc/}
        pid=${pid%/maps}
        if grep -qF " $lib (deleted)" "$maps" 2>/dev/null; then   # the whole path (maps pads it with spaces)
            dir=$(readlink "/proc/$pid/cwd" 2>/dev/null || echo "(unknown directory)")
            dirs="$dirs$dir
"
        elif [ -e "/proc/$pid" ] && ! cat "$maps" > /dev/null 2>&1; then
            unchecked=$((unchecked + 1))   # another user's process, and we are not root
        fi
    done
    if [ -n "$dirs" ]; then
        echo "event_crypto: $lib was replaced; these running PostgreSQL servers still run the previous version:"
        printf '%s' "$dirs" | sort -u | while IFS= read -r d; do
            pm=""
            [ -r "$d/postmaster.pid" ] && pm=$(head -n 1 "$d/postmaster.pid" 2>/dev/null || true)
            echo "  data directory $d${pm:+ (postmaster PID $pm)}"
        done
        echo "event_crypto: RESTART them to load the new version (Debian: pg_ctlcluster 15 <cluster> restart; or"
        echo "  pg_ctl -D <data directory> restart), then run ALTER EXTENSION event_crypto UPDATE in each database"
        echo "  that has the extension if the version changed. Until then they keep running the old library safely."
    elif [ "$unchecked" -gt 0 ]; then
        echo "event_crypto: $lib was replaced; $unchecked processes of other users could not be checked (run as root"
        echo "  to check them). RESTART every PostgreSQL server that has event_crypto loaded to use the new version."
    else
        echo "event_crypto: $lib was replaced; no running process has the previous version loaded"
        echo "  (servers and sessions started from now on load the new one)."
    fi
    return 0
}

restart_notice "$1"   # main (build-deb.sh leaves this line out of the postinst)
