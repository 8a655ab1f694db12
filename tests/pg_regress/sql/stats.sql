-- The operators' views (docs/operations.md): key versions by status, usage and nonce budget per key version, shreds,
-- the last maintenance run (recorded by run_maintenance()), the audit chain head. Run in a database of their own,
-- so that every figure is this file's own.
\set VERBOSITY sqlstate
CREATE DATABASE ec_stats;
\c ec_stats
SET client_min_messages = warning;
CREATE EXTENSION event_crypto;
RESET client_min_messages;

-- Their columns: no bytea anywhere (no key material), numbers as numbers.
SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) AS type
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'event_crypto' AND c.relname LIKE 'stats\_%' AND a.attnum > 0 ORDER BY 1, 2;

-- Before anything: a row per status, zeros; no shred, no run, no audit row.
SELECT * FROM event_crypto.stats_keys;
SELECT * FROM event_crypto.stats_shreds;
SELECT runs, runs_not_ok, last_ok, last_not_ok_actions, last_result FROM event_crypto.stats_maintenance;
SELECT * FROM event_crypto.stats_audit;

-- Keys in every status: st:a used 7 times, st:b rotated and its v1 retired (disabled), st:c rotated and shredded
-- (two versions, one key id), st:d rotated and its v1 destroyed by a forced retirement.
SELECT event_crypto.create_key('st:a'), event_crypto.create_key('st:b', 'chacha20-poly1305'),
       event_crypto.create_key('st:c'), event_crypto.create_key('st:d');
SELECT count(event_crypto.encrypt_value(to_jsonb(i), 'st:a')) FROM generate_series(1, 7) i;
SELECT event_crypto.encrypt_value('"old"', 'st:b') AS b_v1 \gset
SELECT event_crypto.rotate_key('st:b'), event_crypto.rotate_key('st:c'), event_crypto.rotate_key('st:d');
SELECT event_crypto.retire_key_version('st:b', 1)->>'disabled' IS NOT NULL AS b_v1_disabled;
SELECT event_crypto.retire_key_version('st:d', 1, force => true)->>'destroyed' AS d_v1_destroyed;
SELECT event_crypto.decrypt_value(:'b_v1');                      -- null: v1 is disabled (the attempt is counted)
-- decryptions are counted per version: 3 values of st:a read twice, 1 of st:b v2 once
CREATE TEMP TABLE st_values AS SELECT event_crypto.encrypt_value(to_jsonb(i), 'st:a') AS v FROM generate_series(1, 3) i;
SELECT count(event_crypto.decrypt_value(v)) FROM st_values, generate_series(1, 2);
SELECT event_crypto.decrypt_value(event_crypto.encrypt_value('"new"', 'st:b'));
SELECT event_crypto.shred_key('st:c');
SELECT * FROM event_crypto.stats_keys;
-- usage per version: 10 encryptions and 6 decryptions of st:a still pending in shared memory, 1 encryption of
-- st:b v1 and the attempt under it, 1 encryption and 1 decryption of st:b v2; the budget is
-- relative to event_crypto.rotate_after_encryptions
-- (st:c, shredded whole, is kept under its digest: issue 15)
SELECT CASE WHEN key_id = event_crypto.key_id_digest('st:c') THEN 'digest(st:c)' ELSE key_id END AS key_id, version, status, algorithm, encryptions, pending_encryptions, decryptions, pending_decryptions,
       disabled_decryptions, rotate_after_encryptions = current_setting('event_crypto.rotate_after_encryptions')::numeric::int8 AS limit_is_setting,
       nonce_budget_used_pct = round(100.0 * encryptions / rotate_after_encryptions, 3) AS pct_is_share
FROM event_crypto.stats_key_versions ORDER BY key_id, version;
SELECT shredded_key_ids, last_shred_at = (SELECT max(shredded_at) FROM event_crypto.key_info WHERE key_id = event_crypto.key_id_digest('st:c')) AS last_shred_is_c,
       destroyed_versions, last_destroyed_at = (SELECT shredded_at FROM event_crypto.key_info WHERE key_id = 'st:d' AND version = 1) AS last_destroyed_is_d
FROM event_crypto.stats_shreds;
-- the audit chain head is the newest sealed row
SELECT head_seq = (SELECT max(seq) FROM event_crypto.audit_log) AS head_is_newest,
       head_hash_prefix = (SELECT left(encode(row_hash, 'hex'), 16) FROM event_crypto.audit_log ORDER BY seq DESC LIMIT 1) AS prefix_of_newest,
       length(head_hash_prefix) AS prefix_length, head_sealed_at IS NOT NULL AS sealed
FROM event_crypto.stats_audit;

-- A maintenance run is recorded: what it returned, by whom, how; the counts move from pending to flushed (the
-- attempt under the disabled version with them).
SET ROLE event_crypto_admin;
SELECT action, ok FROM event_crypto.run_maintenance();
RESET ROLE;
SELECT runs, runs_not_ok, last_ok, last_not_ok_actions, last_run_by, last_run_via,
       last_started_at <= last_finished_at AS ordered, last_duration_seconds >= 0 AS duration,
       last_ok_at = last_finished_at AS ok_at_is_last, last_not_ok_at,
       jsonb_path_query_array(last_result, '$[*].action') AS actions,
       last_result->0->'detail'->'encryptions' AS flushed, last_result->0->'detail'->'decryptions' AS flushed_decryptions
