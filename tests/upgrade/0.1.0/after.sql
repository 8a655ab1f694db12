-- After ALTER EXTENSION event_crypto UPDATE: what the new release adds works on the old data.
\set ON_ERROR_STOP on
\set VERBOSITY terse
SELECT extversion = (SELECT default_version FROM pg_available_extensions WHERE name = 'event_crypto') AS current
FROM pg_extension WHERE extname = 'event_crypto';
-- the key ids 0.1.0 named ambiguously are recorded with their owners; "subject:dave#2" is dave's second generation
SELECT key_id, key_prefix, subject, generation FROM event_crypto.legacy_subject_keys ORDER BY 1;
-- the configuration: the tampered view name is no longer recorded; the real view is
SELECT table_name, column_name, decrypted_view FROM event_crypto.protected_columns ORDER BY 1;
-- the decrypted views: re-created to decrypt each row under its own key; the one whose record was tampered with is
-- refused (its name is taken by a view that is not recorded as its own)
SELECT table_name, column_name, decrypted_view, refreshed, reason FROM event_crypto.refresh_decrypted_views();
SELECT id, subject, payload FROM up_events_decrypted ORDER BY id;
-- binding is enforced on the old table: alice's envelope in bob's row is refused
\set ON_ERROR_STOP off
INSERT INTO up_events (stream, subject, type, payload) SELECT 's2', 'bob', 'Created', payload FROM up_events WHERE id = 1;
\set ON_ERROR_STOP on
-- a replay of an old row is kept (its envelopes are its own)
INSERT INTO up_events (stream, subject, type, payload) SELECT stream, subject, type, payload FROM up_events WHERE id = 1;
-- legacy subjects: forgetting eve does not touch "eve#2"; forgetting "carl#2" and "50%off" finds their 0.1.0 keys
SELECT (event_crypto.forget_subject('eve'))->'key_ids' AS eve;
SELECT (event_crypto.forget_subject('carl#2'))->'key_ids' AS carl_2;
INSERT INTO up_events (stream, subject, type, payload) VALUES ('s4', '50%off', 'Created', '{"email": "fifty-new@x.io"}');
SELECT (event_crypto.forget_subject('50%off'))->'key_ids' AS fifty;
SELECT (event_crypto.forget_subject('dave'))->'key_ids' AS dave;
SELECT id, subject, payload->>'email' AS email FROM up_events_decrypted ORDER BY id;
-- old envelopes re-encrypt under the new version (and format 1 ones under a current version move to format 2),
-- then the old version retires
SELECT rows_scanned, rows_rewritten, rows_invalid FROM event_crypto.reencrypt_batch('up_manual', 'p', 100, 'ctx');
SELECT rows_scanned, rows_rewritten, rows_invalid FROM event_crypto.reencrypt_batch('up_manual', 'p', 100, 'ctx');
SELECT (event_crypto.retire_key_version('up:aes', 1))->'disabled' AS v1_disabled;
UPDATE event_crypto.keys SET destroy_after = now() WHERE key_id = 'up:aes' AND status = 'disabled';
SELECT event_crypto.maintenance_action('retire') AS retired;
-- the chain goes on from the 0.1.0 rows, sealed by the new code
SELECT ok, problem FROM event_crypto.verify_audit_log();
-- (0.3.0 names the key ids of the old rows by digest: issue 15)
SELECT count(*) > 0 AS old_rows_kept FROM event_crypto.audit_log WHERE action = 'create_key' AND key_ids = ARRAY[event_crypto.key_id_digest('up:aes')];
SELECT max(seq) = (SELECT max(seq) FROM event_crypto.audit_head) AS head_current FROM event_crypto.audit_log;
-- the operators' views read the upgraded catalog, and the maintenance run records itself (issue 14)
SELECT status, key_versions FROM event_crypto.stats_keys;
SELECT shredded_key_ids, last_shred_at IS NOT NULL AS shred_time, destroyed_versions FROM event_crypto.stats_shreds;
SELECT runs FROM event_crypto.stats_maintenance;
SELECT count(*) AS actions FROM event_crypto.run_maintenance();
SELECT runs, last_ok, last_not_ok_actions FROM event_crypto.stats_maintenance;
SELECT head_seq = (SELECT max(seq) FROM event_crypto.audit_log) AS head_is_newest FROM event_crypto.stats_audit;
-- 0.3.0 (issue 15): the update kept the key ids 0.1.0 shredded whole as tombstones (under their keyed digests) and
-- named every key id and subject of the audit log by digest, re-sealing the chain (a digest_catalog row records the
-- old head)
SELECT count(*) AS clear_shredded FROM event_crypto.keys WHERE key_id IN ('up:gone', 'subject:dave');
SELECT count(*) AS tombstones FROM event_crypto.keys
WHERE key_id IN (event_crypto.key_id_digest('up:gone'), event_crypto.key_id_digest('subject:dave')) AND status = 'shredded';
SELECT event_crypto.was_forgotten('dave') AS dave, event_crypto.was_forgotten('bob') AS bob;
SELECT count(*) AS rows_naming_dave FROM event_crypto.audit_log
WHERE subject = 'dave' OR key_ids && '{subject:dave,up:gone}' OR details::text ~ '"(dave|subject:dave|up:gone)"';
SELECT count(*) AS rows_with_clear_key_ids FROM event_crypto.audit_log, unnest(key_ids) k WHERE left(k, 1) <> E'\x1A';
SELECT count(*) AS digest_catalog_rows FROM event_crypto.audit_log WHERE action = 'digest_catalog';
