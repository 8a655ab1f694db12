-- Citus (docs/scaling.md#citus): event_crypto's catalog as Citus reference tables. Every node then holds the same
-- keys and protection configuration: shard triggers on the workers encrypt with them, and a change made on the
-- coordinator (create_key, rotate_key, shred_key, forget_subject, protect) reaches every node in the coordinator's
-- distributed transaction. Run once, on the coordinator, after CREATE EXTENSION (and after adding the workers);
-- calling it again does nothing. Citus is looked up when it runs, never needed otherwise.
CREATE FUNCTION event_crypto.citus_setup() RETURNS text[]
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t regclass;
    made text[] := '{}';
BEGIN
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RAISE EXCEPTION 'Citus is not installed in this database'
            USING ERRCODE = '55000', HINT = 'CREATE EXTENSION citus, add the workers, then call event_crypto.citus_setup() again.';
    END IF;
    -- the catalog tables have cache-invalidation and validation triggers, which must run on every placement
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p
                   WHERE p.logicalrelid OPERATOR(pg_catalog.=) 'event_crypto.protected_columns'::pg_catalog.regclass) THEN
        -- Citus would turn blind_indexes, which references protected_columns, into a "Citus local table" by renaming
        -- it, which the workers' copy of the extension's table prevents: the foreign key is taken off (on every
        -- node) and put back once both are reference tables (Citus then puts it on every placement).
        ALTER TABLE event_crypto.blind_indexes DROP CONSTRAINT IF EXISTS blind_indexes_table_name_column_name_fkey;
        PERFORM pg_catalog.run_command_on_workers(
            'ALTER TABLE event_crypto.blind_indexes DROP CONSTRAINT IF EXISTS blind_indexes_table_name_column_name_fkey');
    END IF;
    FOREACH t IN ARRAY ARRAY['event_crypto.keys', 'event_crypto.protected_columns', 'event_crypto.blind_indexes',
                             'event_crypto.legacy_subject_keys']::regclass[] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid OPERATOR(pg_catalog.=) t) THEN
            PERFORM pg_catalog.create_reference_table(t);
            made := made OPERATOR(pg_catalog.||) t::text;
        END IF;
    END LOOP;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_constraint c
                   WHERE c.conrelid OPERATOR(pg_catalog.=) 'event_crypto.blind_indexes'::pg_catalog.regclass
                     AND c.conname OPERATOR(pg_catalog.=) 'blind_indexes_table_name_column_name_fkey') THEN
        ALTER TABLE event_crypto.blind_indexes ADD CONSTRAINT blind_indexes_table_name_column_name_fkey
            FOREIGN KEY (table_name, column_name) REFERENCES event_crypto.protected_columns ON DELETE CASCADE;
    END IF;
    RETURN made;
END
$$;
COMMENT ON FUNCTION event_crypto.citus_setup() IS
    'Citus: makes event_crypto''s keys and configuration reference tables (on the coordinator, once); returns the tables it distributed.';