FROM event_crypto.stats_maintenance;
SELECT key_id, version, encryptions, pending_encryptions, decryptions, pending_decryptions, disabled_decryptions
FROM event_crypto.stats_key_versions WHERE encryptions > 0 OR decryptions > 0 OR disabled_decryptions > 0 ORDER BY key_id, version;
SELECT key_id, version, encryptions, decryptions, disabled_decryptions FROM event_crypto.key_usage ORDER BY 1, 2;
SELECT status, key_versions, encryptions, pending_encryptions, decryptions, disabled_decryptions FROM event_crypto.stats_keys;

-- A run with an action that is not ok (retention: the role running it may not read a policy's table) counts as
-- not ok and names the action; a later ok run keeps when that was, and the counters add up.
CREATE TABLE st_events (subject text, at timestamptz DEFAULT now(), payload jsonb);
SELECT count(*) FROM event_crypto.protect('st_events', 'payload', fields => '{email}', key_column => 'subject');
SELECT count(*) FROM event_crypto.set_retention("table" => 'st_events', inactive_for => '1 day', time_column => 'at');
SET ROLE event_crypto_admin;
SELECT action, ok FROM event_crypto.run_maintenance() WHERE NOT ok;
RESET ROLE;
SELECT runs, runs_not_ok, last_ok, last_not_ok_actions, last_not_ok_at = last_finished_at AS not_ok_at_is_last,
       last_ok_at < last_not_ok_at AS ok_before,
       (SELECT r->'detail'->'skipped'->0->>'reason' FROM jsonb_array_elements(last_result) r WHERE r->>'action' = 'retention') AS reason
FROM event_crypto.stats_maintenance;
SELECT count(*) FILTER (WHERE ok) AS ok FROM event_crypto.run_maintenance();   -- as a superuser: every action ok
SELECT runs, runs_not_ok, last_ok, last_not_ok_actions, last_run_by, last_ok_at = last_finished_at AS ok_at_is_last,
       last_not_ok_at < last_ok_at AS not_ok_before
FROM event_crypto.stats_maintenance;
-- a run that cannot write (a read-only transaction: every action fails with 25006) is not recorded
BEGIN READ ONLY;
SELECT count(*) FILTER (WHERE NOT ok) AS not_ok FROM event_crypto.run_maintenance();
COMMIT;
SELECT runs FROM event_crypto.stats_maintenance;
-- a run that rolls back leaves no record either
BEGIN;
SELECT count(*) FROM event_crypto.run_maintenance();
ROLLBACK;
SELECT runs FROM event_crypto.stats_maintenance;
-- the record is written by run_maintenance() only
SET ROLE event_crypto_admin;
UPDATE event_crypto.maintenance_status SET last_ok = true;       -- 42501
INSERT INTO event_crypto.maintenance_status VALUES (true, 1, 0, now(), now(), true, 'x', 'x', '[]');  -- 42501
-- the admin role reads every view; the other roles none
SELECT (SELECT count(*) FROM event_crypto.stats_keys) AS statuses, (SELECT count(*) FROM event_crypto.stats_key_versions) AS versions,
       (SELECT count(*) FROM event_crypto.stats_shreds) AS shreds, (SELECT count(*) FROM event_crypto.stats_maintenance) AS maintenance,
       (SELECT count(*) FROM event_crypto.stats_audit) AS audit;
RESET ROLE;
SET ROLE event_crypto_encryptor;
SELECT count(*) FROM event_crypto.stats_keys;                    -- 42501
SELECT count(*) FROM event_crypto.stats_maintenance;             -- 42501
RESET ROLE;
SET ROLE event_crypto_decryptor;
SELECT count(*) FROM event_crypto.stats_key_versions;            -- 42501
RESET ROLE;


-- Decryption counts are statistics: a transaction that reads under more key versions than the shared table takes
-- for reads (half of a database's share) writes nothing; the next flush reports what was not counted per version
-- and stays ok. 2,100 subjects' keys, each read once in one read-only transaction.
SELECT event_crypto.flush_usage() IS NOT NULL AS flushed;
SELECT count(event_crypto.create_key('st:many:' || i)) FROM generate_series(1, 2100) i;
CREATE TEMP TABLE st_many AS
    SELECT i, event_crypto.encrypt_value(to_jsonb(i), 'st:many:' || i) AS v FROM generate_series(1, 2100) i;
-- (a transaction that encrypted under more than 512 key versions wrote its counts into key_usage at commit)
SELECT count(*) AS counted_versions FROM event_crypto.key_usage WHERE key_id LIKE 'st:many:%' AND encryptions = 1;
BEGIN READ ONLY;
SELECT count(event_crypto.decrypt_value(v)) FROM st_many;
COMMIT;
SELECT sum(pending_decryptions) < 2100 AS some_not_counted, sum(pending_decryptions) >= 1000 AS most_counted
FROM event_crypto.stats_key_versions WHERE key_id LIKE 'st:many:%';
SELECT f->'decryptions' IS NOT NULL AS has_decryptions,
       (f->>'decryptions')::int + (f->>'decryptions_not_counted')::int AS read_total,
       f ? 'skipped' AS skipped, f->'lost' AS lost
FROM (SELECT event_crypto.flush_usage() AS f) r;
SELECT count(*) AS audit_rows FROM event_crypto.audit_log WHERE action = 'usage_lost';

\c event_crypto_regress
DROP DATABASE ec_stats;
