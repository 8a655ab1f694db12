-- Read-only access to event_crypto's figures for a monitoring role (postgres_exporter, see
-- docs/operations.md): the stats views queries.yaml reads, and the three functions they and queries.yaml call.
-- Nothing here reads, writes or shows key material, and the role gets none of event_crypto's three roles. Key ids
-- (subject ids) stay out of the views it reads (stats_key_versions, which lists them, is left out); only
-- usage_pending_counts(), which stats_keys calls, names the key versions that have counts not flushed yet.
-- Run in the database where the extension is installed, as its owner (a superuser), after
--   CREATE ROLE postgres_exporter LOGIN;      -- or your exporter's role, with its password or certificate
-- replacing postgres_exporter below if your role has another name.
GRANT USAGE ON SCHEMA event_crypto TO postgres_exporter;
GRANT SELECT ON event_crypto.stats_keys, event_crypto.stats_shreds, event_crypto.stats_maintenance,
                event_crypto.stats_audit
    TO postgres_exporter;
GRANT EXECUTE ON FUNCTION event_crypto.usage_pending_counts(), event_crypto.usage_tracking(),
                          event_crypto.master_key_status()
    TO postgres_exporter;
