-- Issue 12: keys that cannot be rotated never use up a maintenance run's cap of 1,000 key ids, nor stop the others.
-- 1,200 due key ids cannot be rotated: 600 name a master key that is not in the ring (their master key left it, or
-- the catalog was restored elsewhere), 600 have damaged wrapped keys. They sort before the one key id that can be
-- rotated, for both actions; each run still rotates it, and reports the others as skipped (counted, the first of
-- them named with the reason), never as done.
\set VERBOSITY sqlstate
BEGIN;
SELECT count(event_crypto.create_key('rs:a:gone:' || lpad(i::text, 4, '0'))) FROM generate_series(1, 600) i;
SELECT count(event_crypto.create_key('rs:a:bad:' || lpad(i::text, 4, '0'))) FROM generate_series(1, 600) i;
SELECT event_crypto.create_key('rs:z:used');                       -- past the usage limit, sorts last
SELECT event_crypto.create_key('rs:z:old');                        -- due by schedule, the youngest of the due keys
UPDATE event_crypto.keys SET master_key_id = 'feedfacefeedface' WHERE key_id LIKE 'rs:a:gone:%';
UPDATE event_crypto.keys SET wrapped_index_key = wrapped_key WHERE key_id LIKE 'rs:a:bad:%';
-- usage: every one of them (and rs:z:used) reached the limit (2^31 by default)
INSERT INTO event_crypto.key_usage (key_id, version, encryptions)
SELECT key_id, version, 2147483648 FROM event_crypto.keys WHERE key_id LIKE 'rs:a:%' OR key_id = 'rs:z:used';
-- schedule: every one of them is older than a day (the keys of the lost master key the oldest), rs:z:old the youngest
SELECT key_pattern, rotate_every FROM event_crypto.set_rotation('rs:%', '1 day');
UPDATE event_crypto.keys SET created_at = now() - interval '3 days' WHERE key_id LIKE 'rs:a:bad:%';
UPDATE event_crypto.keys SET created_at = now() - interval '4 days' WHERE key_id LIKE 'rs:a:gone:%';
UPDATE event_crypto.keys SET created_at = now() - interval '2 days' WHERE key_id = 'rs:z:old';
SELECT action, ok, detail - 'skipped_keys' - 'limit' AS counts,
       (SELECT count(*) FROM jsonb_object_keys(detail->'skipped_keys')) AS named
FROM event_crypto.run_maintenance() WHERE action LIKE '%rotation';
SELECT key_id, version, status FROM event_crypto.key_info WHERE key_id LIKE 'rs:z:%' ORDER BY 1, 2;
SELECT count(*) AS unrotated FROM event_crypto.key_info WHERE key_id LIKE 'rs:a:%' AND version = 1 AND status = 'active';
-- the reasons, for the first 20 in each action's order: the master key that is missing (the oldest, for the
-- schedule), the wrapped key that does not unwrap (by key id, for usage)
SELECT min(key) AS first, max(key) AS last, count(*), min(value) = max(value) AS same, min(value) AS reason
FROM event_crypto.maintenance_action('scheduled_rotation') d, jsonb_each_text(d->'skipped_keys');
SELECT min(key) AS first, max(key) AS last, count(*), min(value) AS reason
FROM event_crypto.maintenance_action('usage_rotation') d, jsonb_each_text(d->'skipped_keys');
-- the audit row says what was rotated, and counts what was skipped
SELECT action, named_keys(key_ids, 'rs:z:used', 'rs:z:old') AS key_ids, details->'rotated' AS rotated, details->'skipped' AS skipped
FROM event_crypto.audit_log WHERE action IN ('usage_rotation', 'scheduled_rotation') AND xact_id = pg_current_xact_id()
ORDER BY id LIMIT 2;
ROLLBACK;

-- The cap counts rotations: 1,001 rotatable due key ids take two runs, the first says more are due.
BEGIN;
SELECT count(event_crypto.create_key('rs:many:' || lpad(i::text, 4, '0'))) FROM generate_series(1, 1001) i;
SELECT key_pattern FROM event_crypto.set_rotation('rs:many:%', '1 hour');
UPDATE event_crypto.keys SET created_at = now() - interval '2 hours' WHERE key_id LIKE 'rs:many:%';
SELECT event_crypto.maintenance_action('scheduled_rotation');
SELECT event_crypto.maintenance_action('scheduled_rotation');
SELECT event_crypto.maintenance_action('scheduled_rotation');
SELECT count(*) FROM event_crypto.key_info WHERE key_id LIKE 'rs:many:%' AND version = 2 AND status = 'active';
ROLLBACK;

-- A rotation that fails past that first look (here the newest version, whose blind-index root a rotation carries
-- over, is damaged, while the active one is not) fails in its own subtransaction: skipped, reported, the others go on.
BEGIN;
SELECT event_crypto.create_key('rs:odd');
SELECT event_crypto.rotate_key('rs:odd');
SELECT event_crypto.create_key('rs:plain');
UPDATE event_crypto.keys SET status = 'retired' WHERE key_id = 'rs:odd' AND version = 2;
UPDATE event_crypto.keys SET status = 'active' WHERE key_id = 'rs:odd' AND version = 1;
UPDATE event_crypto.keys SET wrapped_index_key = wrapped_key WHERE key_id = 'rs:odd' AND version = 2;
SELECT key_pattern FROM event_crypto.set_rotation('rs:%', '1 hour');
UPDATE event_crypto.keys SET created_at = now() - interval '2 hours' WHERE key_id IN ('rs:odd', 'rs:plain');
SELECT event_crypto.maintenance_action('scheduled_rotation');
SELECT key_id, version, status FROM event_crypto.key_info WHERE key_id IN ('rs:odd', 'rs:plain') ORDER BY 1, 2;
ROLLBACK;
