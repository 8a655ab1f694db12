-- What every encrypted row reads as: compared before and after the upgrade.
\set ON_ERROR_STOP on
SELECT 'manual', id, event_crypto.decrypt_fields(p, ctx) FROM up_manual ORDER BY id;
SELECT 'events', id, subject, event_crypto.decrypt_fields(payload, stream), email_idx FROM up_events ORDER BY id;
SELECT 'fixed', id, event_crypto.decrypt_fields(payload) FROM up_fixed ORDER BY id;
SELECT 'keys', key_id, version, algorithm, status, has_key_material FROM event_crypto.key_info ORDER BY 2, 3;
SELECT 'audit', ok, rows_checked FROM event_crypto.verify_audit_log();
