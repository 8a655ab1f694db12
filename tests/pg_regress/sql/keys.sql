-- Key lifecycle: create, rotate, shred, and every bad argument.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
SELECT event_crypto.create_key('tenant-42');
SELECT event_crypto.create_key('subject:alice', 'chacha20-poly1305');
SELECT key_id, version, algorithm, status, has_key_material, created_by = current_user AS by_me
FROM event_crypto.key_info ORDER BY key_id, version;
-- wrapped keys are 61 bytes, recorded with the master key that wrapped them
SELECT key_id, octet_length(wrapped_key) AS wk, octet_length(wrapped_index_key) AS wik,
       master_key_id = event_crypto.master_key_id() AS current_master
FROM event_crypto.keys ORDER BY key_id;
-- data keys are random: the two wrapped keys differ
SELECT count(DISTINCT wrapped_key) FROM event_crypto.keys;

SELECT event_crypto.rotate_key('tenant-42');
SELECT event_crypto.rotate_key('tenant-42', 'chacha20-poly1305');
SELECT key_id, version, algorithm, status FROM event_crypto.key_info WHERE key_id = 'tenant-42' ORDER BY version;

SELECT event_crypto.shred_key('tenant-42');
SELECT event_crypto.shred_key('tenant-42');  -- again: nothing left to destroy
-- its rows stay (they refuse the key id's re-creation), under the key id's digest instead of the key id (issue 15)
SELECT named_key(key_id, 'tenant-42') AS key_id, version, status, shredded_at IS NOT NULL AS when_recorded,
       wrapped_key IS NULL AND wrapped_index_key IS NULL AS bytes_overwritten
FROM event_crypto.keys WHERE key_id IN ('tenant-42', event_crypto.key_id_digest('tenant-42')) ORDER BY version;

-- errors
SELECT event_crypto.create_key('subject:alice');            -- 42710 exists
SELECT event_crypto.create_key('tenant-42');                -- 55000 shredded ids are never re-created
SELECT event_crypto.rotate_key('tenant-42');                -- 55000
SELECT event_crypto.rotate_key('nope');                     -- 42704
SELECT event_crypto.shred_key('nope');                      -- 42704
SELECT event_crypto.create_key('k', 'des');                 -- 22023 unknown algorithm
SELECT event_crypto.create_key('k', 'AES-256-GCM');         -- 22023 names are exact
SELECT event_crypto.rotate_key('subject:alice', 'rot13');   -- 22023
SELECT event_crypto.create_key('');                         -- 22023 empty key id
SELECT event_crypto.create_key(repeat('k', 256));           -- 22023 too long
SELECT event_crypto.create_key(repeat('k', 255));           -- the longest allowed
SELECT event_crypto.create_key(E'a\nb');                    -- 22023 control character
SELECT event_crypto.create_key(NULL);                       -- 22004
SELECT event_crypto.create_key('k', NULL);                  -- 22004
SELECT event_crypto.rotate_key(NULL);                       -- 22004
SELECT event_crypto.shred_key(NULL);                        -- 22004
SELECT event_crypto.create_key(42::text);                   -- any text is a key id
SELECT event_crypto.create_key(42);                         -- 42883 no such function (wrong type)
ROLLBACK;

-- The catalog is dumped by pg_dump (extension configuration table).
SELECT c.relname FROM pg_extension e, unnest(e.extconfig) AS t(oid) JOIN pg_class c ON c.oid = t.oid
WHERE e.extname = 'event_crypto' ORDER BY 1;

-- Concurrent creators cannot make two active versions.
BEGIN;
SELECT event_crypto.create_key('one-active');
INSERT INTO event_crypto.keys (key_id, version, algorithm, status, wrapped_key, wrapped_index_key, master_key_id)
SELECT key_id, 2, algorithm, 'active', wrapped_key, wrapped_index_key, master_key_id FROM event_crypto.keys
WHERE key_id = 'one-active';                                -- 23505
ROLLBACK;

-- The master key ring (one key here): its status and rewrapping. A catalog row naming a master key the ring lacks
-- is reported, and never rewrapped.
BEGIN;
SELECT event_crypto.create_key('ring-a');
SELECT event_crypto.create_key('ring-b');
SELECT event_crypto.shred_key('ring-b');
SELECT master_key_id = event_crypto.master_key_id() AS is_loaded, in_ring, active, live_key_versions, removable
FROM event_crypto.master_key_status();
SELECT * FROM event_crypto.rewrap_keys_batch();             -- nothing wrapped by an older key
CALL event_crypto.rewrap_keys();                            -- nothing to do, so no COMMIT is attempted
INSERT INTO event_crypto.keys (key_id, version, algorithm, status, wrapped_key, wrapped_index_key, master_key_id)
SELECT 'from-elsewhere', 1, algorithm, 'active', wrapped_key, wrapped_index_key, 'feedfacefeedface'
FROM event_crypto.keys WHERE key_id = 'ring-a';
SELECT master_key_id, in_ring, active, live_key_versions, removable FROM event_crypto.master_key_status()
WHERE NOT in_ring;
SELECT * FROM event_crypto.rewrap_keys_batch(10);           -- unknown_master = 1, untouched
SELECT master_key_id FROM event_crypto.keys WHERE key_id = 'from-elsewhere';
\set VERBOSITY default
SELECT event_crypto.encrypt_value('1', 'from-elsewhere');   -- 28000, the detail names the missing fingerprint
\set VERBOSITY sqlstate
SELECT * FROM event_crypto.rewrap_keys_batch(0);            -- 22023
SELECT * FROM event_crypto.rewrap_keys_batch(100001);       -- 22023
SELECT * FROM event_crypto.rewrap_keys_batch(NULL);         -- 22004
SELECT * FROM event_crypto.rewrap_keys_batch('many');       -- 22P02
ROLLBACK;
-- In a transaction block, a rewrap that has work to do cannot commit its batches: use rewrap_keys_batch() there.
-- (Tested with two master keys in the integration tests.)

-- Key handles (what envelopes of format 2 name a key id by): random, one per key id, the same in every version,
-- kept by shredding, never changed, unique among key ids.
BEGIN;
SELECT event_crypto.create_key('h-a');
SELECT event_crypto.create_key('h-b');
SELECT event_crypto.rotate_key('h-a');
SELECT event_crypto.encrypt_value('"x"', 'h-b') AS h_b_envelope \gset
SELECT handle AS h_b_handle FROM event_crypto.keys WHERE key_id = 'h-b' \gset
SELECT event_crypto.shred_key('h-b');
SELECT key_id, count(*) AS versions, count(DISTINCT handle) AS handles, bool_and(handle <> 0) AS not_zero
FROM event_crypto.keys WHERE key_id LIKE 'h-%' GROUP BY key_id ORDER BY key_id;
-- shredded whole, h-b's rows are now its tombstone's (a digest of the key id), with the same handle
SELECT left(key_id, 5) = E'\x1akd1:' AS tombstone, status, wrapped_key IS NULL AS no_key
FROM event_crypto.keys WHERE handle = :h_b_handle;
SELECT count(DISTINCT handle) AS distinct_handles FROM event_crypto.keys WHERE key_id LIKE 'h-%' OR handle = :h_b_handle;
-- a shredded key keeps its handle: its envelopes read as shredded (null, kept, or 55000, which no longer names the
-- key id), not as an unknown key
SELECT event_crypto.decrypt_value(:'h_b_envelope') AS shredded_null,
       event_crypto.decrypt_value(:'h_b_envelope', NULL, 'keep') = to_jsonb(:'h_b_envelope'::text) AS kept;
\set VERBOSITY default
SELECT event_crypto.decrypt_value(:'h_b_envelope', NULL, 'error');
\set VERBOSITY sqlstate
-- random, never derived from the key id: the same key id made again (after a rollback) gets another handle
SAVEPOINT again;
SELECT event_crypto.create_key('h-again');
SELECT handle AS first_handle FROM event_crypto.keys WHERE key_id = 'h-again' \gset
ROLLBACK TO again;
SELECT event_crypto.create_key('h-again');
SELECT handle <> :first_handle AS another_handle FROM event_crypto.keys WHERE key_id = 'h-again';
-- a handle never changes (format 2 envelopes would name no key, or another one)
UPDATE event_crypto.keys SET handle = handle OPERATOR(pg_catalog.+) 1 WHERE key_id = 'h-a';   -- 0A000
UPDATE event_crypto.keys SET handle = handle WHERE key_id = 'h-a';                               -- unchanged: allowed
UPDATE event_crypto.keys SET handle = 0 WHERE key_id = 'h-a';                                    -- 0A000
-- rows without a handle (a dump of 0.2.0 restored into 0.3.0, rows written by hand) get the key id's handle, or a
-- new one: the same in every version
INSERT INTO event_crypto.keys (key_id, version, algorithm, status, master_key_id)
VALUES ('h-old', 1, 'aes-256-gcm', 'shredded', 'x'), ('h-old', 2, 'aes-256-gcm', 'shredded', 'x');
INSERT INTO event_crypto.keys (key_id, version, algorithm, status, master_key_id)
VALUES ('h-a', 3, 'aes-256-gcm', 'shredded', 'x');
SELECT key_id, count(*) AS versions, count(DISTINCT handle) AS handles FROM event_crypto.keys
WHERE key_id IN ('h-old', 'h-a') GROUP BY key_id ORDER BY key_id;
-- catalogs merged by a restore: a handle another key id has, or another handle for a key id that has one, is
-- refused (23505), saying so (the handles are random: shown as <handle> here)
\set VERBOSITY default
DO $$
DECLARE
    h bigint;
BEGIN
    SELECT handle INTO h FROM event_crypto.keys WHERE key_id = 'h-a' AND version = 1;
    BEGIN
        INSERT INTO event_crypto.keys (key_id, version, algorithm, status, master_key_id, handle)
        VALUES ('h-merged', 1, 'aes-256-gcm', 'shredded', 'x', h);
    EXCEPTION WHEN unique_violation THEN
        RAISE NOTICE '%: %', SQLSTATE, regexp_replace(SQLERRM, '[0-9a-f]{16}', '<handle>', 'g');
    END;
    BEGIN
        INSERT INTO event_crypto.keys (key_id, version, algorithm, status, master_key_id, handle)
        VALUES ('h-a', 4, 'aes-256-gcm', 'shredded', 'x', 42);
    EXCEPTION WHEN unique_violation THEN
        RAISE NOTICE '%: %', SQLSTATE, regexp_replace(SQLERRM, '[0-9a-f]{16}', '<handle>', 'g');
    END;
END
$$;
\set VERBOSITY sqlstate
-- (with the check switched off, the unique index still refuses it)
ALTER TABLE event_crypto.keys DISABLE TRIGGER keys_handle;
INSERT INTO event_crypto.keys (key_id, version, algorithm, status, master_key_id, handle)
SELECT 'h-merged', 1, 'aes-256-gcm', 'shredded', 'x', handle FROM event_crypto.keys WHERE key_id = 'h-a' AND version = 1; -- 23505
ALTER TABLE event_crypto.keys ENABLE ALWAYS TRIGGER keys_handle;
-- a format 2 envelope under a handle no key has: 42704, naming the handle
\set VERBOSITY default
SELECT event_crypto.decrypt_value('$ec2$EAAAAAAAAAABAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE');
\set VERBOSITY sqlstate
ROLLBACK;
