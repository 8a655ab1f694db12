-- After ALTER EXTENSION event_crypto UPDATE from 0.2.0: the data and every kind of object 0.2.0 made keep working
-- under the new release (later releases add their own checks here).
\set ON_ERROR_STOP on
\set VERBOSITY terse
SELECT extversion = (SELECT default_version FROM pg_available_extensions WHERE name = 'event_crypto') AS current
FROM pg_extension WHERE extname = 'event_crypto';
-- 0.2.0 wrote format 1 envelopes: after the update each encrypted row needs re-encryption (to format 2)
SELECT id, left(payload->>'email', 5) AS prefix, event_crypto.needs_reencryption(payload) FROM u2_events ORDER BY id;
-- the partitioned table: a new partition is protected, new subjects get keys, envelopes stay bound to their rows
CREATE TABLE u2_events_2028 PARTITION OF u2_events FOR VALUES FROM ('2028-01-01') TO ('2029-01-01');
INSERT INTO u2_events (stream, subject, at, payload) VALUES
    ('e', 'erin', '2028-02-01', '{"email": "Erin@x.io"}'),
    ('a', 'alice', '2028-02-02', '{"email": "alice-2028@x.io", "card": {"number": "5500"}}');
SELECT id, stream, subject, at, payload, email_idx = event_crypto.blind_index('erin@x.io', 'u2:idx', 'lower') AS erin_idx
FROM u2_events_decrypted WHERE at >= '2028-01-01' ORDER BY id;
\set ON_ERROR_STOP off
INSERT INTO u2_events (stream, subject, at, payload) SELECT 'b', 'bob', '2028-03-01', payload FROM u2_events WHERE id = 2;
\set ON_ERROR_STOP on
-- forgetting alice reaches every partition; x%y#2 is found under its escaped key id
SELECT (event_crypto.forget_subject('alice', 'u2:user:'))->'key_ids' AS alice;
SELECT (event_crypto.forget_subject('x%y#2', 'u2:user:'))->'key_ids' AS odd;
SELECT id, subject, payload->>'email' AS email FROM u2_events_decrypted ORDER BY id;
-- the disabled version comes back, and rows re-encrypt under a new version of the one key
SELECT event_crypto.cancel_retire('u2:retiring', 1) IS NOT NULL AS cancelled;
SELECT status FROM event_crypto.key_info WHERE key_id = 'u2:retiring' AND version = 1;
SELECT event_crypto.rotate_key('u2:fixed');
SELECT rows_scanned, rows_rewritten, rows_invalid FROM event_crypto.reencrypt_batch('u2_json', 'payload', 100);
SELECT id, payload::text FROM u2_json_decrypted ORDER BY id;
SELECT (event_crypto.retire_key_version('u2:fixed', 1))->'disabled' AS fixed_v1_disabled;
-- the operators' views and the maintenance record go on from 0.2.0's
SELECT count(*) FILTER (WHERE ok) AS ok FROM event_crypto.run_maintenance();
SELECT runs, last_ok, last_not_ok_actions FROM event_crypto.stats_maintenance;
SELECT key_id, version, status, encryptions, decryptions > 0 AS read FROM event_crypto.stats_key_versions
WHERE key_id IN ('u2:fixed', 'u2:user:erin') ORDER BY 1, 2;
SELECT status, key_versions FROM event_crypto.stats_keys;
-- the chain goes on from 0.2.0's rows
SELECT ok, problem FROM event_crypto.verify_audit_log();
SELECT head_seq = (SELECT max(seq) FROM event_crypto.audit_log) AS head_is_newest FROM event_crypto.stats_audit;
-- 0.3.0 (issue 15): the update kept the key ids 0.2.0 shredded whole as tombstones (under their keyed digests), named
-- every key id and subject of the audit log by digest, and re-sealed the chain, saying so in a digest_catalog row
-- with the old head; dave stays forgotten (his second generation, made when he came back, is live and named)
SELECT count(*) AS clear_shredded FROM event_crypto.keys WHERE key_id IN ('u2:gone', 'u2:user:dave');
SELECT count(*) AS tombstones FROM event_crypto.keys
WHERE key_id IN (event_crypto.key_id_digest('u2:gone'), event_crypto.key_id_digest('u2:user:dave')) AND status = 'shredded';
SELECT event_crypto.was_forgotten('dave', 'u2:user:') AS dave, event_crypto.was_forgotten('bob', 'u2:user:') AS bob;
SELECT count(*) AS rows_naming_dave FROM event_crypto.audit_log
WHERE subject = 'dave' OR key_ids && '{u2:user:dave,u2:gone}' OR details::text ~ '"(dave|u2:user:dave|u2:gone)"';
SELECT count(*) AS rows_with_clear_key_ids FROM event_crypto.audit_log, unnest(key_ids) k WHERE left(k, 1) <> E'\x1A';
SELECT action, count(*) FROM event_crypto.audit_log WHERE subject = event_crypto.key_id_digest('u2:user:dave') GROUP BY 1 ORDER BY 1;
SELECT details->'old_head_seq' AS old_head_seq, length(details->>'old_head_hash') AS old_hash_length, details->'tombstones' AS tombstones,
       (details->>'audit_rows_rewritten')::int > 0 AS rewritten, details->'resealed_from_seq' AS from_seq
FROM event_crypto.audit_log WHERE action = 'digest_catalog';
SELECT count(*) AS clear_usage FROM event_crypto.key_usage WHERE key_id = 'u2:user:dave';
