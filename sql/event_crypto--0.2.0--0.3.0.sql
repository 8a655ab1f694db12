-- event_crypto 0.2.0 -> 0.3.0. Every object ends as a fresh 0.3.0 install makes it (tests/upgrade.sh compares them
-- for an upgrade from every release); every row of earlier releases stays and decrypts. Changes to SQL objects
-- after 0.2.0 go here, in the order they are made.
\echo Use "ALTER EXTENSION event_crypto UPDATE TO '0.3.0'" to load this file. \quit

-- ---------------------------------------------------------------------------------------------------------------
-- Envelope format 2 (issue 15): key handles
-- ---------------------------------------------------------------------------------------------------------------

-- keys.handle: what envelopes of format 2 name a key id by. Every existing key id, shredded ones (tombstones)
-- included, gets a random handle, the same in each of its version rows. The handles come from gen_random_uuid()
-- (PostgreSQL's strong random source, as every key event_crypto makes comes from the operating system's): 32
-- random bits of each of two UUIDs (bytes 0-3 of a version 4 UUID are random), never anything derived from the key
-- id. A key id that draws a handle another one drew (about n^2 / 2^65 for n key ids) or 0 draws again.
ALTER TABLE event_crypto.keys ADD COLUMN handle bigint CONSTRAINT keys_handle_check CHECK (handle <> 0);
DO $handles$
DECLARE
    ids text[];
    handles bigint[];
BEGIN
    LOOP
        -- the key ids without a handle, and those whose handle another key id drew too: a random one each (0, which
        -- is never a handle, stays NULL and draws again)
        SELECT pg_catalog.array_agg(d.key_id),
               pg_catalog.array_agg(NULLIF(('x' OPERATOR(pg_catalog.||) pg_catalog.encode(
                   pg_catalog.substr(pg_catalog.uuid_send(pg_catalog.gen_random_uuid()), 1, 4)
                   OPERATOR(pg_catalog.||) pg_catalog.substr(pg_catalog.uuid_send(pg_catalog.gen_random_uuid()), 1, 4),
                   'hex'))::pg_catalog.bit(64)::pg_catalog.int8, 0))
          INTO ids, handles
          FROM (SELECT DISTINCT x.key_id FROM event_crypto.keys x
                 WHERE x.handle IS NULL
                    OR x.handle OPERATOR(pg_catalog.=) ANY (ARRAY(
                           SELECT y.handle FROM event_crypto.keys y WHERE y.handle IS NOT NULL GROUP BY y.handle
                           HAVING pg_catalog.count(DISTINCT y.key_id) OPERATOR(pg_catalog.>) 1))) d;
        EXIT WHEN ids IS NULL;
        -- (the values are parameters of the UPDATE, not volatile calls in it: the same on every placement of a
        -- Citus reference table)
        UPDATE event_crypto.keys k SET handle = u.handle
          FROM ROWS FROM (pg_catalog.unnest(ids), pg_catalog.unnest(handles)) AS u(key_id, handle)
         WHERE k.key_id OPERATOR(pg_catalog.=) u.key_id;
    END LOOP;
END
$handles$;
ALTER TABLE event_crypto.keys ALTER COLUMN handle SET NOT NULL;
CREATE UNIQUE INDEX keys_handle ON event_crypto.keys (handle) WHERE version = 1;
COMMENT ON TABLE event_crypto.keys IS
    'Data keys, wrapped (AES-256-GCM) by the master key. Shredding overwrites the wrapped bytes with NULL; '
    'autovacuum is set to remove the dead row versions that still hold them promptly. '
    'handle: the random number envelopes of format 2 name the key id by (unique among key ids, never changed).';

CREATE FUNCTION event_crypto."keys_handle"() RETURNS TRIGGER
LANGUAGE c
AS 'MODULE_PATHNAME', 'keys_handle_wrapper';
REVOKE ALL ON FUNCTION event_crypto.keys_handle() FROM PUBLIC;
CREATE TRIGGER keys_handle BEFORE INSERT OR UPDATE OF handle ON event_crypto.keys
    FOR EACH ROW EXECUTE FUNCTION event_crypto.keys_handle();
ALTER TABLE event_crypto.keys ENABLE ALWAYS TRIGGER keys_handle;

-- uses_key_version() reads the key catalog now (the handle of the key id): STABLE, like every function that does.
ALTER FUNCTION event_crypto.uses_key_version(jsonb, text, integer) STABLE;

