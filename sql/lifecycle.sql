-- Key lifecycle procedures that commit as they go (so they must be CALLed outside a transaction block).

-- Re-wraps every live data key under the active master key, one committed batch at a time: a crash or a
-- cancel loses at most the batch in flight, and CALLing it again resumes where it stopped. Returns the total
-- rewrapped and what is left (remaining > 0 only if rows were locked by other transactions; unknown_master > 0
-- if some keys were wrapped by a master key missing from the ring).
CREATE PROCEDURE event_crypto.rewrap_keys(batch_size integer DEFAULT 1000, INOUT rewrapped bigint DEFAULT NULL,
                                          INOUT remaining bigint DEFAULT NULL, INOUT unknown_master bigint DEFAULT NULL)
    LANGUAGE plpgsql
AS $$
DECLARE
    b record;
BEGIN
    rewrapped := 0;
    LOOP
        SELECT * INTO b FROM event_crypto.rewrap_keys_batch(batch_size);
        rewrapped := rewrapped OPERATOR(pg_catalog.+) b.rewrapped;
        remaining := b.remaining;
        unknown_master := b.unknown_master;
        EXIT WHEN b.rewrapped OPERATOR(pg_catalog.=) 0;
        COMMIT;
    END LOOP;
END
$$;
COMMENT ON PROCEDURE event_crypto.rewrap_keys(integer, bigint, bigint, bigint) IS
    'Re-wraps every live data key under the active master key in committed batches; resumable. CALL outside a transaction block.';

-- Re-encryption of a table, one committed batch at a time, resumable. Progress per (table, column): the last
-- physical row position (ctid) processed in the current pass, where the pass ends (the table's size when it
-- started: rows the pass itself moves to new pages are not visited again), and the counts. Not dumped: positions
-- are physical.
CREATE TABLE event_crypto.reencrypt_progress (
    table_name     regclass    NOT NULL,
    column_name    name        NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    finished_at    timestamptz,
    last_ctid      tid         NOT NULL DEFAULT '(0,0)',
    end_ctid       tid         NOT NULL DEFAULT '(0,0)',
    batches        bigint      NOT NULL DEFAULT 0,
    rows_scanned   bigint      NOT NULL DEFAULT 0,
    rows_rewritten bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (table_name, column_name)
);
COMMENT ON TABLE event_crypto.reencrypt_progress IS
    'Progress of event_crypto.reencrypt_table(): the current pass per column (finished_at is set when a pass ends).';

-- The first row position after the table's current last page.
CREATE FUNCTION event_crypto.reencrypt_end("table" regclass) RETURNS tid
    LANGUAGE sql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.format('(%s,0)', pg_catalog.pg_relation_size("table")
                                       OPERATOR(pg_catalog./) pg_catalog.current_setting('block_size')::pg_catalog.int8)::pg_catalog.tid
$$;

-- One batch of a pass over "table"."column": the next batch_size rows after the last position, of which those
-- holding an envelope under an old key version, or (protected columns) a configured field still in plaintext, are
-- rewritten with an UPDATE. The protect trigger encrypts the plaintext fields of such rows as on any UPDATE (and
-- fills their blind index columns). Rows moved by concurrent UPDATEs may be passed over; a later pass picks
-- them up, and retire_key_version() refuses while any row still uses a version.
CREATE FUNCTION event_crypto.reencrypt_batch("table" regclass, "column" name, batch_size integer DEFAULT 1000,
                                             context_column name DEFAULT NULL)
    RETURNS TABLE (rows_scanned bigint, rows_rewritten bigint, finished boolean)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p        event_crypto.reencrypt_progress;
    cfg      event_crypto.protected_columns;
    ctx_expr text := 'NULL';
    fields   text[];
    ctids    tid[];
    n        bigint;
