#!/usr/bin/env bash
# The demo: installs dependencies, builds and installs event_crypto into the system PostgreSQL 15 with a master key
# file (.ci/system-cluster.sh), then runs demo/demo.sql (create keys, encrypt, look up by blind index, rotate,
# shred, protect an event table, forget a subject) in a fresh database.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/system-cluster.sh

runuser -u postgres -- psql -X -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS event_crypto_demo" -c "CREATE DATABASE event_crypto_demo"
runuser -u postgres -- psql -X -v ON_ERROR_STOP=1 -d event_crypto_demo -f demo/demo.sql
echo "=== demo finished: connect with  runuser -u postgres -- psql event_crypto_demo"