-- ---------------------------------------------------------------------------------------------------------------
-- Issue 15: no identifier of a forgotten subject stays in event_crypto's own tables (src/tombstones.rs,
-- docs/security.md#what-remains-after-a-forget). Key ids shredded whole keep their catalog rows under a keyed
-- digest of the key id (their tombstone); the audit log names key ids and subjects by the same digest.
-- ---------------------------------------------------------------------------------------------------------------

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
-- The digest secret: every change (and the rollback of the transaction that made it) makes each backend derive the
-- digest function again (src/tombstones.rs).
CREATE TRIGGER catalog_secrets_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON event_crypto.catalog_secrets
    FOR EACH STATEMENT EXECUTE FUNCTION event_crypto.catalog_changed();
ALTER TABLE event_crypto.catalog_secrets ENABLE ALWAYS TRIGGER catalog_secrets_changed;
CREATE TRIGGER catalog_secrets_replicated AFTER INSERT OR UPDATE OR DELETE ON event_crypto.catalog_secrets
    FOR EACH ROW EXECUTE FUNCTION event_crypto.catalog_changed();
ALTER TABLE event_crypto.catalog_secrets ENABLE REPLICA TRIGGER catalog_secrets_replicated;
REVOKE ALL ON event_crypto.catalog_secrets FROM PUBLIC;

-- The functions (created as a fresh install creates them).
CREATE FUNCTION event_crypto."key_id_digest"(
	"key_id" TEXT
) RETURNS TEXT
STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'key_id_digest_wrapper';

CREATE FUNCTION event_crypto."was_forgotten"(
	"subject" TEXT,
	"key_prefix" TEXT DEFAULT NULL
) RETURNS bool
STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'was_forgotten_wrapper';

CREATE FUNCTION event_crypto."verify_forget_receipt"(
	"subject" TEXT,
	"receipt" jsonb
) RETURNS bool
STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'verify_forget_receipt_wrapper';

REVOKE ALL ON FUNCTION event_crypto.key_id_digest(text), event_crypto.was_forgotten(text, text),
                       event_crypto.verify_forget_receipt(text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_crypto.key_id_digest(text), event_crypto.was_forgotten(text, text),
                          event_crypto.verify_forget_receipt(text, jsonb)
    TO event_crypto_admin;

-- Citus: the secrets table is a reference table too (a cluster set up before: call event_crypto.citus_setup() again
-- after the update).
CREATE OR REPLACE FUNCTION event_crypto.citus_setup() RETURNS text[]
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t regclass;
    made text[] := '{}';
BEGIN
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RAISE EXCEPTION 'Citus is not installed in this database'
            USING ERRCODE = '55000', HINT = 'CREATE EXTENSION citus, add the workers, then call event_crypto.citus_setup() again.';
    END IF;
    -- the catalog tables have cache-invalidation and validation triggers, which must run on every placement
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p
                   WHERE p.logicalrelid OPERATOR(pg_catalog.=) 'event_crypto.protected_columns'::pg_catalog.regclass) THEN
        -- Citus would turn blind_indexes, which references protected_columns, into a "Citus local table" by renaming
        -- it, which the workers' copy of the extension's table prevents: the foreign key is taken off (on every
        -- node) and put back once both are reference tables (Citus then puts it on every placement).
        ALTER TABLE event_crypto.blind_indexes DROP CONSTRAINT IF EXISTS blind_indexes_table_name_column_name_fkey;
        PERFORM pg_catalog.run_command_on_workers(
            'ALTER TABLE event_crypto.blind_indexes DROP CONSTRAINT IF EXISTS blind_indexes_table_name_column_name_fkey');
    END IF;
    FOREACH t IN ARRAY ARRAY['event_crypto.keys', 'event_crypto.protected_columns', 'event_crypto.blind_indexes',
                             'event_crypto.legacy_subject_keys', 'event_crypto.catalog_secrets']::regclass[] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid OPERATOR(pg_catalog.=) t) THEN
            PERFORM pg_catalog.create_reference_table(t);
            made := made OPERATOR(pg_catalog.||) t::text;
        END IF;
    END LOOP;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_constraint c
                   WHERE c.conrelid OPERATOR(pg_catalog.=) 'event_crypto.blind_indexes'::pg_catalog.regclass
                     AND c.conname OPERATOR(pg_catalog.=) 'blind_indexes_table_name_column_name_fkey') THEN
        ALTER TABLE event_crypto.blind_indexes ADD CONSTRAINT blind_indexes_table_name_column_name_fkey
            FOREIGN KEY (table_name, column_name) REFERENCES event_crypto.protected_columns ON DELETE CASCADE;
    END IF;
    RETURN made;
