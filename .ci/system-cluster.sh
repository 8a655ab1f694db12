#!/usr/bin/env bash
# Builds (release) and installs event_crypto into the system PostgreSQL 15, gives the "main" cluster a master key
# file outside the data directory, preloads the library and (re)starts the cluster. Used by the demo and the
# benchmark. Installs missing dependencies first (.ci/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
bash .ci/setup.sh

echo "=== build and install event_crypto (release)"
# files renamed into place: a running cluster that preloads the library keeps running until the restart below
bash packaging/install.sh --release --pg-config /usr/lib/postgresql/15/bin/pg_config

CONF_DIR=/etc/postgresql/15/main
KEY_FILE=$CONF_DIR/event_crypto.key
if [ ! -d "$CONF_DIR" ]; then
  pg_createcluster 15 main
fi
if [ ! -s "$KEY_FILE" ]; then
  echo "=== creating master key $KEY_FILE (packaging/event-crypto-keygen: owned by postgres, mode 600)"
  rm -f "$KEY_FILE"   # an empty file holds no key
  bash packaging/event-crypto-keygen "$KEY_FILE" > /dev/null
fi
CONF_D=$CONF_DIR/conf.d
mkdir -p "$CONF_D"
cat > "$CONF_D/event_crypto.conf" <<CONF
shared_preload_libraries = 'event_crypto'
event_crypto.master_key_file = '$KEY_FILE'
CONF
chown -R postgres:postgres "$CONF_D"
grep -q "^include_dir = 'conf.d'" "$CONF_DIR/postgresql.conf" || echo "include_dir = 'conf.d'" >> "$CONF_DIR/postgresql.conf"

echo "=== (re)starting PostgreSQL 15 cluster main"
pg_ctlcluster --skip-systemctl-redirect 15 main stop >/dev/null 2>&1 || true
pg_ctlcluster --skip-systemctl-redirect 15 main start
