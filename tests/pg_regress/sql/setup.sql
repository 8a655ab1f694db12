-- Runs first: installs the extension once for the whole regress database.
CREATE EXTENSION event_crypto;
SELECT extname, extrelocatable, nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE extname = 'event_crypto';
SELECT length(event_crypto.master_key_id()) AS master_key_id_length;
