#!/usr/bin/env bash
# Installs everything event_crypto needs to build and test on a fresh Debian bookworm machine (as root):
# PostgreSQL 15 server + headers, pg_partman and pg_cron (tests with them), python3-yaml (the test of
# docs/postgres_exporter/queries.yaml reads it), clang for bindgen, dpkg-dev for the Debian package, cargo-pgrx
# 0.18.1, and `cargo pgrx init` against the system PostgreSQL. Idempotent: each step is skipped when already done.
set -euo pipefail
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export DEBIAN_FRONTEND=noninteractive
FUZZ_VERSION=0.13.2
PGRX_VERSION=0.18.1
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config

t0=$SECONDS
step() { echo "=== [setup $((SECONDS - t0))s] $*"; }

step "apt packages"
PKGS="postgresql-15 postgresql-server-dev-15 postgresql-contrib postgresql-15-partman postgresql-15-cron python3-yaml libclang-dev clang pkg-config libssl-dev sudo dpkg-dev"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  apt-get -o DPkg::Lock::Timeout=600 update -q
  # postgresql-15 is named together with its headers so both land at the same minor version
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends $PKGS
fi

step "rust components"
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt

step "cargo-pgrx $PGRX_VERSION"
if [ "$(cargo pgrx --version 2>/dev/null || true)" != "cargo-pgrx $PGRX_VERSION" ]; then
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

step "cargo-fuzz $FUZZ_VERSION"
if [ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $FUZZ_VERSION" ]; then
  cargo install cargo-fuzz --version "$FUZZ_VERSION" --locked
fi

step "cargo pgrx init"
PGRX_CFG="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
if ! grep -qx "pg15 = \"$PG_CONFIG\"" "$PGRX_CFG" 2>/dev/null; then
  cargo pgrx init --pg15 "$PG_CONFIG"
fi
step "done"
