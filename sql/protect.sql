-- Protecting event tables. These functions orchestrate DDL and run with the caller's rights: CREATE TRIGGER needs
-- the TRIGGER privilege on the table and the view needs CREATE on its schema. The row trigger itself
-- (event_crypto.protect_trigger) is Rust; see src/protect.rs.

-- protect(): stores the configuration, installs the BEFORE INSERT OR UPDATE row trigger and creates the
-- decrypted view. Calling it again updates the configuration.
CREATE FUNCTION event_crypto.protect(
    "table" regclass, "column" name, fields text[] DEFAULT NULL, key_id text DEFAULT NULL,
    key_column name DEFAULT NULL, key_prefix text DEFAULT 'subject:', context_column name DEFAULT NULL,
    type_column name DEFAULT NULL, fields_by_type jsonb DEFAULT NULL, on_forgotten text DEFAULT 'error',
    view_name name DEFAULT NULL)
RETURNS event_crypto.protected_columns
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    nsp name;
    rel name;
    typ oid;
    c name;
    t text;
    v jsonb;
    old_view text;
    new_view text;
    select_list text;
    result event_crypto.protected_columns;
BEGIN
    IF "table" IS NULL OR "column" IS NULL OR key_prefix IS NULL OR on_forgotten IS NULL THEN
        RAISE EXCEPTION 'table, column, key_prefix and on_forgotten must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT n.nspname, cl.relname INTO nsp, rel
    FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace
    WHERE cl.oid = "table" AND cl.relkind IN ('r', 'p');
    IF NOT FOUND THEN
        RAISE EXCEPTION '% is not a table', "table" USING ERRCODE = '42809';
    END IF;
    SELECT atttypid INTO typ FROM pg_attribute
    WHERE attrelid = "table" AND attname = "column" AND attnum > 0 AND NOT attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of % does not exist', "column", "table" USING ERRCODE = '42703';
    END IF;
    IF typ <> 'jsonb'::regtype THEN
        RAISE EXCEPTION 'column "%" of % is of type %, not jsonb', "column", "table", typ::regtype
            USING ERRCODE = '42804', HINT = 'event_crypto protects jsonb columns.';
    END IF;
    IF (key_id IS NULL) = (key_column IS NULL) THEN
        RAISE EXCEPTION 'give exactly one of key_id and key_column' USING ERRCODE = '22023',
            HINT = 'key_id encrypts every row under one key; key_column takes a per-subject key id from a column.';
    END IF;
    FOREACH c IN ARRAY ARRAY[key_column, context_column, type_column] LOOP
        IF c IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_attribute
                                         WHERE attrelid = "table" AND attname = c AND attnum > 0 AND NOT attisdropped) THEN
            RAISE EXCEPTION 'column "%" of % does not exist', c, "table" USING ERRCODE = '42703';
        END IF;
    END LOOP;
    IF key_column = "column" OR context_column = "column" OR type_column = "column" THEN
        RAISE EXCEPTION 'the key, context and type columns must differ from the protected column' USING ERRCODE = '22023';
    END IF;
    IF (type_column IS NULL) <> (fields_by_type IS NULL) THEN
        RAISE EXCEPTION 'type_column and fields_by_type go together' USING ERRCODE = '22023';
    END IF;
    IF fields_by_type IS NOT NULL THEN
        IF jsonb_typeof(fields_by_type) <> 'object' THEN
            RAISE EXCEPTION 'fields_by_type must be a JSON object mapping type names to arrays of field paths'
                USING ERRCODE = '22023';
        END IF;
        FOR t, v IN SELECT * FROM jsonb_each(fields_by_type) LOOP
            IF jsonb_typeof(v) <> 'array'
               OR EXISTS (SELECT 1 FROM jsonb_array_elements(v) e WHERE jsonb_typeof(e) <> 'string') THEN
                RAISE EXCEPTION 'fields_by_type for type "%" must be an array of field paths', t USING ERRCODE = '22023';
            END IF;
            PERFORM event_crypto.validate_fields(ARRAY(SELECT jsonb_array_elements_text(v)));
        END LOOP;
    END IF;
    IF coalesce(cardinality(fields), 0) = 0 AND fields_by_type IS NULL THEN
        RAISE EXCEPTION 'no fields to protect' USING ERRCODE = '22023',
            HINT = 'Pass fields, or type_column with fields_by_type.';
    END IF;
    PERFORM event_crypto.validate_fields(coalesce(fields, '{}'));
    IF on_forgotten NOT IN ('error', 'new_key') THEN
        RAISE EXCEPTION 'on_forgotten must be error or new_key' USING ERRCODE = '22023';
    END IF;
    IF key_id IS NOT NULL AND (key_id = '' OR octet_length(key_id) > 255) THEN
        RAISE EXCEPTION 'key_id must be 1 to 255 bytes' USING ERRCODE = '22023';
    END IF;

    SELECT p.view_name INTO old_view FROM event_crypto.protected_columns p
    WHERE p.table_name = "table" AND p.column_name = "column";
    new_view := format('%I.%I', nsp, coalesce(view_name, (rel || '_decrypted')::name));

    INSERT INTO event_crypto.protected_columns AS p
        (table_name, column_name, fields, key_id, key_column, key_prefix, context_column, type_column,
         fields_by_type, on_forgotten, view_name)
    VALUES ("table", "column", coalesce(fields, '{}'), key_id, key_column, key_prefix, context_column, type_column,
            fields_by_type, on_forgotten, new_view)
    ON CONFLICT ON CONSTRAINT protected_columns_pkey DO UPDATE SET
        fields = EXCLUDED.fields, key_id = EXCLUDED.key_id, key_column = EXCLUDED.key_column,
        key_prefix = EXCLUDED.key_prefix, context_column = EXCLUDED.context_column,
        type_column = EXCLUDED.type_column, fields_by_type = EXCLUDED.fields_by_type,
        on_forgotten = EXCLUDED.on_forgotten, view_name = EXCLUDED.view_name,
        protected_at = now(), protected_by = CURRENT_USER
    RETURNING * INTO result;

    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = "table" AND tgname = 'event_crypto_protect_' || "column") THEN
        EXECUTE format('DROP TRIGGER %I ON %s', 'event_crypto_protect_' || "column", "table");
    END IF;
    EXECUTE format('CREATE TRIGGER %I BEFORE INSERT OR UPDATE ON %s FOR EACH ROW '
                   'EXECUTE FUNCTION event_crypto.protect_trigger(%L)',
                   'event_crypto_protect_' || "column", "table", "column");

    IF old_view IS NOT NULL AND old_view <> new_view THEN
        EXECUTE format('DROP VIEW IF EXISTS %s', old_view);
    END IF;
    SELECT string_agg(CASE WHEN a.attname = "column"
                           THEN format('event_crypto.decrypt_fields(t.%I, %s) AS %I', a.attname,
                                       CASE WHEN context_column IS NULL THEN 'NULL'
                                            ELSE format('t.%I::text', context_column) END, a.attname)
                           ELSE format('t.%I', a.attname) END, ', ' ORDER BY a.attnum)
    INTO select_list
    FROM pg_attribute a WHERE a.attrelid = "table" AND a.attnum > 0 AND NOT a.attisdropped;
    -- security_invoker: the reader's own privileges and the base table's row-level security apply.
    EXECUTE format('CREATE OR REPLACE VIEW %s WITH (security_invoker = true) AS SELECT %s FROM %s t',
                   new_view, select_list, "table");
    RETURN result;
