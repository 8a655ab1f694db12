-- What every encrypted row reads as: compared before and after the upgrade.
\set ON_ERROR_STOP on
SELECT 'manual', id, event_crypto.decrypt_fields(p, ctx) FROM up_manual ORDER BY id;
SELECT 'events', id, subject, event_crypto.decrypt_fields(payload, stream), email_idx FROM up_events ORDER BY id;
SELECT 'fixed', id, event_crypto.decrypt_fields(payload) FROM up_fixed ORDER BY id;
-- (0.3.0 keeps a key id shredded whole under its keyed digest, issue 15: such key ids are shown as one label, which
-- reads the same before and after the update; their versions, algorithms and status are compared as before)
SELECT 'keys', CASE WHEN pg_catalog.bool_and(status = 'shredded') OVER (PARTITION BY key_id) THEN '(shredded whole)' ELSE key_id END AS key_id,
       version, algorithm, status, has_key_material FROM event_crypto.key_info ORDER BY 2, 3, 4;
-- (the update to 0.3.0 re-seals the chain once and records that in a digest_catalog row, not counted here)
SELECT 'audit', ok, rows_checked - (SELECT count(*) FROM event_crypto.audit_log WHERE action = 'digest_catalog') FROM event_crypto.verify_audit_log();
