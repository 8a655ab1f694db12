//! event_crypto: field-level encryption and crypto-shredding for JSONB event payloads.
//!
//! The SQL layer is thin: `api` converts types and calls `event_crypto_core`; `keys` holds the catalog and the
//! per-backend key cache; `master` loads the master key; `guc` declares settings; `error` maps errors to SQLSTATEs.

use pgrx::prelude::*;

mod api;
mod error;
mod guc;
mod keys;
mod master;
mod triggers;

::pgrx::pg_module_magic!(name, version);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
    keys::register_invalidation();
    // SAFETY: reading a flag the postmaster sets while it loads shared_preload_libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        master::preload();
    }
}

extension_sql!(
    r#"
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'event_crypto_admin') THEN
        CREATE ROLE event_crypto_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'event_crypto_encryptor') THEN
        CREATE ROLE event_crypto_encryptor NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'event_crypto_decryptor') THEN
        CREATE ROLE event_crypto_decryptor NOLOGIN;
    END IF;
END
$roles$;

CREATE TABLE event_crypto.keys (
    key_id            text        NOT NULL CHECK (pg_catalog.octet_length(key_id) BETWEEN 1 AND 255),
    version           integer     NOT NULL CHECK (version >= 1),
    algorithm         text        NOT NULL CHECK (algorithm IN ('aes-256-gcm', 'chacha20-poly1305')),
    status            text        NOT NULL CHECK (status IN ('active', 'retired', 'shredded')),
    wrapped_key       bytea,
    wrapped_index_key bytea,
    master_key_id     text        NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by        name        NOT NULL DEFAULT CURRENT_USER,
    retired_at        timestamptz,
    shredded_at       timestamptz,
    shredded_by       name,
    PRIMARY KEY (key_id, version),
    CONSTRAINT keys_material_iff_live CHECK (
        (status = 'shredded') = (wrapped_key IS NULL AND wrapped_index_key IS NULL)
        AND (wrapped_key IS NULL) = (wrapped_index_key IS NULL))
) WITH (autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0.0);

COMMENT ON TABLE event_crypto.keys IS
    'Data keys, wrapped (AES-256-GCM) by the master key. Shredding overwrites the wrapped bytes with NULL; '
    'autovacuum is set to remove the dead row versions that still hold them promptly.';

CREATE UNIQUE INDEX keys_one_active ON event_crypto.keys (key_id) WHERE status = 'active';

SELECT pg_catalog.pg_extension_config_dump('event_crypto.keys', '');

CREATE VIEW event_crypto.key_info AS
    SELECT key_id, version, algorithm, status, master_key_id, created_at, created_by, retired_at,
           shredded_at, shredded_by, wrapped_key IS NOT NULL AS has_key_material
    FROM event_crypto.keys;
COMMENT ON VIEW event_crypto.key_info IS 'The key catalog without the wrapped key material.';
"#,
    name = "catalog",
    bootstrap
);

extension_sql!(
    r#"
CREATE TRIGGER keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON event_crypto.keys
    FOR EACH STATEMENT EXECUTE FUNCTION event_crypto.keys_changed();

REVOKE ALL ON ALL TABLES IN SCHEMA event_crypto FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA event_crypto FROM PUBLIC;
REVOKE ALL ON SCHEMA event_crypto FROM PUBLIC;
GRANT USAGE ON SCHEMA event_crypto TO event_crypto_admin, event_crypto_encryptor, event_crypto_decryptor;

GRANT SELECT ON event_crypto.key_info TO event_crypto_admin;
GRANT EXECUTE ON FUNCTION event_crypto.create_key(text, text), event_crypto.rotate_key(text, text),
                          event_crypto.shred_key(text), event_crypto.master_key_id()
    TO event_crypto_admin;
GRANT EXECUTE ON FUNCTION event_crypto.encrypt_fields(jsonb, text[], text, text),
                          event_crypto.encrypt_value(jsonb, text, text),
                          event_crypto.blind_index(text, text, text)
    TO event_crypto_encryptor;
GRANT EXECUTE ON FUNCTION event_crypto.decrypt_fields(jsonb, text, text),
                          event_crypto.decrypt_value(text, text, text)
    TO event_crypto_decryptor;
"#,
    name = "privileges",
    finalize
);

#[cfg(any(test, feature = "pg_test"))]
mod tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'event_crypto'",
            "event_crypto.master_key_command = 'echo 6ec0b1a5e5c0ffee6ec0b1a5e5c0ffee6ec0b1a5e5c0ffee6ec0b1a5e5c0ffee'",
        ]
    }
}
