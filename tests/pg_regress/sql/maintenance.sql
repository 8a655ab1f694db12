-- Usage counters, scheduled rotation, retention and run_maintenance().
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
SELECT event_crypto.usage_tracking();                      -- the library is preloaded here
-- Encryptions are counted per key version: kept in the session, published at transaction end, flushed by
-- flush_usage() (or run_maintenance()) into event_crypto.key_usage; key_info shows flushed + pending.
SELECT event_crypto.create_key('mt:usage');
SELECT count(event_crypto.encrypt_fields(jsonb_build_object('a', i, 'b', i), '{a,b}', 'mt:usage')) FROM generate_series(1, 10) i;
SELECT count(event_crypto.encrypt_value(to_jsonb(i), 'mt:usage')) FROM generate_series(1, 5) i;
SELECT version, encryptions FROM event_crypto.key_info WHERE key_id = 'mt:usage';
SELECT count(*) AS flushed_rows FROM event_crypto.key_usage WHERE key_id = 'mt:usage';
SELECT ((event_crypto.flush_usage())->>'encryptions')::int >= 25 AS flushed;  -- this database's counts, ours among them
SELECT key_id, version, encryptions FROM event_crypto.key_usage WHERE key_id = 'mt:usage';
SELECT version, encryptions FROM event_crypto.key_info WHERE key_id = 'mt:usage';  -- the same after the flush
-- rolled-back encryptions count too (their nonces were drawn)
BEGIN;
SELECT count(event_crypto.encrypt_value('1', 'mt:usage')) FROM generate_series(1, 4);
ROLLBACK;
SELECT encryptions FROM event_crypto.key_info WHERE key_id = 'mt:usage';
-- a flush that rolls back (with its transaction or its subtransaction) gives the counts it took back
-- (issue 12, item 7: they were taken out of shared memory and lost)
SELECT count(event_crypto.encrypt_value('1', 'mt:usage')) FROM generate_series(1, 3);
BEGIN;
SELECT (event_crypto.flush_usage())->'encryptions' AS flushed;
ROLLBACK;
SELECT encryptions FROM event_crypto.key_info WHERE key_id = 'mt:usage';
BEGIN;
SAVEPOINT s;
SELECT (event_crypto.flush_usage())->'encryptions' AS flushed;
ROLLBACK TO s;
COMMIT;
SELECT encryptions FROM event_crypto.key_info WHERE key_id = 'mt:usage';
SELECT (event_crypto.flush_usage()) - 'tracking' AS flushed;   -- what it wrote, and what was lost (nothing)
SELECT key_id, version, encryptions FROM event_crypto.key_usage WHERE key_id = 'mt:usage';
-- a transaction that moved counts into the catalog cannot be prepared (rolled back, they would be lost)
SELECT count(event_crypto.encrypt_value('1', 'mt:usage')) FROM generate_series(1, 2);
BEGIN;
SELECT (event_crypto.flush_usage())->'encryptions' AS flushed;
PREPARE TRANSACTION 'mt_flush';                               -- 0A000
SELECT encryptions FROM event_crypto.key_info WHERE key_id = 'mt:usage';
SELECT event_crypto.rotate_key('mt:usage');
SELECT event_crypto.encrypt_value('1', 'mt:usage') IS NOT NULL;
SELECT version, encryptions FROM event_crypto.key_info WHERE key_id = 'mt:usage' ORDER BY version;

-- Decryption auditing: per session and key id, the number of fields decrypted, one audit row per flush (no
-- row per decryption). Off by default; only a superuser can turn it on.
SELECT event_crypto.create_key('mt:read:a');
SELECT event_crypto.create_key('mt:read:b');
CREATE TABLE mt_read AS
SELECT i, event_crypto.encrypt_fields(jsonb_build_object('x', i, 'y', i), '{x,y}', CASE WHEN i <= 3 THEN 'mt:read:a' ELSE 'mt:read:b' END) AS p
FROM generate_series(1, 5) i;
SELECT count(event_crypto.decrypt_fields(p)) FROM mt_read;               -- not audited (off)
SET event_crypto.audit_decrypt = on;
SELECT count(event_crypto.decrypt_fields(p)) FROM mt_read;               -- 3 rows x 2 fields under a, 2 x 2 under b
SELECT count(event_crypto.decrypt_fields(p)) FROM mt_read WHERE i = 1;   -- 2 more under a
RESET event_crypto.audit_decrypt;
SELECT ((event_crypto.flush_usage())->>'decrypt_rows')::int AS decrypt_rows;
SELECT action, named_keys(key_ids, 'mt:read:a', 'mt:read:b') AS key_ids, details->'fields' AS fields, (details->>'pid')::int = pg_backend_pid() AS this_session,
       details ? 'session_start' AS has_start, actor = current_user AS actor_ok
