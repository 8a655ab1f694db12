-- Key lifecycle procedures that commit as they go (so they must be CALLed outside a transaction block).

-- Re-wraps every live data key under the active master key, one committed batch at a time: a crash or a
-- cancel loses at most the batch in flight, and CALLing it again resumes where it stopped. Returns the total
-- rewrapped and what is left: remaining > 0 if rows were locked by other transactions or are damaged;
-- unknown_master > 0 if some keys were wrapped by a master key missing from the ring; damaged > 0 if some wrapped
-- keys do not unwrap (they are passed over, named in a WARNING, and stay under their old master key).
CREATE PROCEDURE event_crypto.rewrap_keys(batch_size integer DEFAULT 1000, INOUT rewrapped bigint DEFAULT NULL,
                                          INOUT remaining bigint DEFAULT NULL, INOUT unknown_master bigint DEFAULT NULL,
                                          INOUT damaged bigint DEFAULT NULL)
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
        damaged := b.damaged;
        EXIT WHEN b.rewrapped OPERATOR(pg_catalog.=) 0;
        COMMIT;
        -- a batch passes over damaged keys, so one that rewrapped fewer than batch_size has seen every candidate
        EXIT WHEN b.rewrapped OPERATOR(pg_catalog.<) batch_size;
    END LOOP;
END
$$;
COMMENT ON PROCEDURE event_crypto.rewrap_keys(integer, bigint, bigint, bigint, bigint) IS
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
    -- rows skipped because an envelope in them is not bound to the row (malformed, another key or context)
    rows_invalid   bigint      NOT NULL DEFAULT 0,
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

-- One batch of a pass: event_crypto.reencrypt_batch() (src/reencrypt.rs), which runs on the table as its owner.

-- Re-encrypts (and, for protected columns, migrates plaintext of) a whole column online, batch after batch, each
-- committed, so it can be interrupted (cancel, crash) and CALLed again to resume where it stopped. A partitioned
-- table is passed over partition by partition (its leaf partitions; reencrypt_batch refuses the parent itself), a
-- Citus distributed table shard by shard, each batch on the node holding the shard. context_column:
-- for a column that is not protected, the column whose text is the context its envelopes are bound to (a
-- protected column's configuration names it). Returns the counts of the pass (rows_invalid: rows left alone
-- because an envelope in them is not bound to the row); progress is visible in event_crypto.reencrypt_progress.
CREATE PROCEDURE event_crypto.reencrypt_table("table" regclass, "column" name, batch_size integer DEFAULT 1000,
                                              context_column name DEFAULT NULL,
                                              INOUT rows_scanned bigint DEFAULT NULL,
                                              INOUT rows_rewritten bigint DEFAULT NULL,
                                              INOUT rows_invalid bigint DEFAULT NULL)
    LANGUAGE plpgsql
AS $$
DECLARE
    b record;
    part regclass;
    shard text;
    node text;
    port integer;
    answer record;
    counts text[];
    distributed boolean;