END
$fn$;
COMMENT ON FUNCTION event_crypto.protect(regclass, name, text[], text, name, text, name, name, jsonb, text, name) IS
    'Encrypt the given fields of a jsonb column on every INSERT and UPDATE, and create <table>_decrypted.';

CREATE FUNCTION event_crypto.unprotect("table" regclass, "column" name)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    old_view text;
BEGIN
    IF "table" IS NULL OR "column" IS NULL THEN
        RAISE EXCEPTION 'table and column must not be NULL' USING ERRCODE = '22004';
    END IF;
    DELETE FROM event_crypto.protected_columns p WHERE p.table_name = "table" AND p.column_name = "column"
    RETURNING p.view_name INTO old_view;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'event_crypto_protect_' || "column", "table");
    IF old_view IS NOT NULL THEN
        EXECUTE format('DROP VIEW IF EXISTS %s', old_view);
    END IF;
    RETURN true;
END
$fn$;

CREATE FUNCTION event_crypto.add_blind_index("table" regclass, "column" name, field text, target_column name,
                                             key_id text, "normalize" text DEFAULT NULL)
RETURNS event_crypto.blind_indexes
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    typ oid;
    result event_crypto.blind_indexes;
BEGIN
    IF "table" IS NULL OR "column" IS NULL OR field IS NULL OR target_column IS NULL OR key_id IS NULL THEN
        RAISE EXCEPTION 'table, column, field, target_column and key_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM event_crypto.protected_columns p
                   WHERE p.table_name = "table" AND p.column_name = "column") THEN
        RAISE EXCEPTION 'column "%" of % is not protected', "column", "table" USING ERRCODE = '55000',
            HINT = 'Call event_crypto.protect() first.';
    END IF;
    PERFORM event_crypto.validate_fields(ARRAY[field], false);
    PERFORM event_crypto.validate_normalize("normalize");
    IF key_id = '' OR octet_length(key_id) > 255 THEN
        RAISE EXCEPTION 'key_id must be 1 to 255 bytes' USING ERRCODE = '22023';
    END IF;
    SELECT atttypid INTO typ FROM pg_attribute
    WHERE attrelid = "table" AND attname = target_column AND attnum > 0 AND NOT attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of % does not exist', target_column, "table" USING ERRCODE = '42703';
    END IF;
    IF typ NOT IN ('text'::regtype, 'varchar'::regtype) THEN
        RAISE EXCEPTION 'blind index column "%" must be text, not %', target_column, typ::regtype USING ERRCODE = '42804';
    END IF;
    IF target_column = "column" THEN
        RAISE EXCEPTION 'the blind index column must differ from the protected column' USING ERRCODE = '22023';
    END IF;
    INSERT INTO event_crypto.blind_indexes AS b (table_name, column_name, field, target_column, key_id, normalize)
    VALUES ("table", "column", field, target_column, key_id, "normalize")
    ON CONFLICT ON CONSTRAINT blind_indexes_pkey DO UPDATE SET
        column_name = EXCLUDED.column_name, field = EXCLUDED.field, key_id = EXCLUDED.key_id,
        normalize = EXCLUDED.normalize
    RETURNING * INTO result;
    RETURN result;
END
$fn$;

CREATE FUNCTION event_crypto.drop_blind_index("table" regclass, target_column name)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    DELETE FROM event_crypto.blind_indexes b
    WHERE b.table_name = "table" AND b.target_column = drop_blind_index.target_column;
    RETURN FOUND;
END
$fn$;