FROM event_crypto.audit_log WHERE action = 'decrypt' ORDER BY 2;
CREATE ROLE mt_nobody;
SET ROLE mt_nobody;
SET event_crypto.audit_decrypt = off;                                   -- 42501 superuser only
RESET ROLE;
DROP ROLE mt_nobody;
DROP TABLE mt_read;

BEGIN;
-- Scheduled rotation
SELECT key_pattern, rotate_every FROM event_crypto.set_rotation('mt:sched:%', '1 day');
SELECT key_pattern, rotate_every FROM event_crypto.set_rotation('mt:sched:%', '2 days');   -- replaces
SELECT event_crypto.set_rotation('mt:sched:%', '0');                  -- 22023
SELECT event_crypto.set_rotation('mt:sched:%', '-1 day');             -- 22023
SELECT event_crypto.set_rotation('', '1 day');                        -- 22023
SELECT event_crypto.set_rotation(NULL, '1 day');                      -- 22004
SELECT count(event_crypto.create_key('mt:sched:' || i)) FROM generate_series(1, 3) i;
SELECT event_crypto.create_key('mt:other');
-- two of them (and the unrelated key) were created long ago
UPDATE event_crypto.keys SET created_at = now() - interval '3 days' WHERE key_id IN ('mt:sched:1', 'mt:sched:2', 'mt:other');
SELECT action, ok, CASE action WHEN 'flush_usage' THEN NULL ELSE detail - 'limit' END AS detail FROM event_crypto.run_maintenance();
SELECT key_id, version, status FROM event_crypto.key_info WHERE key_id LIKE 'mt:sched:%' OR key_id = 'mt:other' ORDER BY 1, 2;
SELECT action, named_keys(key_ids, 'mt:sched:1', 'mt:sched:2') AS key_ids FROM event_crypto.audit_log WHERE action = 'scheduled_rotation' ORDER BY id DESC LIMIT 1;
SELECT action, ok, CASE action WHEN 'flush_usage' THEN NULL ELSE detail - 'limit' END AS detail
FROM event_crypto.run_maintenance();                                 -- nothing due any more
SELECT event_crypto.set_rotation('mt:sched:%', NULL) IS NULL AS removed;
SELECT count(*) FROM event_crypto.rotation_policies;

-- Retention by key pattern
SELECT key_pattern, older_than FROM event_crypto.set_retention(key_pattern => 'mt:old:%', older_than => '30 days');
SELECT count(event_crypto.create_key('mt:old:' || i)) FROM generate_series(1, 3) i;
UPDATE event_crypto.keys SET created_at = now() - interval '40 days' WHERE key_id IN ('mt:old:1', 'mt:old:3');
SELECT policy_id IS NOT NULL AS has_policy, key_id, subject, reason LIKE 'key created %, more than % ago' AS reason_ok, shredded
FROM event_crypto.enforce_retention();                                -- dry run: nothing shredded
SELECT key_id, status FROM event_crypto.key_info WHERE key_id LIKE 'mt:old:%' ORDER BY 1;
SELECT key_id, shredded FROM event_crypto.enforce_retention(dry_run => false);
-- (shredded key ids are kept as their tombstones: issue 15)
SELECT named_key(key_id, 'mt:old:1', 'mt:old:2', 'mt:old:3') AS key_id, status FROM event_crypto.key_info
WHERE key_id LIKE 'mt:old:%' OR key_id IN (SELECT event_crypto.key_id_digest('mt:old:' || n) FROM generate_series(1, 3) n) ORDER BY 1;
SELECT count(*) FROM event_crypto.enforce_retention(false);            -- nothing left
SELECT action, named_keys(key_ids, 'mt:old:1', 'mt:old:3') AS key_ids, details FROM event_crypto.audit_log WHERE action = 'enforce_retention' ORDER BY id DESC LIMIT 1;