BEGIN
    IF "table" IS NULL OR "column" IS NULL OR batch_size IS NULL THEN
        RAISE EXCEPTION 'table, column and batch_size must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF batch_size < 1 OR batch_size > 100000 THEN
        RAISE EXCEPTION 'batch_size must be between 1 and 100000' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = "table" AND a.attname = "column"
                   AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'column "%" of % does not exist', "column", "table" USING ERRCODE = '42703';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = "table" AND a.attname = "column"
                   AND a.atttypid = 'jsonb'::regtype) THEN
        RAISE EXCEPTION 'column "%" of % is not of type jsonb', "column", "table" USING ERRCODE = '42804';
    END IF;
    IF context_column IS NOT NULL AND NOT EXISTS (
           SELECT 1 FROM pg_attribute a WHERE a.attrelid = "table" AND a.attname = context_column
              AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'column "%" of % does not exist', context_column, "table" USING ERRCODE = '42703';
    END IF;
    SELECT * INTO cfg FROM event_crypto.protected_columns c WHERE c.table_name = "table" AND c.column_name = "column";
    IF FOUND AND context_column IS NOT NULL AND context_column IS DISTINCT FROM cfg.context_column THEN
        RAISE EXCEPTION 'column "%" of % is protected with context column %', "column", "table",
              COALESCE(quote_ident(cfg.context_column), 'none') USING ERRCODE = '22023',
              HINT = 'Leave context_column out for protected columns: their configuration names it.';
    END IF;
    IF NOT FOUND AND context_column IS NOT NULL THEN
        ctx_expr := format('%I::pg_catalog.text', context_column);
    END IF;
    IF FOUND THEN
        IF cfg.context_column IS NOT NULL THEN
            ctx_expr := format('%I::pg_catalog.text', cfg.context_column);
        END IF;
        fields := cfg.fields || ARRAY(SELECT DISTINCT f FROM jsonb_each(COALESCE(cfg.fields_by_type, '{}')) e(k, v),
                                      jsonb_array_elements_text(e.v) f);
    END IF;
    INSERT INTO event_crypto.reencrypt_progress (table_name, column_name, end_ctid)
    VALUES ("table", "column", event_crypto.reencrypt_end("table"))
        ON CONFLICT DO NOTHING;
    -- one pass per column at a time: concurrent callers wait here
    SELECT * INTO p FROM event_crypto.reencrypt_progress r
     WHERE r.table_name = "table" AND r.column_name = "column" FOR UPDATE;
    IF p.finished_at IS NOT NULL THEN
        UPDATE event_crypto.reencrypt_progress r
           SET started_at = now(), updated_at = now(), finished_at = NULL, last_ctid = '(0,0)',
               end_ctid = event_crypto.reencrypt_end("table"), batches = 0, rows_scanned = 0, rows_rewritten = 0
         WHERE r.table_name = "table" AND r.column_name = "column" RETURNING * INTO p;
    END IF;
    EXECUTE format('SELECT array_agg(s.ctid ORDER BY s.ctid) FROM (SELECT t.ctid FROM %s t '
                   'WHERE t.ctid > $1 AND t.ctid < $3 ORDER BY t.ctid LIMIT $2) s', "table")
       INTO ctids USING p.last_ctid, batch_size, p.end_ctid;
    IF ctids IS NULL THEN
        UPDATE event_crypto.reencrypt_progress r SET finished_at = now(), updated_at = now()
         WHERE r.table_name = "table" AND r.column_name = "column";
        RETURN QUERY SELECT p.rows_scanned, p.rows_rewritten, true;
        RETURN;
    END IF;
    EXECUTE format('UPDATE %s t SET %I = event_crypto.reencrypt_fields(t.%I, %s) '
                   'WHERE t.ctid = ANY ($1) AND event_crypto.needs_reencryption(t.%I, $2)',
                   "table", "column", "column", ctx_expr, "column")
       USING ctids, fields;
    GET DIAGNOSTICS n = ROW_COUNT;
    UPDATE event_crypto.reencrypt_progress r
       SET last_ctid = ctids[cardinality(ctids)], batches = r.batches + 1,
           rows_scanned = r.rows_scanned + cardinality(ctids), rows_rewritten = r.rows_rewritten + n,
           updated_at = now()
     WHERE r.table_name = "table" AND r.column_name = "column" RETURNING * INTO p;
    RETURN QUERY SELECT p.rows_scanned, p.rows_rewritten, false;
END
$$;

-- Re-encrypts (and, for protected columns, migrates plaintext of) a whole column online. context_column: for a
-- column that is not protected, the column whose text is the context its envelopes are bound to (a protected
-- column's configuration names it).: batch after batch, each
-- committed, so it can be interrupted (cancel, crash) and CALLed again to resume where it stopped. Returns the
-- counts of the pass; progress is visible in event_crypto.reencrypt_progress while it runs.
CREATE PROCEDURE event_crypto.reencrypt_table("table" regclass, "column" name, batch_size integer DEFAULT 1000,
                                              context_column name DEFAULT NULL,
                                              INOUT rows_scanned bigint DEFAULT NULL,
                                              INOUT rows_rewritten bigint DEFAULT NULL)
    LANGUAGE plpgsql
AS $$
DECLARE
    b record;
BEGIN
    LOOP
        SELECT * INTO b FROM event_crypto.reencrypt_batch("table", "column", batch_size, context_column);
        rows_scanned := b.rows_scanned;
        rows_rewritten := b.rows_rewritten;
        COMMIT;
        EXIT WHEN b.finished;
    END LOOP;
END
$$;
COMMENT ON PROCEDURE event_crypto.reencrypt_table(regclass, name, integer, name, bigint, bigint) IS
    'Re-encrypts stale envelopes (and encrypts configured plaintext) of a column in committed batches; resumable. CALL outside a transaction block.';
