-- Secrets of the catalog itself (src/tombstones.rs): 'key-id-digest', the random key under which event_crypto names
-- a key id by a keyed digest instead of the key id wherever the name would outlive a shred: the tombstone rows
-- of key ids shredded whole in event_crypto.keys, and every key id and subject in the audit log. Made on first
-- need, stored only wrapped by the master key (like a data key, with its own associated data), moved by
-- rewrap_keys, dumped with the catalog (a restore keeps the digests computable). Superusers only.
CREATE TABLE event_crypto.catalog_secrets (
    name           text        PRIMARY KEY CHECK (name IN ('key-id-digest')),
    wrapped_secret bytea       NOT NULL,
    master_key_id  text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE event_crypto.catalog_secrets IS
    'Secrets of the catalog, wrapped by the master key: key-id-digest names shredded key ids and the audit log''s key ids and subjects by keyed digest.';
SELECT pg_catalog.pg_extension_config_dump('event_crypto.catalog_secrets', '');
