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
                             'event_crypto.legacy_subject_keys', 'event_crypto.catalog_secrets']::regclass[] LOOP
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

-- Citus: following DROP TABLE, DROP COLUMN and DROP VIEW in the catalog. Its reference tables name each node's own
-- oids (a regclass is resolved by name on every node), so what a dropped object leaves behind is removed on each
-- node from the node's own placement of the catalog (a worker cannot write a reference table through Citus while
-- it drops shards and shells for the coordinator, and the coordinator's oids mean other tables on the workers).
-- event_crypto.ddl_sql_drop() leaves the catalog to this function once citus_setup() has run.
CREATE FUNCTION event_crypto.citus_sql_drop() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    o record;
    t record;
    col name;
    pc regclass;
    bi regclass;
    in_task boolean := pg_catalog.current_setting('application_name') OPERATOR(pg_catalog.~~) 'citus_internal gpid=%';
BEGIN
    IF pg_catalog.to_regclass('event_crypto.protected_columns') IS NULL
       OR pg_catalog.to_regclass('pg_catalog.pg_dist_shard') IS NULL THEN
        RETURN;
    END IF;
    -- this node's placements of the two tables (none: the catalog is not distributed, ddl_sql_drop() follows)
    SELECT pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid)) INTO pc
      FROM pg_catalog.pg_dist_shard s
     WHERE s.logicalrelid OPERATOR(pg_catalog.=) 'event_crypto.protected_columns'::pg_catalog.regclass;
    SELECT pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid)) INTO bi
      FROM pg_catalog.pg_dist_shard s
     WHERE s.logicalrelid OPERATOR(pg_catalog.=) 'event_crypto.blind_indexes'::pg_catalog.regclass;
    IF pc IS NULL OR bi IS NULL THEN
        RETURN;
    END IF;
    -- the placements are written directly, as Citus's own tasks do
    PERFORM pg_catalog.set_config('citus.enable_manual_changes_to_shards', 'on', true);
    FOR o IN SELECT * FROM pg_catalog.pg_event_trigger_dropped_objects() LOOP
        IF o.object_type OPERATOR(pg_catalog.=) 'table' THEN
            EXECUTE pg_catalog.format('DELETE FROM %s WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1', bi)
                USING o.objid;
            EXECUTE pg_catalog.format('DELETE FROM %s WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1', pc)
                USING o.objid;
            DELETE FROM event_crypto.retention_policies WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) o.objid;
            DELETE FROM event_crypto.reencrypt_progress WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) o.objid;
        ELSIF o.object_type OPERATOR(pg_catalog.=) 'table column' THEN
            col := o.address_names[3];
            EXECUTE pg_catalog.format('DELETE FROM %s WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 '
                                      'AND target_column OPERATOR(pg_catalog.=) $2', bi)
                USING o.objid, col;
            EXECUTE pg_catalog.format('DELETE FROM %s WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 '
                                      'AND column_name OPERATOR(pg_catalog.=) $2', pc)
                USING o.objid, col;
            DELETE FROM event_crypto.reencrypt_progress
             WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) o.objid AND column_name OPERATOR(pg_catalog.=) col;
            CONTINUE WHEN in_task;
            -- on the coordinator: the protect trigger of the dropped column (found by what it runs) would refuse
            -- every insert (Citus drops it on the shards too)
            PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
            FOR t IN SELECT tg.tgname FROM pg_catalog.pg_trigger tg
                      WHERE tg.tgrelid OPERATOR(pg_catalog.=) o.objid AND NOT tg.tgisinternal
                        AND tg.tgparentid OPERATOR(pg_catalog.=) 0
                        AND tg.tgfoid OPERATOR(pg_catalog.=) 'event_crypto.protect_trigger()'::pg_catalog.regprocedure
                        AND tg.tgnargs OPERATOR(pg_catalog.=) 1
                        AND tg.tgargs OPERATOR(pg_catalog.=) (pg_catalog.convert_to(col, pg_catalog.getdatabaseencoding())
                                                              OPERATOR(pg_catalog.||) '\x00'::pg_catalog.bytea) LOOP
                EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', t.tgname, o.objid::pg_catalog.regclass);
            END LOOP;
        ELSIF o.object_type OPERATOR(pg_catalog.=) 'view' THEN
            EXECUTE pg_catalog.format('UPDATE %s SET decrypted_view = NULL '
                                      'WHERE decrypted_view::pg_catalog.oid OPERATOR(pg_catalog.=) $1', pc)
                USING o.objid;
        END IF;
    END LOOP;
END
$$;
CREATE EVENT TRIGGER event_crypto_citus_sql_drop ON sql_drop EXECUTE FUNCTION event_crypto.citus_sql_drop();
