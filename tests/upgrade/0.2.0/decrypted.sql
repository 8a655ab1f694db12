-- What every encrypted row of release 0.2.0's data reads as: compared before and after the upgrade.
\set ON_ERROR_STOP on
SELECT 'manual', id, event_crypto.decrypt_fields(p, ctx) FROM u2_manual ORDER BY id;
SELECT 'events', id, stream, subject, at, payload, email_idx FROM u2_events_decrypted ORDER BY id;
SELECT 'events-stored', tableoid::regclass, id, (payload->>'email') LIKE '$ec%' AS encrypted FROM u2_events ORDER BY id;
SELECT 'json', id, payload::text FROM u2_json_decrypted ORDER BY id;
SELECT 'keys', key_id, version, algorithm, status, has_key_material, destroy_after IS NOT NULL FROM event_crypto.key_info ORDER BY 2, 3;
SELECT 'usage', key_id, version, encryptions FROM event_crypto.key_usage ORDER BY 2, 3;
SELECT 'maintenance', runs, last_ok FROM event_crypto.stats_maintenance;
SELECT 'audit', ok, rows_checked FROM event_crypto.verify_audit_log();