-- Retention per protected table: subjects without events for 90 days are forgotten
CREATE TABLE mt_events (id serial PRIMARY KEY, subject text, at timestamptz NOT NULL DEFAULT now(), payload jsonb,
                        email_idx text);
SELECT count(*) FROM event_crypto.protect('mt_events', 'payload', fields => ARRAY['email'], key_column => 'subject');
SELECT count(*) FROM event_crypto.add_blind_index('mt_events', 'payload', 'email', 'email_idx', 'mt:usage');
INSERT INTO mt_events (subject, at, payload) VALUES
    ('ann', now() - interval '200 days', '{"email": "ann@x.io"}'),
    ('ann', now() - interval '100 days', '{"email": "ann@x.io"}'),
    ('bob', now() - interval '200 days', '{"email": "bob@x.io"}'),
    ('bob', now() - interval '1 day', '{"email": "bob@x.io"}');
SELECT table_name, inactive_for, time_column FROM event_crypto.set_retention("table" => 'mt_events', inactive_for => '90 days', time_column => 'at');
SELECT key_id, subject, reason LIKE 'no event since %' AS reason_ok, shredded FROM event_crypto.enforce_retention();
SELECT action, ok, detail FROM event_crypto.run_maintenance() WHERE action = 'retention';
SELECT subject, event_crypto.decrypt_fields(payload)->>'email' AS email, email_idx IS NULL AS index_cleared
FROM mt_events ORDER BY id;
SELECT action, named_key(subject, 'subject:ann') AS subject FROM event_crypto.audit_log WHERE action IN ('forget_subject', 'enforce_retention') ORDER BY id DESC LIMIT 2;
SELECT event_crypto.drop_retention("table" => 'mt_events');
SELECT event_crypto.drop_retention("table" => 'mt_events');          -- already gone
-- bad policies
SELECT event_crypto.set_retention();                                 -- 22023 neither pattern nor table
SELECT event_crypto.set_retention('a%', 'mt_events', '1 day');        -- 22023 both
SELECT event_crypto.set_retention('a%');                             -- 22023 no interval
SELECT event_crypto.set_retention('a%', older_than => '-1 day');      -- 22023
SELECT event_crypto.set_retention('a%', inactive_for => '1 day');     -- 22023 inactivity needs a table
SELECT event_crypto.set_retention("table" => 'mt_events', inactive_for => '1 day');                       -- 22023 no time column
SELECT event_crypto.set_retention("table" => 'mt_events', inactive_for => '1 day', time_column => 'nope'); -- 42703
SELECT event_crypto.set_retention("table" => 'mt_events', inactive_for => '1 day', time_column => 'subject'); -- 42703 not a time
CREATE TABLE mt_plain (id int, at timestamptz);
SELECT event_crypto.set_retention("table" => 'mt_plain', older_than => '1 day');   -- 55000 not protected per subject
SELECT event_crypto.enforce_retention(NULL);                          -- 22004
SELECT event_crypto.drop_retention();                                 -- 22023
SELECT event_crypto.maintenance_action('shred_key');                  -- 22023 not a maintenance action
ROLLBACK;

-- A failing action is reported in its row; the others still run.
BEGIN;
SELECT event_crypto.create_key('mt:broken');
UPDATE event_crypto.keys SET wrapped_index_key = wrapped_key WHERE key_id = 'mt:broken';   -- damaged catalog row
SELECT key_pattern FROM event_crypto.set_rotation('mt:broken', '1 second');
UPDATE event_crypto.keys SET created_at = now() - interval '1 hour' WHERE key_id = 'mt:broken';
SELECT action, ok, CASE WHEN action = 'flush_usage' THEN NULL WHEN ok THEN detail - 'limit' ELSE detail->'skipped_keys' END AS detail
FROM event_crypto.run_maintenance();
ROLLBACK;
