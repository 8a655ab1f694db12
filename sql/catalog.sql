-- The key catalog, the human view of it, and the roles.
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
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'event_crypto_consumer') THEN
        CREATE ROLE event_crypto_consumer NOLOGIN;
    END IF;
END
$roles$;

CREATE TABLE event_crypto.keys (
    key_id            text        NOT NULL CHECK (pg_catalog.octet_length(key_id) BETWEEN 1 AND 255),
    version           integer     NOT NULL CHECK (version >= 1),
    algorithm         text        NOT NULL CHECK (algorithm IN ('aes-256-gcm', 'chacha20-poly1305')),
    status            text        NOT NULL CHECK (status IN ('active', 'retired', 'disabled', 'shredded')),
    wrapped_key       bytea,
    wrapped_index_key bytea,
    master_key_id     text        NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by        name        NOT NULL DEFAULT CURRENT_USER,
    retired_at        timestamptz,
    shredded_at       timestamptz,
    shredded_by       name,
    -- a disabled version (retire_key_version) is destroyed by the maintenance run from then on
    destroy_after     timestamptz,
    -- the key id's handle: what envelopes of format 2 name the key by (docs/format.md). Random (never derived from
    -- the key id), the same in every version row, never changed (trigger keys_handle), kept after shredding, unique
    -- among key ids (index keys_handle)
    handle            bigint      NOT NULL CONSTRAINT keys_handle_check CHECK (handle <> 0),
    PRIMARY KEY (key_id, version),
    CONSTRAINT keys_disabled_until CHECK ((status = 'disabled') = (destroy_after IS NOT NULL)),
    CONSTRAINT keys_material_iff_live CHECK (
        (status = 'shredded') = (wrapped_key IS NULL AND wrapped_index_key IS NULL)
        AND (wrapped_key IS NULL) = (wrapped_index_key IS NULL))
) WITH (autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0.0);

COMMENT ON TABLE event_crypto.keys IS
    'Data keys, wrapped (AES-256-GCM) by the master key. Shredding overwrites the wrapped bytes with NULL; '
    'autovacuum is set to remove the dead row versions that still hold them promptly. '
    'handle: the random number envelopes of format 2 name the key id by (unique among key ids, never changed).';

CREATE UNIQUE INDEX keys_one_active ON event_crypto.keys (key_id) WHERE status = 'active';
-- No two key ids have one handle: every key id has its version 1 row (shredding keeps it), and every row of a key
-- id has the key id's handle (trigger keys_handle). Also how a handle is looked up.
CREATE UNIQUE INDEX keys_handle ON event_crypto.keys (handle) WHERE version = 1;

SELECT pg_catalog.pg_extension_config_dump('event_crypto.keys', '');

