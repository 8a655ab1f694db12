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
