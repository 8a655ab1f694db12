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
-- Every row of a key id has the key id's handle, which never changes, and no other key id has it; a row without one
-- (a dump of a release before 0.3.0, a row written by hand) gets it. Also for rows a subscriber or pg_restore writes.
CREATE TRIGGER keys_handle BEFORE INSERT OR UPDATE OF handle ON event_crypto.keys
    FOR EACH ROW EXECUTE FUNCTION event_crypto.keys_handle();
ALTER TABLE event_crypto.keys ENABLE ALWAYS TRIGGER keys_handle;
CREATE TRIGGER legacy_subject_keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON event_crypto.legacy_subject_keys
    FOR EACH STATEMENT EXECUTE FUNCTION event_crypto.catalog_changed();
ALTER TABLE event_crypto.legacy_subject_keys ENABLE ALWAYS TRIGGER legacy_subject_keys_changed;
-- The digest secret: every change (and the rollback of the transaction that made it) makes each backend derive the
-- digest function again (src/tombstones.rs).
CREATE TRIGGER catalog_secrets_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON event_crypto.catalog_secrets
    FOR EACH STATEMENT EXECUTE FUNCTION event_crypto.catalog_changed();
ALTER TABLE event_crypto.catalog_secrets ENABLE ALWAYS TRIGGER catalog_secrets_changed;
CREATE TRIGGER catalog_secrets_replicated AFTER INSERT OR UPDATE OR DELETE ON event_crypto.catalog_secrets
    FOR EACH ROW EXECUTE FUNCTION event_crypto.catalog_changed();
ALTER TABLE event_crypto.catalog_secrets ENABLE REPLICA TRIGGER catalog_secrets_replicated;

-- Every row of the protection configuration is validated against its table, whoever writes it (protect() and
-- friends, a superuser by hand, pg_restore, a logical replication subscriber).
CREATE TRIGGER protected_columns_check BEFORE INSERT OR UPDATE ON event_crypto.protected_columns
    FOR EACH ROW EXECUTE FUNCTION event_crypto.config_check();
CREATE TRIGGER blind_indexes_check BEFORE INSERT OR UPDATE ON event_crypto.blind_indexes
    FOR EACH ROW EXECUTE FUNCTION event_crypto.config_check();
ALTER TABLE event_crypto.protected_columns ENABLE ALWAYS TRIGGER protected_columns_check;
ALTER TABLE event_crypto.blind_indexes ENABLE ALWAYS TRIGGER blind_indexes_check;

-- New audit rows are sealed into the chain when their transaction commits (src/audit.rs).
CREATE TRIGGER audit_pending AFTER INSERT ON event_crypto.audit_log
    FOR EACH ROW EXECUTE FUNCTION event_crypto.audit_pending();

REVOKE ALL ON ALL TABLES IN SCHEMA event_crypto FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA event_crypto FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA event_crypto FROM PUBLIC;
REVOKE ALL ON ALL PROCEDURES IN SCHEMA event_crypto FROM PUBLIC;
REVOKE ALL ON SCHEMA event_crypto FROM PUBLIC;
GRANT USAGE ON SCHEMA event_crypto TO event_crypto_admin, event_crypto_encryptor, event_crypto_decryptor,
                                      event_crypto_consumer;

-- Tables: read-only for the admin role. No role but the catalog owner writes any of them: configuration,
-- policies, progress and the audit log change only through the functions, which check the caller's rights on the
-- tables concerned, validate and audit.
GRANT SELECT ON event_crypto.key_info, event_crypto.audit_log, event_crypto.audit_head,
                event_crypto.protected_columns, event_crypto.blind_indexes, event_crypto.legacy_subject_keys,
                event_crypto.key_usage, event_crypto.rotation_policies, event_crypto.retention_policies,
                event_crypto.reencrypt_progress, event_crypto.maintenance_status,
                event_crypto.stats_keys, event_crypto.stats_key_versions, event_crypto.stats_shreds,
                event_crypto.stats_maintenance, event_crypto.stats_audit, event_crypto.consumers
    TO event_crypto_admin;

