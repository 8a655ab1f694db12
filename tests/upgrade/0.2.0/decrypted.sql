-- What every encrypted row of release 0.2.0's data reads as: compared before and after the upgrade.
\set ON_ERROR_STOP on
SELECT 'manual', id, event_crypto.decrypt_fields(p, ctx) FROM u2_manual ORDER BY id;
SELECT 'events', id, stream, subject, at, payload, email_idx FROM u2_events_decrypted ORDER BY id;
SELECT 'events-stored', tableoid::regclass, id, (payload->>'email') LIKE '$ec%' AS encrypted FROM u2_events ORDER BY id;
SELECT 'json', id, payload::text FROM u2_json_decrypted ORDER BY id;
-- (0.3.0 keeps a key id shredded whole under its keyed digest, issue 15: such key ids are shown as one label, which
-- reads the same before and after the update; their versions, algorithms and status are compared as before)
SELECT 'keys', CASE WHEN pg_catalog.bool_and(status = 'shredded') OVER (PARTITION BY key_id) THEN '(shredded whole)' ELSE key_id END AS key_id,
       version, algorithm, status, has_key_material, destroy_after IS NOT NULL FROM event_crypto.key_info ORDER BY 2, 3, 4;
SELECT 'usage', CASE WHEN NOT EXISTS (SELECT 1 FROM event_crypto.keys k WHERE k.key_id = u.key_id AND k.status <> 'shredded')
                     THEN '(shredded whole)' ELSE u.key_id END AS key_id, version, encryptions FROM event_crypto.key_usage u ORDER BY 2, 3, 4;
SELECT 'maintenance', runs, last_ok FROM event_crypto.stats_maintenance;
-- (the update to 0.3.0 re-seals the chain once and records that in a digest_catalog row, not counted here)
SELECT 'audit', ok, rows_checked - (SELECT count(*) FROM event_crypto.audit_log WHERE action = 'digest_catalog') FROM event_crypto.verify_audit_log();