END
$$;

-- The conversion, by the new library (it needs the master key ring when there is anything to convert): every key id
-- shredded whole becomes its tombstone (rows, usage counts, legacy_subject_keys, the last maintenance result);
-- every audit row names its key ids and subjects by digest; the chain is re-sealed from the first row that changed,
-- and a 'digest_catalog' audit row records the old chain head (position and hash). The function is not part of the
-- extension: it is dropped again.
CREATE FUNCTION event_crypto.upgrade_to_digests() RETURNS jsonb
    VOLATILE PARALLEL UNSAFE
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'upgrade_to_digests_wrapper';
DO $digests$
DECLARE
    r jsonb := event_crypto.upgrade_to_digests();
BEGIN
    IF r OPERATOR(pg_catalog.?) 'resealed_from_seq' THEN
        RAISE WARNING 'event_crypto: the audit chain was re-sealed from position %: its rows name key ids and subjects by digest now',
            r OPERATOR(pg_catalog.->>) 'resealed_from_seq'
            USING DETAIL = pg_catalog.format('%s key ids shredded whole are kept as tombstones, %s audit rows were rewritten; the old chain head (position %s, hash %s) is recorded in a digest_catalog audit row.',
                                             r OPERATOR(pg_catalog.->>) 'tombstones', r OPERATOR(pg_catalog.->>) 'audit_rows_rewritten',
                                             r OPERATOR(pg_catalog.->>) 'old_head_seq', r OPERATOR(pg_catalog.->>) 'old_head_hash'),
                  HINT = 'A chain head recorded outside the database before the update is that old head: record the new one, SELECT head_hash FROM event_crypto.verify_audit_log().';
    END IF;
END
$digests$;
DROP FUNCTION event_crypto.upgrade_to_digests();

-- ---------------------------------------------------------------------------------------------------------------
-- Issue 16: consumers outside the database (src/consumers.rs, docs/consumers.md)
-- ---------------------------------------------------------------------------------------------------------------
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'event_crypto_consumer') THEN
        CREATE ROLE event_crypto_consumer NOLOGIN;
    END IF;
END
$roles$;

CREATE TABLE event_crypto.consumer_registry (
    name        text        PRIMARY KEY
                            CONSTRAINT consumer_registry_name_check
                            CHECK (pg_catalog.octet_length(name) BETWEEN 1 AND 63 AND name OPERATOR(pg_catalog.!~) '[[:cntrl:]]'),
    role        regrole     NOT NULL,
    public_key  bytea       NOT NULL CONSTRAINT consumer_registry_public_key_check CHECK (pg_catalog.octet_length(public_key) = 32),
    key_pattern text        NOT NULL CONSTRAINT consumer_registry_key_pattern_check CHECK (pg_catalog.octet_length(key_pattern) BETWEEN 1 AND 255),
    ttl         interval    NOT NULL
                            CONSTRAINT consumer_registry_ttl_check
                            CHECK (ttl OPERATOR(pg_catalog.>=) '1 second'::pg_catalog.interval AND ttl OPERATOR(pg_catalog.<=) '1 day'::pg_catalog.interval),
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by  name        NOT NULL DEFAULT CURRENT_USER,
    revoked_at  timestamptz,
    revoked_by  name,
    CONSTRAINT consumer_registry_revoked CHECK ((revoked_at IS NULL) = (revoked_by IS NULL))
);
COMMENT ON TABLE event_crypto.consumer_registry IS
    'Consumers that decrypt outside the database with data keys sealed to their X25519 public key '
    '(event_crypto.consumer_keys). Written by create_consumer() and revoke_consumer() only.';
SELECT pg_catalog.pg_extension_config_dump('event_crypto.consumer_registry', '');
CREATE VIEW event_crypto.consumers AS
    SELECT c.name, c.role, 'ecpk1:' OPERATOR(pg_catalog.||) pg_catalog.encode(c.public_key, 'base64') AS public_key,
           c.key_pattern, c.ttl, c.created_at, c.created_by, c.revoked_at, c.revoked_by
      FROM event_crypto.consumer_registry c;
COMMENT ON VIEW event_crypto.consumers IS
    'Registered consumers; public_key in the text form create_consumer() takes and event-crypto keygen prints.';