BEGIN
    rows_scanned := 0;
    rows_rewritten := 0;
    rows_invalid := 0;
    -- a partitioned table: one pass over each of its leaf partitions (a plain table is its own only leaf)
    FOR part IN SELECT t.relid FROM pg_catalog.pg_partition_tree("table") t WHERE t.isleaf
                UNION ALL
                SELECT "table" WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_partition_tree("table")) LOOP
        distributed := false;
        IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
            -- (a statement of its own: Citus's catalog is only named once it is known to exist)
            distributed := EXISTS (SELECT FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid OPERATOR(pg_catalog.=) part);
        END IF;
        IF distributed THEN
            -- Citus: the rows are in the shards. One pass over each shard, batch after batch, each batch run (and
            -- committed) on the node that holds the shard, as the caller, by event_crypto.reencrypt_batch().
            IF EXISTS (SELECT FROM pg_catalog.pg_dist_shard s
                       JOIN pg_catalog.pg_dist_placement pl ON pl.shardid OPERATOR(pg_catalog.=) s.shardid
                       WHERE s.logicalrelid OPERATOR(pg_catalog.=) part
                       GROUP BY s.shardid HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 1) THEN
                RAISE EXCEPTION '% has shards with more than one placement (a reference table, or replicated shards)', part
                    USING ERRCODE = '0A000',
                          DETAIL = 'Each placement would be re-encrypted on its own, with its own nonces: the copies would differ.';
            END IF;
            FOR shard, node, port IN
                SELECT pg_catalog.shard_name(s.logicalrelid, s.shardid), n.nodename, n.nodeport
                FROM pg_catalog.pg_dist_shard s
                JOIN pg_catalog.pg_dist_placement pl ON pl.shardid OPERATOR(pg_catalog.=) s.shardid
                JOIN pg_catalog.pg_dist_node n ON n.groupid OPERATOR(pg_catalog.=) pl.groupid
                                              AND n.noderole OPERATOR(pg_catalog.=) 'primary'
                WHERE s.logicalrelid OPERATOR(pg_catalog.=) part
                ORDER BY s.shardid LOOP
                LOOP
                    SELECT * INTO answer FROM pg_catalog.master_run_on_worker(
                        ARRAY[node], ARRAY[port],
                        ARRAY[pg_catalog.format(
                            'SELECT pg_catalog.concat_ws('' '', rows_scanned, rows_rewritten, rows_invalid, finished) '
                            'FROM event_crypto.reencrypt_batch(%L::pg_catalog.regclass, %L, %s, %L)',
                            shard, "column", batch_size, context_column)],
                        false);
                    IF answer.success IS NOT TRUE THEN
                        RAISE EXCEPTION 're-encryption of shard % of % on %:% failed', shard, part, node, port
                            USING ERRCODE = '58000', DETAIL = pg_catalog.left(answer.result, 500),
                                  HINT = 'Shards done so far stay done; CALL event_crypto.reencrypt_table() again to go on.';
                    END IF;
                    -- the counts of the shard's pass so far (as reencrypt_batch() returns them)
                    counts := pg_catalog.string_to_array(answer.result, ' ');
                    COMMIT;
                    EXIT WHEN counts[4]::pg_catalog.bool;
                END LOOP;
                rows_scanned := rows_scanned OPERATOR(pg_catalog.+) counts[1]::pg_catalog.int8;
                rows_rewritten := rows_rewritten OPERATOR(pg_catalog.+) counts[2]::pg_catalog.int8;
                rows_invalid := rows_invalid OPERATOR(pg_catalog.+) counts[3]::pg_catalog.int8;
            END LOOP;
            CONTINUE;
        END IF;
        LOOP
            SELECT * INTO b FROM event_crypto.reencrypt_batch(part, "column", batch_size, context_column);
            COMMIT;
            EXIT WHEN b.finished;
        END LOOP;
        rows_scanned := rows_scanned OPERATOR(pg_catalog.+) b.rows_scanned;
        rows_rewritten := rows_rewritten OPERATOR(pg_catalog.+) b.rows_rewritten;
        rows_invalid := rows_invalid OPERATOR(pg_catalog.+) b.rows_invalid;
    END LOOP;
    IF rows_invalid OPERATOR(pg_catalog.>) 0 THEN
        RAISE WARNING '% rows of % were left as they are: an envelope in them is not bound to its row, or (a json column) they hold a value jsonb cannot (\u0000)', rows_invalid, "table"
            USING HINT = 'Envelopes not bound to their row read as null in the decrypted view; see event_crypto.reencrypt_progress and docs/security.md.';
    END IF;
END
$$;
COMMENT ON PROCEDURE event_crypto.reencrypt_table(regclass, name, integer, name, bigint, bigint, bigint) IS
    'Re-encrypts stale envelopes (and encrypts configured plaintext) of a column in committed batches; resumable. CALL outside a transaction block.';