-- Key lifecycle, configuration and maintenance: the admin role. protect_trigger: CREATE TRIGGER, which protect()
-- runs as its caller, needs EXECUTE on the trigger function.
GRANT EXECUTE ON FUNCTION event_crypto.create_key(text, text), event_crypto.rotate_key(text, text),
                          event_crypto.shred_key(text), event_crypto.master_key_id(),
                          event_crypto.master_key_status(), event_crypto.rewrap_keys_batch(integer),
                          event_crypto.verify_audit_log(),
                          event_crypto.protect(regclass, name, text[], text, name, text, name, name, jsonb, text, name, boolean, text, text, text[]),
                          event_crypto.unprotect(regclass, name),
                          event_crypto.add_blind_index(regclass, name, text, name, text, text),
                          event_crypto.drop_blind_index(regclass, name),
                          event_crypto.refresh_decrypted_views(regclass),
                          event_crypto.protect_trigger(),
                          event_crypto.validate_fields(text[], boolean), event_crypto.validate_normalize(text),
                          event_crypto.forget_subject(text, text),
                          event_crypto.retire_key_version(text, integer, boolean),
                          event_crypto.cancel_retire(text, integer), event_crypto.key_version_usage(text, integer),
                          event_crypto.reencrypt_batch(regclass, name, integer, name), event_crypto.reencrypt_end(regclass),
                          event_crypto.set_rotation(text, interval),
                          event_crypto.set_retention(text, regclass, interval, interval, name),
                          event_crypto.drop_retention(text, regclass), event_crypto.enforce_retention(boolean),
                          event_crypto.run_maintenance(), event_crypto.maintenance_action(text),
                          event_crypto.flush_usage(), event_crypto.usage_tracking(), event_crypto.usage_pending(),
                          event_crypto.usage_pending_counts(),
                          event_crypto.key_id_digest(text), event_crypto.was_forgotten(text, text),
                          event_crypto.verify_forget_receipt(text, jsonb),
                          event_crypto.create_consumer(text, text, text, interval, text),
                          event_crypto.revoke_consumer(text),
                          event_crypto.suggest_protection(regclass, name, integer)
    TO event_crypto_admin;
GRANT EXECUTE ON PROCEDURE event_crypto.rewrap_keys(integer, bigint, bigint, bigint, bigint),
                           event_crypto.reencrypt_table(regclass, name, integer, name, bigint, bigint, bigint)
    TO event_crypto_admin;

-- Both the admin and the encryptor role: re-encryption of values, and the headers of envelopes.
GRANT EXECUTE ON FUNCTION event_crypto.reencrypt_fields(jsonb, text), event_crypto.needs_reencryption(jsonb, text[]),
                          event_crypto.uses_key_version(jsonb, text, integer)
    TO event_crypto_admin, event_crypto_encryptor;

-- PII detection in a document: pure, for the admin and encryptor roles.
GRANT EXECUTE ON FUNCTION event_crypto.detect_pii(jsonb) TO event_crypto_admin, event_crypto_encryptor;

-- The naming of subject keys, for every role.
GRANT EXECUTE ON FUNCTION event_crypto.subject_key_id(text, text, integer), event_crypto.subject_of_key_id(text, text)
    TO event_crypto_admin, event_crypto_encryptor, event_crypto_decryptor;

GRANT EXECUTE ON FUNCTION event_crypto.encrypt_fields(jsonb, text[], text, text, text),
                          event_crypto.encrypt_value(jsonb, text, text, text),
                          event_crypto.blind_index(text, text, text),
                          event_crypto.tokenize(text, text, text)
    TO event_crypto_encryptor;
GRANT EXECUTE ON FUNCTION event_crypto.decrypt_fields(jsonb, text, text),
                          event_crypto.decrypt_value(text, text, text),
                          event_crypto.decrypt_row(jsonb, regclass, name, text, text, text, text),
                          event_crypto.export_subject(text, regclass[], text),
                          event_crypto.detokenize(text)
    TO event_crypto_decryptor;

-- Consumers outside the database fetch the keys of the consumers registered to their role (docs/consumers.md).
GRANT EXECUTE ON FUNCTION event_crypto.consumer_keys(text, jsonb) TO event_crypto_consumer;