CREATE FUNCTION event_crypto."create_consumer"(
	"name" TEXT,
	"public_key" TEXT,
	"key_pattern" TEXT DEFAULT '%',
	"ttl" interval DEFAULT '5 minutes',
	"role" TEXT DEFAULT NULL
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'create_consumer_wrapper';

CREATE FUNCTION event_crypto."revoke_consumer"(
	"name" TEXT
) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'revoke_consumer_wrapper';

CREATE FUNCTION event_crypto."consumer_keys"(
	"name" TEXT,
	"keys" jsonb
) RETURNS TABLE (
	"key_id" TEXT,
	"handle" TEXT,
	"version" INT,
	"purpose" TEXT,
	"status" TEXT,
	"algorithm" TEXT,
	"grant_data" bytea,
	"issued_at" timestamp with time zone,
	"expires_at" timestamp with time zone
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'consumer_keys_wrapper';

REVOKE ALL ON event_crypto.consumer_registry, event_crypto.consumers FROM PUBLIC;
REVOKE ALL ON FUNCTION event_crypto.create_consumer(text, text, text, interval, text),
                       event_crypto.revoke_consumer(text), event_crypto.consumer_keys(text, jsonb) FROM PUBLIC;
GRANT USAGE ON SCHEMA event_crypto TO event_crypto_consumer;
GRANT SELECT ON event_crypto.consumers TO event_crypto_admin;
GRANT EXECUTE ON FUNCTION event_crypto.create_consumer(text, text, text, interval, text),
                          event_crypto.revoke_consumer(text)
    TO event_crypto_admin;
GRANT EXECUTE ON FUNCTION event_crypto.consumer_keys(text, jsonb) TO event_crypto_consumer;

-- ---------------------------------------------------------------------------------------------------------------
-- Issue 17: PII detection (src/pii.rs, docs/pii.md)
-- ---------------------------------------------------------------------------------------------------------------

-- The PII guard of protected columns: what the protect trigger does about personal data outside the configured
-- fields.
ALTER TABLE event_crypto.protected_columns
    ADD COLUMN unprotected_pii text NOT NULL DEFAULT 'ignore' CHECK (unprotected_pii IN ('ignore', 'warn', 'error'));

-- ---------------------------------------------------------------------------------------------------------------
-- Issue 17: compression before encryption (envelope format 2 flag 0x02, docs/format.md#compression). A new last
-- parameter `compress text DEFAULT 'none'` on encrypt_fields, encrypt_value and protect(), and the column's setting
-- in protected_columns (used by the protect trigger and by reencrypt_table on the column).
-- ---------------------------------------------------------------------------------------------------------------

ALTER TABLE event_crypto.protected_columns
    ADD COLUMN compress text NOT NULL DEFAULT 'none' CONSTRAINT protected_compress CHECK (compress IN ('none', 'zstd'));

-- Issue 17: protect(..., tokenize_fields): paths whose string values the protect trigger replaces by their tokens
-- (docs/tokens.md#protect-tokenize_fields). After compress: the column order of catalog.sql.
ALTER TABLE event_crypto.protected_columns
    ADD COLUMN tokenize_fields text[] NOT NULL DEFAULT '{}';

DROP FUNCTION event_crypto.encrypt_fields(jsonb, text[], text, text);
CREATE FUNCTION event_crypto."encrypt_fields"(
	"payload" jsonb,
	"fields" TEXT[],
	"key_id" TEXT,
	"context" TEXT DEFAULT NULL,
	"compress" TEXT DEFAULT 'none'
) RETURNS jsonb
VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'encrypt_fields_0_3_wrapper';

DROP FUNCTION event_crypto.encrypt_value(jsonb, text, text);
CREATE FUNCTION event_crypto."encrypt_value"(
	"value" jsonb,
	"key_id" TEXT,
	"context" TEXT DEFAULT NULL,
	"compress" TEXT DEFAULT 'none'
) RETURNS TEXT
VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'encrypt_value_0_3_wrapper';

-- protect() has three new last arguments, unprotected_pii, compress and tokenize_fields (and returns the table's row type, which has
-- the new columns)
DROP FUNCTION event_crypto.protect(regclass, name, text[], text, name, text, name, name, jsonb, text, name, boolean);
CREATE FUNCTION event_crypto."protect"(
	"table" regclass,
	"column" name,
	"fields" TEXT[] DEFAULT NULL,
	"key_id" TEXT DEFAULT NULL,
	"key_column" name DEFAULT NULL,
	"key_prefix" TEXT DEFAULT 'subject:',
	"context_column" name DEFAULT NULL,
	"type_column" name DEFAULT NULL,
	"fields_by_type" jsonb DEFAULT NULL,
	"on_forgotten" TEXT DEFAULT 'error',
	"view_name" name DEFAULT NULL,
	"allow_unlisted_types" bool DEFAULT false,
	"unprotected_pii" TEXT DEFAULT 'ignore',
	"compress" TEXT DEFAULT 'none',
	"tokenize_fields" TEXT[] DEFAULT NULL
) RETURNS event_crypto.protected_columns
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'protect_0_3_wrapper';

CREATE FUNCTION event_crypto."detect_pii"(
	"payload" jsonb
) RETURNS TABLE (
	"path" TEXT,
	"kind" TEXT,
	"confidence" real
)
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'detect_pii_wrapper';

CREATE FUNCTION event_crypto."suggest_protection"(
	"table" regclass,
	"column" name,
	"sample_rows" INT DEFAULT 1000
) RETURNS TABLE (
	"path" TEXT,
	"kind" TEXT,
	"rows" bigint,
	"share" real,
	"protect_call" TEXT
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'suggest_protection_wrapper';

REVOKE ALL ON FUNCTION event_crypto.protect(regclass, name, text[], text, name, text, name, name, jsonb, text, name, boolean, text, text, text[]),
                       event_crypto.detect_pii(jsonb), event_crypto.suggest_protection(regclass, name, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_crypto.protect(regclass, name, text[], text, name, text, name, name, jsonb, text, name, boolean, text, text, text[]),
                          event_crypto.suggest_protection(regclass, name, integer)
    TO event_crypto_admin;
GRANT EXECUTE ON FUNCTION event_crypto.detect_pii(jsonb) TO event_crypto_admin, event_crypto_encryptor;

-- Issue 17: tokenization (src/tokens.rs, docs/tokens.md)
-- ---------------------------------------------------------------------------------------------------------------
-- The token vault (issue 17, src/tokens.rs): the value each token stands for, encrypted under the data key of the
-- token's key id (an envelope of format 2, bound to the token as associated data). The key id is named by its
-- handle, which never changes and which a shredded key id's tombstone keeps: nothing here names a key id or a
-- subject. value_digest: a keyed digest of the value (the key id's token key, its own label), by which tokenize()
-- finds the token a value already has. Written by the catalog owner only (tokenize, forget_subject, the
-- maintenance action token_purge); read by detokenize and export_subject.
CREATE TABLE event_crypto.token_vault (
    token        text        PRIMARY KEY CONSTRAINT token_vault_token_check CHECK (pg_catalog.octet_length(token) BETWEEN 1 AND 270),
    key_handle   bigint      NOT NULL CONSTRAINT token_vault_key_handle_check CHECK (key_handle <> 0),
    key_version  integer     NOT NULL CONSTRAINT token_vault_key_version_check CHECK (key_version >= 1),
    format       text        NOT NULL CONSTRAINT token_vault_format_check CHECK (format IN ('opaque', 'card', 'email')),
    value_digest bytea       NOT NULL CONSTRAINT token_vault_value_digest_check CHECK (pg_catalog.octet_length(value_digest) = 32),
    value        text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT token_vault_one_token UNIQUE (key_handle, format, value_digest)
);
COMMENT ON TABLE event_crypto.token_vault IS
    'Tokens and the values they stand for, encrypted under the key id (named by its handle). Written only by tokenize(), forget_subject() and the maintenance run.';
SELECT pg_catalog.pg_extension_config_dump('event_crypto.token_vault', '');
REVOKE ALL ON event_crypto.token_vault FROM PUBLIC;

CREATE FUNCTION event_crypto."tokenize"(
	"value" TEXT,
	"key_id" TEXT,
	"format" TEXT DEFAULT 'opaque'
) RETURNS TEXT
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'tokenize_wrapper';

CREATE FUNCTION event_crypto."detokenize"(
	"token" TEXT
) RETURNS TEXT
STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'detokenize_wrapper';

REVOKE ALL ON FUNCTION event_crypto.tokenize(text, text, text), event_crypto.detokenize(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_crypto.tokenize(text, text, text) TO event_crypto_encryptor;
GRANT EXECUTE ON FUNCTION event_crypto.detokenize(text) TO event_crypto_decryptor;

-- (compression, above: the new signatures' grants)
REVOKE ALL ON FUNCTION event_crypto.encrypt_fields(jsonb, text[], text, text, text),
                       event_crypto.encrypt_value(jsonb, text, text, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_crypto.encrypt_fields(jsonb, text[], text, text, text),
                          event_crypto.encrypt_value(jsonb, text, text, text)
    TO event_crypto_encryptor;
