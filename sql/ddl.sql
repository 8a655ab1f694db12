-- Event triggers: the configuration follows what happens to the tables it names (issue 12).
--   - DROP TABLE, DROP COLUMN, DROP VIEW: the configuration rows, blind indexes, retention policy and
--     re-encryption progress of a dropped table go; a dropped protected column loses its configuration and
--     trigger; a dropped decrypted view is no longer recorded. Nothing is left pointing at a dead OID, so one
--     dropped table never stops retention, erasure or maintenance for the others.
--   - ALTER TABLE ... RENAME COLUMN: event_crypto.follow_column_rename() (src/protect/admin.rs).
--   - CREATE TABLE / ALTER TABLE: a table that inherits from a protected table (INHERITS) gets its protect
--     triggers; a new table with every column of a protected table (LIKE) is warned about
--     (event_crypto.ddl_table_changed()); ALTER TABLE ... ATTACH PARTITION under a protected table is refused for a
--     table with its own protection or with configured fields in plaintext, and a partition detached from a
--     protected table keeps a copy of its protection (event_crypto.ddl_partitions_changed()).
-- The functions run as the extension's owner (SECURITY DEFINER: they write the configuration, which no other role
-- may), with a fixed search_path and every operator qualified; they act only on what PostgreSQL reports the
-- command did, and splice no stored name into SQL (the trigger to drop is found by its function and argument,
-- and quoted).

CREATE FUNCTION event_crypto.ddl_sql_drop() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    o record;
    t record;
    col name;
BEGIN
    IF pg_catalog.to_regclass('event_crypto.protected_columns') IS NULL THEN
        RETURN;  -- the extension itself is being dropped
    END IF;
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
        IF EXISTS (SELECT FROM pg_catalog.pg_dist_partition p
                    WHERE p.logicalrelid OPERATOR(pg_catalog.=) 'event_crypto.protected_columns'::pg_catalog.regclass) THEN
            RETURN;  -- Citus, after citus_setup(): event_crypto.citus_sql_drop() follows the drop on every node
        END IF;
    END IF;
    FOR o IN SELECT * FROM pg_catalog.pg_event_trigger_dropped_objects() LOOP
        IF o.object_type OPERATOR(pg_catalog.=) 'table' THEN
            DELETE FROM event_crypto.protected_columns WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) o.objid;
            DELETE FROM event_crypto.retention_policies WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) o.objid;
            DELETE FROM event_crypto.reencrypt_progress WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) o.objid;
        ELSIF o.object_type OPERATOR(pg_catalog.=) 'table column' THEN
            col := o.address_names[3];
            IF EXISTS (SELECT 1 FROM event_crypto.protected_columns p
                        WHERE p.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) o.objid
                          AND col OPERATOR(pg_catalog.=) ANY (ARRAY[p.key_column, p.context_column, p.type_column])) THEN
                RAISE WARNING 'event_crypto: column "%" of % was the key, context or type column of a protected column', col, o.objid::pg_catalog.regclass
                    USING DETAIL = 'Inserts into the table are refused until its protection is configured again.',
                          HINT = 'Run event_crypto.protect() for the table again, or event_crypto.unprotect().';
            END IF;
            DELETE FROM event_crypto.blind_indexes
             WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) o.objid AND target_column OPERATOR(pg_catalog.=) col;
            DELETE FROM event_crypto.protected_columns
             WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) o.objid AND column_name OPERATOR(pg_catalog.=) col;
            DELETE FROM event_crypto.reencrypt_progress
             WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) o.objid AND column_name OPERATOR(pg_catalog.=) col;
            -- the protect trigger of the dropped column (found by what it runs) would refuse every insert
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
            UPDATE event_crypto.protected_columns SET decrypted_view = NULL
             WHERE decrypted_view::pg_catalog.oid OPERATOR(pg_catalog.=) o.objid;
        END IF;
    END LOOP;
END
$$;

CREATE FUNCTION event_crypto.ddl_command_end() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c record;
BEGIN
    IF pg_catalog.to_regclass('event_crypto.protected_columns') IS NULL THEN
        RETURN;
    END IF;
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL
       AND pg_catalog.current_setting('application_name') OPERATOR(pg_catalog.~~) 'citus_internal gpid=%' THEN
        RETURN;  -- Citus: a worker creates or alters shards or shells for the coordinator, whose trigger follows the DDL
    END IF;
    FOR c IN SELECT d.command_tag, d.object_type, d.objid, d.objsubid, d.command FROM pg_catalog.pg_event_trigger_ddl_commands() d
              WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass AND NOT d.in_extension LOOP
        -- A table attached as a partition of a protected table is checked, and the command refused (never turned
        -- into a WARNING) if the table has its own protection or holds configured fields in plaintext; a
        -- partition detached from one keeps a copy of its protection.
        IF c.command_tag OPERATOR(pg_catalog.=) 'ALTER TABLE' AND c.object_type OPERATOR(pg_catalog.=) 'table' THEN
            PERFORM event_crypto.ddl_partitions_changed(c.command);
        END IF;
        -- The user's DDL is never refused for event_crypto's bookkeeping: what cannot be followed is a WARNING
        -- (and the configuration then fails closed: inserts are refused until protect() is run again).
        BEGIN
            IF c.command_tag OPERATOR(pg_catalog.=) 'ALTER TABLE' AND c.object_type OPERATOR(pg_catalog.=) 'table column'
               AND c.objsubid OPERATOR(pg_catalog.>) 0 THEN
                PERFORM event_crypto.follow_column_rename(c.objid::pg_catalog.regclass, c.objsubid);
            ELSIF c.command_tag OPERATOR(pg_catalog.=) ANY ('{CREATE TABLE,ALTER TABLE}')
                  AND c.object_type OPERATOR(pg_catalog.=) 'table' THEN
                PERFORM event_crypto.ddl_table_changed(c.objid::pg_catalog.regclass,
                                                       c.command_tag OPERATOR(pg_catalog.=) 'CREATE TABLE');
            END IF;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'event_crypto: the protection configuration of % could not follow this command: %',
                c.objid::pg_catalog.regclass, SQLERRM
                USING HINT = 'Run event_crypto.protect() for the table again.';
        END;
    END LOOP;
END
$$;

CREATE EVENT TRIGGER event_crypto_sql_drop ON sql_drop EXECUTE FUNCTION event_crypto.ddl_sql_drop();
CREATE EVENT TRIGGER event_crypto_ddl_command_end ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE') EXECUTE FUNCTION event_crypto.ddl_command_end();