-- What protect() encrypts on insert: one row per protected column.
CREATE TABLE event_crypto.protected_columns (
    table_name     regclass    NOT NULL,
    column_name    name        NOT NULL,
    fields         text[]      NOT NULL DEFAULT '{}',
    key_id         text,
    key_column     name,
    key_prefix     text        NOT NULL DEFAULT 'subject:',
    context_column name,
    type_column    name,
    fields_by_type jsonb,
    on_forgotten   text        NOT NULL DEFAULT 'error' CHECK (on_forgotten IN ('error', 'new_key')),
    protected_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    protected_by   name        NOT NULL DEFAULT CURRENT_USER,
    PRIMARY KEY (table_name, column_name),
    CONSTRAINT protected_one_key CHECK ((key_id IS NULL) <> (key_column IS NULL)),
    CONSTRAINT protected_some_fields CHECK (pg_catalog.cardinality(fields) > 0 OR fields_by_type IS NOT NULL),
    CONSTRAINT protected_types CHECK ((type_column IS NULL) = (fields_by_type IS NULL)
                                      AND (fields_by_type IS NULL OR pg_catalog.jsonb_typeof(fields_by_type) = 'object')),
    -- the view protect() created beside the table, by oid (it follows renames; nothing stored is spliced into SQL)
    decrypted_view regclass,
    -- rows whose type fields_by_type does not name (or NULL) get the common fields only; false: such rows are
    -- refused (23514) unless fields_by_type has a "*" entry
    allow_unlisted_types boolean NOT NULL DEFAULT false,
    CONSTRAINT protected_unlisted_needs_types CHECK (NOT allow_unlisted_types OR type_column IS NOT NULL),
    -- the PII guard: what the trigger does about personal data it detects outside the configured fields
    unprotected_pii text NOT NULL DEFAULT 'ignore' CHECK (unprotected_pii IN ('ignore', 'warn', 'error')),
    -- 'zstd': values longer than event_crypto.compress_threshold are compressed before encryption (format 2)
    compress       text        NOT NULL DEFAULT 'none' CONSTRAINT protected_compress CHECK (compress IN ('none', 'zstd')),
    -- paths whose string values the trigger replaces by their tokens (path, or path:opaque|card|email)
    tokenize_fields text[]     NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE event_crypto.protected_columns IS
    'What event_crypto.protect() encrypts on insert and update. Written only by protect() and friends; every row is validated by a trigger.';
SELECT pg_catalog.pg_extension_config_dump('event_crypto.protected_columns', '');

-- Blind index columns the protect trigger fills from a field's plaintext.
CREATE TABLE event_crypto.blind_indexes (
    table_name    regclass NOT NULL,
    column_name   name     NOT NULL,
    field         text     NOT NULL,
    target_column name     NOT NULL,
    key_id        text     NOT NULL,
    normalize     text,
    PRIMARY KEY (table_name, target_column),
    FOREIGN KEY (table_name, column_name) REFERENCES event_crypto.protected_columns ON DELETE CASCADE
);
COMMENT ON TABLE event_crypto.blind_indexes IS
    'Blind index columns filled by the protect trigger. Written only by add_blind_index() and drop_blind_index(); every row is validated by a trigger.';
SELECT pg_catalog.pg_extension_config_dump('event_crypto.blind_indexes', '');

-- Who did what to which key and subject. Written only by event_crypto's own code (no role has INSERT), append-only
-- for everyone but superusers (no UPDATE or DELETE grant, and a trigger refuses them), and hash-chained: when the
-- writing transaction commits, its new rows get their positions (seq) and row_hash = SHA-256(previous row_hash,
-- the row's content) in one pass; event_crypto.verify_audit_log() walks the chain. audit_head records each new head
-- (position and hash), so deleting the newest rows is detected too.
CREATE TABLE event_crypto.audit_log (
    id            bigserial   PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    actor         name        NOT NULL,
    session_actor name        NOT NULL,
    action        text        NOT NULL,
    subject       text,
    key_ids       text[]      NOT NULL DEFAULT '{}',
    details       jsonb       NOT NULL DEFAULT '{}',
    xact_id       xid8        NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    seq           bigint      UNIQUE,
    prev_hash     bytea,
    row_hash      bytea,
    CONSTRAINT audit_sealed_whole CHECK ((seq IS NULL) = (prev_hash IS NULL) AND (seq IS NULL) = (row_hash IS NULL))
);
COMMENT ON TABLE event_crypto.audit_log IS
    'Key lifecycle and subject actions: who, when, which keys, counts. Append-only and hash-chained (verify_audit_log()).';
SELECT pg_catalog.pg_extension_config_dump('event_crypto.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('event_crypto.audit_log_id_seq', '');

CREATE TABLE event_crypto.audit_head (
    seq       bigint      PRIMARY KEY CHECK (seq >= 1),
    row_hash  bytea       NOT NULL,
    sealed_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE event_crypto.audit_head IS
    'Every head of the audit chain: the position and hash of the newest sealed row after each commit that sealed rows. The newest is the head.';
SELECT pg_catalog.pg_extension_config_dump('event_crypto.audit_head', '');

-- Key ids made by event_crypto 0.1.0 whose name means something else under the current naming of subject keys
-- (event_crypto_core::subject: '%' and '#' of subject ids escaped). Written by the upgrade from 0.1.0 only;
-- whoever a key id here belongs to, it is that subject's key and no other's.
CREATE TABLE event_crypto.legacy_subject_keys (
    key_id     text    NOT NULL,
    key_prefix text    NOT NULL,
    subject    text    NOT NULL,
    generation integer NOT NULL CHECK (generation >= 1),
    PRIMARY KEY (key_id, key_prefix)
);
CREATE INDEX legacy_subject_keys_subject ON event_crypto.legacy_subject_keys (key_prefix, subject);
COMMENT ON TABLE event_crypto.legacy_subject_keys IS
    'Key ids made before subject ids were escaped, with the subject each belongs to (written by the upgrade from 0.1.0).';
SELECT pg_catalog.pg_extension_config_dump('event_crypto.legacy_subject_keys', '');
