-- Runs last: cache-invalidation triggers and every grant. Nothing is left to PUBLIC.
-- Cache invalidation. A new key id needs none (nothing can have cached a key that did not exist); every other
-- change to the key catalog does, and so does any change to the protection configuration.
CREATE TRIGGER keys_changed AFTER UPDATE OR DELETE OR TRUNCATE ON event_crypto.keys
    FOR EACH STATEMENT EXECUTE FUNCTION event_crypto.catalog_changed();
CREATE TRIGGER protected_columns_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON event_crypto.protected_columns
    FOR EACH STATEMENT EXECUTE FUNCTION event_crypto.catalog_changed();
CREATE TRIGGER blind_indexes_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON event_crypto.blind_indexes
    FOR EACH STATEMENT EXECUTE FUNCTION event_crypto.catalog_changed();
-- Rows that arrive by logical replication must invalidate too (a shred replicated from the publisher has to reach
-- the subscriber's cached keys). Apply workers run as session_replication_role = replica and fire row triggers
-- only (statement triggers just for TRUNCATE), so: the statement triggers fire always, and a row trigger fires in
-- replica mode.
ALTER TABLE event_crypto.keys ENABLE ALWAYS TRIGGER keys_changed;
ALTER TABLE event_crypto.protected_columns ENABLE ALWAYS TRIGGER protected_columns_changed;
ALTER TABLE event_crypto.blind_indexes ENABLE ALWAYS TRIGGER blind_indexes_changed;
CREATE TRIGGER keys_replicated AFTER INSERT OR UPDATE OR DELETE ON event_crypto.keys
    FOR EACH ROW EXECUTE FUNCTION event_crypto.catalog_changed();
CREATE TRIGGER protected_columns_replicated AFTER INSERT OR UPDATE OR DELETE ON event_crypto.protected_columns
    FOR EACH ROW EXECUTE FUNCTION event_crypto.catalog_changed();
CREATE TRIGGER blind_indexes_replicated AFTER INSERT OR UPDATE OR DELETE ON event_crypto.blind_indexes
    FOR EACH ROW EXECUTE FUNCTION event_crypto.catalog_changed();
ALTER TABLE event_crypto.keys ENABLE REPLICA TRIGGER keys_replicated;
ALTER TABLE event_crypto.protected_columns ENABLE REPLICA TRIGGER protected_columns_replicated;
ALTER TABLE event_crypto.blind_indexes ENABLE REPLICA TRIGGER blind_indexes_replicated;

REVOKE ALL ON ALL TABLES IN SCHEMA event_crypto FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA event_crypto FROM PUBLIC;
REVOKE ALL ON ALL PROCEDURES IN SCHEMA event_crypto FROM PUBLIC;
REVOKE ALL ON SCHEMA event_crypto FROM PUBLIC;
GRANT USAGE ON SCHEMA event_crypto TO event_crypto_admin, event_crypto_encryptor, event_crypto_decryptor;

GRANT SELECT ON event_crypto.key_info, event_crypto.audit_log, event_crypto.audit_head TO event_crypto_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON event_crypto.protected_columns, event_crypto.blind_indexes TO event_crypto_admin;
GRANT EXECUTE ON FUNCTION event_crypto.protect(regclass, name, text[], text, name, text, name, name, jsonb, text, name),
                          event_crypto.unprotect(regclass, name),
                          event_crypto.add_blind_index(regclass, name, text, name, text, text),
                          event_crypto.drop_blind_index(regclass, name),
                          event_crypto.validate_fields(text[], boolean), event_crypto.validate_normalize(text),
                          event_crypto.forget_subject(text)
    TO event_crypto_admin;
GRANT EXECUTE ON FUNCTION event_crypto.create_key(text, text), event_crypto.rotate_key(text, text),
                          event_crypto.shred_key(text), event_crypto.master_key_id(),
                          event_crypto.master_key_status(), event_crypto.rewrap_keys_batch(integer),
                          event_crypto.verify_audit_log()
    TO event_crypto_admin;
GRANT EXECUTE ON FUNCTION event_crypto.retire_key_version(text, integer, boolean),
                          event_crypto.reencrypt_batch(regclass, name, integer, name), event_crypto.reencrypt_end(regclass)
    TO event_crypto_admin;
GRANT EXECUTE ON FUNCTION event_crypto.reencrypt_fields(jsonb, text), event_crypto.needs_reencryption(jsonb, text[]),
                          event_crypto.uses_key_version(jsonb, text, integer)
    TO event_crypto_admin, event_crypto_encryptor;
GRANT EXECUTE ON PROCEDURE event_crypto.rewrap_keys(integer, bigint, bigint, bigint),
                           event_crypto.reencrypt_table(regclass, name, integer, name, bigint, bigint)
    TO event_crypto_admin;
GRANT SELECT, INSERT, UPDATE ON event_crypto.reencrypt_progress TO event_crypto_admin;
GRANT SELECT ON event_crypto.key_usage, event_crypto.rotation_policies, event_crypto.retention_policies
    TO event_crypto_admin;
GRANT INSERT, UPDATE, DELETE ON event_crypto.rotation_policies, event_crypto.retention_policies TO event_crypto_admin;
GRANT USAGE ON SEQUENCE event_crypto.retention_policies_id_seq TO event_crypto_admin;
GRANT EXECUTE ON FUNCTION event_crypto.set_rotation(text, interval),
                          event_crypto.set_retention(text, regclass, interval, interval, name),
                          event_crypto.drop_retention(text, regclass), event_crypto.enforce_retention(boolean),
                          event_crypto.run_maintenance(), event_crypto.flush_usage(), event_crypto.usage_tracking(),
                          event_crypto.usage_pending(), event_crypto.rotate_keys(text[], text),
                          event_crypto.record_maintenance(text, text[], jsonb)
    TO event_crypto_admin;
GRANT EXECUTE ON FUNCTION event_crypto.encrypt_fields(jsonb, text[], text, text),
                          event_crypto.encrypt_value(jsonb, text, text),
                          event_crypto.blind_index(text, text, text)
    TO event_crypto_encryptor;
GRANT EXECUTE ON FUNCTION event_crypto.decrypt_fields(jsonb, text, text),
                          event_crypto.decrypt_value(text, text, text),
                          event_crypto.export_subject(text)
    TO event_crypto_decryptor;
