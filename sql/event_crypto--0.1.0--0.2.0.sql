-- event_crypto 0.1.0 -> 0.2.0 (issue 11: the holes an attacker found). Every object ends as a fresh 0.2.0 install
-- makes it (the upgrade test compares them); every row of 0.1.0 stays and decrypts.
\echo Use "ALTER EXTENSION event_crypto UPDATE TO '0.2.0'" to load this file. \quit

-- ---------------------------------------------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------------------------------------------

-- protected_columns: the decrypted view by oid instead of a stored, spliced name. A 0.1.0 row keeps its view only
-- if the name still leads to a view built on the protected table (a name written by hand into the table, as an
-- admin could in 0.1.0, is dropped rather than trusted).
ALTER TABLE event_crypto.protected_columns ADD COLUMN decrypted_view regclass;
DO $view$
DECLARE
    r record;
    v oid;
BEGIN
    FOR r IN SELECT table_name, column_name, view_name FROM event_crypto.protected_columns WHERE view_name IS NOT NULL LOOP
        BEGIN
            v := pg_catalog.to_regclass(r.view_name)::pg_catalog.oid;
        EXCEPTION WHEN OTHERS THEN
            v := NULL;
        END;
        IF v IS NOT NULL AND EXISTS (
               SELECT 1 FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_rewrite w ON w.ev_class OPERATOR(pg_catalog.=) c.oid
                 JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass
                                            AND d.objid OPERATOR(pg_catalog.=) w.oid
                WHERE c.oid OPERATOR(pg_catalog.=) v AND c.relkind OPERATOR(pg_catalog.=) 'v'
                  AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                  AND d.refobjid OPERATOR(pg_catalog.=) r.table_name::pg_catalog.oid) THEN
            UPDATE event_crypto.protected_columns p SET decrypted_view = v::pg_catalog.regclass
             WHERE p.table_name OPERATOR(pg_catalog.=) r.table_name AND p.column_name OPERATOR(pg_catalog.=) r.column_name;
        ELSE
            RAISE WARNING 'event_crypto: the decrypted view "%" of %.% is not a view of that table; it is no longer recorded',
                r.view_name, r.table_name, r.column_name;
        END IF;
    END LOOP;
END
$view$;
ALTER TABLE event_crypto.protected_columns DROP COLUMN view_name;
-- Rows of a type fields_by_type does not name (or NULL) were stored with the common fields encrypted only, and with
-- no common fields in plaintext (issue 12). From 0.2.0 they are refused unless fields_by_type has a "*" entry or the
-- configuration says allow_unlisted_types. An existing configuration with common fields keeps what it did (such
-- rows get the common fields: refusing them now would stop the application's inserts at the upgrade); one without
-- common fields, which stored such rows in plaintext, fails closed. The upgrade warns about each.
ALTER TABLE event_crypto.protected_columns ADD COLUMN allow_unlisted_types boolean NOT NULL DEFAULT false;
ALTER TABLE event_crypto.protected_columns ADD CONSTRAINT protected_unlisted_needs_types
    CHECK (NOT allow_unlisted_types OR type_column IS NOT NULL);
DO $unlisted$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT table_name, column_name, pg_catalog.cardinality(fields) OPERATOR(pg_catalog.>) 0 AS has_common
               FROM event_crypto.protected_columns
              WHERE fields_by_type IS NOT NULL AND NOT fields_by_type OPERATOR(pg_catalog.?) '*' LOOP
        IF r.has_common THEN
            UPDATE event_crypto.protected_columns p SET allow_unlisted_types = true
             WHERE p.table_name OPERATOR(pg_catalog.=) r.table_name AND p.column_name OPERATOR(pg_catalog.=) r.column_name;
            RAISE WARNING 'event_crypto: rows of %.% whose type fields_by_type does not name keep getting the common fields only (allow_unlisted_types)', r.table_name, r.column_name
                USING HINT = 'To refuse them instead, run event_crypto.protect() for it again without allow_unlisted_types (or list their fields under "*").';
        ELSE
            RAISE WARNING 'event_crypto: rows of %.% whose type fields_by_type does not name are now refused (they were stored in plaintext)', r.table_name, r.column_name
                USING HINT = 'List their fields under a "*" entry of fields_by_type, or the types themselves.';
        END IF;
    END LOOP;
END
$unlisted$;
COMMENT ON TABLE event_crypto.protected_columns IS
    'What event_crypto.protect() encrypts on insert and update. Written only by protect() and friends; every row is validated by a trigger.';
COMMENT ON TABLE event_crypto.blind_indexes IS
    'Blind index columns filled by the protect trigger. Written only by add_blind_index() and drop_blind_index(); every row is validated by a trigger.';

-- audit_head: one row per sealing commit (appended, never updated: REPEATABLE READ writers can seal too).
ALTER TABLE event_crypto.audit_head DROP CONSTRAINT audit_head_pkey;
ALTER TABLE event_crypto.audit_head DROP COLUMN singleton;
ALTER TABLE event_crypto.audit_head ADD PRIMARY KEY (seq);
ALTER TABLE event_crypto.audit_head ADD CHECK (seq >= 1);
ALTER TABLE event_crypto.audit_head ADD COLUMN sealed_at timestamptz NOT NULL DEFAULT pg_catalog.now();
COMMENT ON TABLE event_crypto.audit_head IS
    'Every head of the audit chain: the position and hash of the newest sealed row after each commit that sealed rows. The newest is the head.';

-- reencrypt_progress: rows skipped because an envelope in them is not bound to the row
ALTER TABLE event_crypto.reencrypt_progress ADD COLUMN rows_invalid bigint NOT NULL DEFAULT 0;

-- legacy_subject_keys: 0.1.0 named the key generations of subject s "<prefix>s#<n>", so "subject:dave#2" was both
-- dave's second generation and subject "dave#2"'s first key. From 0.2.0 on, '%' and '#' of subject ids are escaped
-- (event_crypto.subject_key_id): a name says whose key it is. A 0.1.0 key id whose name now says otherwise than
-- what 0.1.0 meant by it is recorded here with the subject it belongs to. What 0.1.0 meant: "<prefix>x#<n>" was
-- generation n of x when 0.1.0 would have made it so (x's first key and generations 2 .. n-1 all existed, shredded,
-- before it was made), otherwise the first key of subject "x#<n>".
CREATE TABLE event_crypto.legacy_subject_keys (
    key_id     text    NOT NULL,
    key_prefix text    NOT NULL,
    subject    text    NOT NULL,
    generation integer NOT NULL CHECK (generation >= 1),
    PRIMARY KEY (key_id, key_prefix)
);
CREATE INDEX legacy_subject_keys_subject ON event_crypto.legacy_subject_keys (key_prefix, subject);
COMMENT ON TABLE event_crypto.legacy_subject_keys IS
    'Key ids made before subject ids were escaped, with the subject each belongs to (written by the upgrade from 0.1.0).';
SELECT pg_catalog.pg_extension_config_dump('event_crypto.legacy_subject_keys', '');

-- ---------------------------------------------------------------------------------------------------------------
-- Functions (the C functions are created as a fresh install creates them)
-- ---------------------------------------------------------------------------------------------------------------

CREATE FUNCTION event_crypto."subject_key_id"(
	"key_prefix" TEXT,
	"subject" TEXT,
	"generation" INT DEFAULT 1
) RETURNS TEXT
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'subject_key_id_sql_wrapper';

CREATE FUNCTION event_crypto."subject_of_key_id"(
	"key_prefix" TEXT,
	"key_id" TEXT
) RETURNS TABLE (
	"subject" TEXT,
	"generation" INT
)
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'subject_of_key_id_wrapper';

DO $legacy$
DECLARE
    p text;
    k record;
    rest text;
    x text;
    n integer;
    owner_subject text;
    owner_generation integer;
    chained boolean;
    d record;
BEGIN
    FOR p IN SELECT DISTINCT c.key_prefix FROM event_crypto.protected_columns c WHERE c.key_column IS NOT NULL
             UNION SELECT 'subject:' LOOP
        FOR k IN SELECT g.key_id, pg_catalog.min(g.created_at) AS born FROM event_crypto.keys g
                  WHERE pg_catalog.starts_with(g.key_id, p)
                    AND pg_catalog.substr(g.key_id, pg_catalog.length(p) + 1) ~ '[#%]'
                  GROUP BY g.key_id LOOP
            rest := pg_catalog.substr(k.key_id, pg_catalog.length(p) + 1);
            owner_subject := rest;
            owner_generation := 1;
            IF rest ~ '.#[1-9][0-9]{0,4}$' THEN
                x := pg_catalog.regexp_replace(rest, '#[0-9]+$', '');
                n := pg_catalog.substring(rest, '#([0-9]+)$')::integer;
                chained := n >= 2;
                FOR i IN 1 .. n - 1 LOOP
                    EXIT WHEN NOT chained;
                    -- generation i of x existed, every version of it shredded no later than this key was made
                    chained := EXISTS (SELECT 1 FROM event_crypto.keys g
                                        WHERE g.key_id = p || x || CASE WHEN i = 1 THEN '' ELSE '#' || i END)
                           AND NOT EXISTS (SELECT 1 FROM event_crypto.keys g
                                            WHERE g.key_id = p || x || CASE WHEN i = 1 THEN '' ELSE '#' || i END
                                              AND (g.status <> 'shredded' OR g.shredded_at > k.born));
                END LOOP;
                IF chained THEN
                    owner_subject := x;
                    owner_generation := n;
                END IF;
            END IF;
            SELECT s.subject, s.generation INTO d FROM event_crypto.subject_of_key_id(p, k.key_id) s;
            IF NOT FOUND OR d.subject IS DISTINCT FROM owner_subject OR d.generation IS DISTINCT FROM owner_generation THEN
                INSERT INTO event_crypto.legacy_subject_keys (key_id, key_prefix, subject, generation)
                VALUES (k.key_id, p, owner_subject, owner_generation);
            END IF;
        END LOOP;
    END LOOP;
END
$legacy$;

-- protect() and friends: Rust now; protect() has a new last argument, allow_unlisted_types (issue 12)
DROP FUNCTION event_crypto.protect(regclass, name, text[], text, name, text, name, name, jsonb, text, name);
CREATE FUNCTION event_crypto."protect"(
	"table" regclass,
	"column" name,
	"fields" TEXT[] DEFAULT NULL,
	"key_id" TEXT DEFAULT NULL,
	"key_column" name DEFAULT NULL,
	"key_prefix" TEXT DEFAULT 'subject:',
	"context_column" name DEFAULT NULL,
	"type_column" name DEFAULT NULL,
	"fields_by_type" jsonb DEFAULT NULL,
	"on_forgotten" TEXT DEFAULT 'error',
	"view_name" name DEFAULT NULL,
	"allow_unlisted_types" bool DEFAULT false
) RETURNS event_crypto.protected_columns
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'protect_wrapper';

CREATE OR REPLACE FUNCTION event_crypto."unprotect"(
	"table" regclass,
	"column" name
) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'unprotect_wrapper';
ALTER FUNCTION event_crypto.unprotect(regclass, name) RESET ALL;

CREATE OR REPLACE FUNCTION event_crypto."add_blind_index"(
	"table" regclass,
	"column" name,
	"field" TEXT,
	"target_column" name,
	"key_id" TEXT,
	"normalize" TEXT DEFAULT NULL
) RETURNS event_crypto.blind_indexes
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'add_blind_index_wrapper';
ALTER FUNCTION event_crypto.add_blind_index(regclass, name, text, name, text, text) RESET ALL;

CREATE OR REPLACE FUNCTION event_crypto."drop_blind_index"(
	"table" regclass,
	"target_column" name
) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'drop_blind_index_wrapper';
ALTER FUNCTION event_crypto.drop_blind_index(regclass, name) RESET ALL;

CREATE FUNCTION event_crypto."refresh_decrypted_views"(
	"table" regclass DEFAULT NULL
) RETURNS TABLE (
	"table_name" TEXT,
	"column_name" TEXT,
	"decrypted_view" TEXT,
	"refreshed" bool,
	"reason" TEXT
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'refresh_decrypted_views_wrapper';

CREATE FUNCTION event_crypto."decrypt_row"(
	"payload" jsonb,
	"table" regclass,
	"column" name,
	"key_value" TEXT,
	"context" TEXT,
	"on_shredded" TEXT DEFAULT 'null',
	"on_invalid" TEXT DEFAULT 'null'
) RETURNS jsonb
STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'decrypt_row_wrapper';

-- forget_subject() and export_subject() act on one kind of subject (key prefix) at a time (issue 12)
DROP FUNCTION event_crypto.forget_subject(text);
CREATE FUNCTION event_crypto."forget_subject"(
	"subject" TEXT,
	"key_prefix" TEXT DEFAULT NULL
) RETURNS jsonb
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'forget_subject_wrapper';

DROP FUNCTION event_crypto.export_subject(text);
CREATE FUNCTION event_crypto."export_subject"(
	"subject" TEXT,
	"trust_policies" regclass[] DEFAULT '{}',
	"key_prefix" TEXT DEFAULT NULL
) RETURNS jsonb
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'export_subject_wrapper';

CREATE FUNCTION event_crypto."config_check"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'config_check_wrapper';

-- policies and maintenance: Rust, each action auditing itself; no function writes an audit row its caller describes
CREATE OR REPLACE FUNCTION event_crypto."set_rotation"(
	"key_pattern" TEXT,
	"every" interval
) RETURNS event_crypto.rotation_policies
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'set_rotation_wrapper';
ALTER FUNCTION event_crypto.set_rotation(text, interval) RESET ALL;

CREATE OR REPLACE FUNCTION event_crypto."set_retention"(
	"key_pattern" TEXT DEFAULT NULL,
	"table" regclass DEFAULT NULL,
	"older_than" interval DEFAULT NULL,
	"inactive_for" interval DEFAULT NULL,
	"time_column" name DEFAULT NULL
) RETURNS event_crypto.retention_policies
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'set_retention_wrapper';
ALTER FUNCTION event_crypto.set_retention(text, regclass, interval, interval, name) RESET ALL;

CREATE OR REPLACE FUNCTION event_crypto."drop_retention"(
	"key_pattern" TEXT DEFAULT NULL,
	"table" regclass DEFAULT NULL
) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'drop_retention_wrapper';
ALTER FUNCTION event_crypto.drop_retention(text, regclass) RESET ALL;

CREATE OR REPLACE FUNCTION event_crypto."enforce_retention"(
	"dry_run" bool DEFAULT true
) RETURNS TABLE (
	"policy_id" bigint,
	"key_id" TEXT,
	"subject" TEXT,
	"reason" TEXT,
	"shredded" bool
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'enforce_retention_wrapper';
ALTER FUNCTION event_crypto.enforce_retention(boolean) RESET ALL;

CREATE FUNCTION event_crypto."maintenance_action"(
	"action" TEXT
) RETURNS jsonb
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'maintenance_action_wrapper';

DROP FUNCTION event_crypto.rotate_keys(text[], text);
DROP FUNCTION event_crypto.record_maintenance(text, text[], jsonb);

CREATE OR REPLACE FUNCTION event_crypto.run_maintenance()
    RETURNS TABLE (action text, ok boolean, detail jsonb)
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    FOREACH action IN ARRAY ARRAY['flush_usage', 'usage_rotation', 'scheduled_rotation', 'retention', 'retire'] LOOP
        BEGIN
            detail := event_crypto.maintenance_action(action);
            ok := NOT (detail ? 'failed' OR detail ? 'skipped');
        EXCEPTION WHEN OTHERS THEN
            ok := false;
            detail := jsonb_build_object('sqlstate', SQLSTATE, 'error', SQLERRM);
        END;
        RETURN NEXT;
    END LOOP;
END
$$;

-- re-encryption: one batch runs on the table as its owner (Rust), and counts rows it must leave alone
DROP PROCEDURE event_crypto.reencrypt_table(regclass, name, integer, name, bigint, bigint);
DROP FUNCTION event_crypto.reencrypt_batch(regclass, name, integer, name);
CREATE FUNCTION event_crypto."reencrypt_batch"(
	"table" regclass,
	"column" name,
	"batch_size" INT DEFAULT 1000,
	"context_column" name DEFAULT NULL
) RETURNS TABLE (
	"rows_scanned" bigint,
	"rows_rewritten" bigint,
	"rows_invalid" bigint,
	"finished" bool
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'reencrypt_batch_wrapper';

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

-- the audit chain: sealed at commit by the transaction's pre-commit callback, not by a deferred constraint trigger
DROP TRIGGER audit_seal ON event_crypto.audit_log;
DROP FUNCTION event_crypto.audit_seal();
CREATE FUNCTION event_crypto."audit_pending"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'audit_pending_wrapper';

CREATE OR REPLACE FUNCTION event_crypto.verify_audit_log(OUT ok boolean, OUT rows_checked bigint, OUT first_bad_seq bigint,
                                              OUT problem text, OUT head_seq bigint, OUT head_hash text)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r        event_crypto.audit_log;
    prev     bytea := pg_catalog.decode(pg_catalog.repeat('00', 32), 'hex');
    expected bigint := 1;
    head     record;
    unsealed bigint;
BEGIN
    ok := true;
    rows_checked := 0;
    FOR r IN SELECT * FROM event_crypto.audit_log l WHERE l.seq IS NOT NULL ORDER BY l.seq LOOP
        IF r.seq <> expected THEN
            ok := false; first_bad_seq := expected;
            problem := pg_catalog.format('audit row %s is missing (the next row has position %s)', expected, r.seq);
            EXIT;
        END IF;
        IF r.prev_hash IS DISTINCT FROM prev THEN
            ok := false; first_bad_seq := r.seq;
            problem := pg_catalog.format('audit row %s does not chain to row %s (a row was replaced or removed)', r.seq, r.seq - 1);
            EXIT;
        END IF;
        IF r.row_hash IS DISTINCT FROM event_crypto.audit_chain_hash(prev, event_crypto.audit_content(r)) THEN
            ok := false; first_bad_seq := r.seq;
            problem := pg_catalog.format('audit row %s (id %s) was altered after it was sealed', r.seq, r.id);
            EXIT;
        END IF;
        prev := r.row_hash;
        expected := expected + 1;
        rows_checked := rows_checked + 1;
    END LOOP;
    SELECT h.seq, h.row_hash INTO head FROM event_crypto.audit_head h ORDER BY h.seq DESC LIMIT 1;
    head_seq := head.seq;
    head_hash := pg_catalog.encode(head.row_hash, 'hex');
    IF ok AND (head.seq IS DISTINCT FROM expected - 1 OR head.row_hash IS DISTINCT FROM prev)
       AND NOT (head.seq IS NULL AND rows_checked = 0) THEN
        ok := false; first_bad_seq := expected;
        problem := CASE WHEN head.seq IS NULL THEN 'the audit chain head is missing'
                        ELSE pg_catalog.format('the newest audit rows are missing: the chain head is at position %s, the log ends at %s',
                                               head.seq, expected - 1) END;
    END IF;
    SELECT pg_catalog.count(*) INTO unsealed FROM event_crypto.audit_log l
     WHERE l.seq IS NULL AND pg_catalog.pg_xact_status(l.xact_id) = 'committed';
    IF ok AND unsealed > 0 THEN
        ok := false;
        problem := pg_catalog.format('%s committed audit rows were never sealed (written with triggers disabled)', unsealed);
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------------------------------------
-- Triggers
-- ---------------------------------------------------------------------------------------------------------------

CREATE TRIGGER legacy_subject_keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON event_crypto.legacy_subject_keys
    FOR EACH STATEMENT EXECUTE FUNCTION event_crypto.catalog_changed();
ALTER TABLE event_crypto.legacy_subject_keys ENABLE ALWAYS TRIGGER legacy_subject_keys_changed;
CREATE TRIGGER protected_columns_check BEFORE INSERT OR UPDATE ON event_crypto.protected_columns
    FOR EACH ROW EXECUTE FUNCTION event_crypto.config_check();
CREATE TRIGGER blind_indexes_check BEFORE INSERT OR UPDATE ON event_crypto.blind_indexes
    FOR EACH ROW EXECUTE FUNCTION event_crypto.config_check();
ALTER TABLE event_crypto.protected_columns ENABLE ALWAYS TRIGGER protected_columns_check;
ALTER TABLE event_crypto.blind_indexes ENABLE ALWAYS TRIGGER blind_indexes_check;
CREATE TRIGGER audit_pending AFTER INSERT ON event_crypto.audit_log
    FOR EACH ROW EXECUTE FUNCTION event_crypto.audit_pending();

-- ---------------------------------------------------------------------------------------------------------------
-- Privileges: no role but the catalog owner writes event_crypto's tables any more
-- ---------------------------------------------------------------------------------------------------------------

-- ---------------------------------------------------------------------------------------------------------------
-- Issue 12: nothing lost by mistake
-- ---------------------------------------------------------------------------------------------------------------

-- Retiring a key version first disables it (destroyed by the maintenance run after event_crypto.retire_wait).
ALTER TABLE event_crypto.keys DROP CONSTRAINT keys_status_check;
ALTER TABLE event_crypto.keys ADD CONSTRAINT keys_status_check CHECK (status IN ('active', 'retired', 'disabled', 'shredded'));
ALTER TABLE event_crypto.keys ADD COLUMN destroy_after timestamptz;
ALTER TABLE event_crypto.keys ADD CONSTRAINT keys_disabled_until CHECK ((status = 'disabled') = (destroy_after IS NOT NULL));
ALTER TABLE event_crypto.key_usage ADD COLUMN disabled_decryptions bigint NOT NULL DEFAULT 0 CHECK (disabled_decryptions >= 0);

CREATE OR REPLACE VIEW event_crypto.key_info AS
    SELECT k.key_id, k.version, k.algorithm, k.status, k.master_key_id, k.created_at, k.created_by, k.retired_at,
           k.shredded_at, k.shredded_by, k.wrapped_key IS NOT NULL AS has_key_material,
           COALESCE(u.encryptions, 0) OPERATOR(pg_catalog.+) COALESCE(p.pending, 0) AS encryptions,
           k.destroy_after, COALESCE(u.disabled_decryptions, 0) AS disabled_decryptions
    FROM event_crypto.keys k
    LEFT JOIN event_crypto.key_usage u
           ON u.key_id OPERATOR(pg_catalog.=) k.key_id AND u.version OPERATOR(pg_catalog.=) k.version
    LEFT JOIN event_crypto.usage_pending() p
           ON p.key_id OPERATOR(pg_catalog.=) k.key_id AND p.version OPERATOR(pg_catalog.=) k.version;

CREATE FUNCTION event_crypto."cancel_retire"(
	"key_id" TEXT,
	"version" INT
) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'cancel_retire_wrapper';

CREATE FUNCTION event_crypto."key_version_usage"(
	"key_id" TEXT,
	"version" INT
) RETURNS TABLE (
	"table_name" TEXT,
	"column_name" TEXT,
	"rows" bigint,
	"unreadable" bigint,
	"note" TEXT
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'key_version_usage_wrapper';

-- The configuration follows DROP and RENAME; tables that inherit from protected ones are protected.
CREATE FUNCTION event_crypto."ddl_table_changed"(
	"table" regclass,
	"created" bool DEFAULT false
) RETURNS INT
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'ddl_table_changed_wrapper';

CREATE FUNCTION event_crypto."follow_column_rename"(
	"table" regclass,
	"attnum" INT
) RETURNS TEXT[]
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'follow_column_rename_wrapper';

COMMENT ON FUNCTION event_crypto.run_maintenance() IS
    'Flushes usage counters, rotates key versions past the usage limit or due by schedule, enforces retention, destroys retired key versions whose wait is over.';

-- (sql/ddl.sql)
-- ATTACH / DETACH PARTITION under protected tables (issue 13).
CREATE FUNCTION event_crypto."ddl_partitions_changed"("command" pg_catalog.pg_ddl_command) RETURNS INT
VOLATILE PARALLEL UNSAFE STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'ddl_partitions_changed_wrapper';

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

-- Configuration rows of tables dropped before 0.2.0 pointed at dead OIDs: they go now.
DELETE FROM event_crypto.protected_columns p
 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) p.table_name::pg_catalog.oid);
DELETE FROM event_crypto.retention_policies r
 WHERE r.table_name IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) r.table_name::pg_catalog.oid);
DELETE FROM event_crypto.reencrypt_progress g
 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) g.table_name::pg_catalog.oid);

REVOKE INSERT, UPDATE, DELETE ON event_crypto.protected_columns, event_crypto.blind_indexes,
                                 event_crypto.rotation_policies, event_crypto.retention_policies,
                                 event_crypto.reencrypt_progress
    FROM event_crypto_admin;
REVOKE USAGE ON SEQUENCE event_crypto.retention_policies_id_seq FROM event_crypto_admin;
REVOKE ALL ON ALL TABLES IN SCHEMA event_crypto FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA event_crypto FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA event_crypto FROM PUBLIC;
REVOKE ALL ON ALL PROCEDURES IN SCHEMA event_crypto FROM PUBLIC;
GRANT SELECT ON event_crypto.legacy_subject_keys TO event_crypto_admin;
GRANT EXECUTE ON FUNCTION event_crypto.refresh_decrypted_views(regclass), event_crypto.protect_trigger(),
                          event_crypto.reencrypt_batch(regclass, name, integer, name),
                          event_crypto.maintenance_action(text)
    TO event_crypto_admin;
GRANT EXECUTE ON PROCEDURE event_crypto.reencrypt_table(regclass, name, integer, name, bigint, bigint, bigint)
    TO event_crypto_admin;
GRANT EXECUTE ON FUNCTION event_crypto.subject_key_id(text, text, integer), event_crypto.subject_of_key_id(text, text)
    TO event_crypto_admin, event_crypto_encryptor, event_crypto_decryptor;
GRANT EXECUTE ON FUNCTION event_crypto.decrypt_row(jsonb, regclass, name, text, text, text, text),
                          event_crypto.export_subject(text, regclass[], text)
    TO event_crypto_decryptor;
GRANT EXECUTE ON FUNCTION event_crypto.protect(regclass, name, text[], text, name, text, name, name, jsonb, text, name, boolean),
                          event_crypto.forget_subject(text, text),
                          event_crypto.cancel_retire(text, integer), event_crypto.key_version_usage(text, integer)
    TO event_crypto_admin;

-- The decrypted views protect() made are the users' objects, which an extension script cannot replace: they still
-- call decrypt_fields(), which decrypts an envelope under whatever key it names. Say so.
DO $views$
DECLARE
    n bigint;
BEGIN
    SELECT pg_catalog.count(*) INTO n FROM event_crypto.protected_columns WHERE decrypted_view IS NOT NULL;
    IF n > 0 THEN
        RAISE WARNING 'event_crypto 0.2.0: % decrypted views still decrypt every envelope of a row under any key', n
            USING HINT = 'Run SELECT * FROM event_crypto.refresh_decrypted_views(); to re-create them so that they decrypt each row under its own key only.';
    END IF;
END
$views$;

-- ---------------------------------------------------------------------------------------------------------------
-- issue 12 (keys): a rewrap passes over damaged wrapped keys and reports them (the damaged column), and ends
-- ---------------------------------------------------------------------------------------------------------------
DROP PROCEDURE event_crypto.rewrap_keys(integer, bigint, bigint, bigint);
DROP FUNCTION event_crypto.rewrap_keys_batch(integer);
CREATE FUNCTION event_crypto."rewrap_keys_batch"(
	"batch_size" INT DEFAULT 1000
) RETURNS TABLE (
	"rewrapped" bigint,
	"remaining" bigint,
	"unknown_master" bigint,
	"damaged" bigint
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'rewrap_keys_batch_wrapper';

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
REVOKE ALL ON FUNCTION event_crypto.rewrap_keys_batch(integer) FROM PUBLIC;
REVOKE ALL ON PROCEDURE event_crypto.rewrap_keys(integer, bigint, bigint, bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_crypto.rewrap_keys_batch(integer) TO event_crypto_admin;
GRANT EXECUTE ON PROCEDURE event_crypto.rewrap_keys(integer, bigint, bigint, bigint, bigint) TO event_crypto_admin;

-- ---------------------------------------------------------------------------------------------------------------
-- Citus (issue 13): event_crypto.citus_setup() and event_crypto.citus_sql_drop(), as sql/citus.sql
-- ---------------------------------------------------------------------------------------------------------------
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
REVOKE ALL ON FUNCTION event_crypto.citus_setup() FROM PUBLIC;
REVOKE ALL ON FUNCTION event_crypto.citus_sql_drop() FROM PUBLIC;

-- Citus (issue 13): the coordinator's side of a shard trigger's request for a new key (src/citus.rs). No grant:
-- the workers call it as the catalog's owner, and it checks the inserting role's privileges itself.
CREATE FUNCTION event_crypto."citus_create_key"(
	"table" regclass,
	"column_name" name,
	"key_id" TEXT,
	"inserter" TEXT
) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'citus_create_key_wrapper';
REVOKE ALL ON FUNCTION event_crypto.citus_create_key(regclass, name, text, text) FROM PUBLIC;

-- Issue 14: the parameter "normalize" of blind_index(), add_blind_index() and validate_normalize() is now
-- "normalization" (NORMALIZE is an SQL keyword: `normalize => 'lower'` was a syntax error; positional calls are
-- unchanged). CREATE OR REPLACE cannot rename a parameter, and DROP would fail on the users' views and functions
-- that call blind_index(): the names are set in place (only calls with named arguments use them).
UPDATE pg_catalog.pg_proc SET proargnames = pg_catalog.array_replace(proargnames, 'normalize', 'normalization')
WHERE oid IN ('event_crypto.blind_index(text, text, text)'::pg_catalog.regprocedure,
              'event_crypto.add_blind_index(regclass, name, text, name, text, text)'::pg_catalog.regprocedure,
              'event_crypto.validate_normalize(text)'::pg_catalog.regprocedure);

-- Issue 14 (operations): run_maintenance() is a Rust function that runs each action in its own subtransaction as
-- before and records the run in event_crypto.maintenance_status (sql/maintenance.sql); the stats_* views
-- (sql/stats.sql) give operators key versions by status, usage and nonce budget per key version, shreds, the last
-- maintenance run and the audit chain head.
CREATE OR REPLACE FUNCTION event_crypto."run_maintenance"() RETURNS TABLE (
	"action" TEXT,
	"ok" bool,
	"detail" jsonb
)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'run_maintenance_wrapper';
ALTER FUNCTION event_crypto.run_maintenance() RESET ALL;

-- The last maintenance run (whoever ran it: the background worker, pg_cron, a session), written by
-- run_maintenance() as the extension's owner at the end of each run that could write: its result per action, when
-- a run was last ok and last not ok, and how many runs there were. One row; not dumped (it describes this
-- database's maintenance, not data). event_crypto.stats_maintenance shows it.
CREATE TABLE event_crypto.maintenance_status (
    one              boolean     PRIMARY KEY DEFAULT true CHECK (one),
    runs             bigint      NOT NULL CHECK (runs >= 1),
    -- runs with an action that failed or could not do everything
    runs_not_ok      bigint      NOT NULL CHECK (runs_not_ok >= 0),
    last_started_at  timestamptz NOT NULL,
    last_finished_at timestamptz NOT NULL,
    last_ok          boolean     NOT NULL,
    -- the acting role, and the background worker's type or the session's application_name
    last_run_by      name        NOT NULL,
    last_run_via     text        NOT NULL,
    -- [{"action": ..., "ok": ..., "detail": ...}, ...]: what run_maintenance() returned
    last_result      jsonb       NOT NULL,
    last_ok_at       timestamptz,
    last_not_ok_at   timestamptz
);
COMMENT ON TABLE event_crypto.maintenance_status IS
    'The last maintenance run and its result, with the number of runs (written by run_maintenance()).';

-- Counts still in shared memory per key version, by kind, for the stats views (usage_pending() keeps its 0.1.0 shape
-- for key_info).
CREATE FUNCTION event_crypto."usage_pending_counts"() RETURNS TABLE (
	"key_id" TEXT,
	"version" INT,
	"encryptions" bigint,
	"decryptions" bigint,
	"disabled_decryptions" bigint
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'usage_pending_counts_wrapper';
REVOKE ALL ON FUNCTION event_crypto.usage_pending_counts() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_crypto.usage_pending_counts() TO event_crypto_admin;

-- Fields decrypted per key version, always counted (on the primary).
ALTER TABLE event_crypto.key_usage ADD COLUMN decryptions bigint NOT NULL DEFAULT 0 CHECK (decryptions >= 0);
COMMENT ON TABLE event_crypto.key_usage IS 'Encryptions and decryptions per key version (flushed by the maintenance run).';

-- Per key version: encryptions and decryptions (flushed into key_usage plus those still pending in shared memory),
-- attempts to decrypt under a disabled version, and the share of event_crypto.rotate_after_encryptions used:
-- AES-GCM and ChaCha20-Poly1305 draw random 96-bit nonces, safe for about 2^32 encryptions per key; the maintenance
-- run rotates a version that reaches the setting. Decryptions are the primary's, and statistics (a lower bound:
-- see docs/operations.md). The counts are grouped before they are joined to the key catalog (key versions without
-- counts have zeros), so that a scan of a large catalog hashes the counts, not the catalog.
CREATE VIEW event_crypto.stats_key_versions AS
    SELECT k.key_id, k.version, k.status, k.algorithm, k.created_at,
           COALESCE(n.encryptions, 0) AS encryptions, COALESCE(n.pending_encryptions, 0) AS pending_encryptions,
           COALESCE(n.decryptions, 0) AS decryptions, COALESCE(n.pending_decryptions, 0) AS pending_decryptions,
           COALESCE(n.disabled_decryptions, 0) AS disabled_decryptions, l.rotate_after_encryptions,
           pg_catalog.round(100.0 OPERATOR(pg_catalog.*) COALESCE(n.encryptions, 0)
                            OPERATOR(pg_catalog./) l.rotate_after_encryptions, 3) AS nonce_budget_used_pct
    FROM event_crypto.keys k
    LEFT JOIN (SELECT c.key_id, c.version,
                      pg_catalog.sum(c.encryptions)::pg_catalog.int8 AS encryptions,
                      pg_catalog.sum(c.pending_encryptions)::pg_catalog.int8 AS pending_encryptions,
                      pg_catalog.sum(c.decryptions)::pg_catalog.int8 AS decryptions,
                      pg_catalog.sum(c.pending_decryptions)::pg_catalog.int8 AS pending_decryptions,
                      pg_catalog.sum(c.disabled_decryptions)::pg_catalog.int8 AS disabled_decryptions
               FROM (SELECT u.key_id, u.version, u.encryptions, 0::pg_catalog.int8 AS pending_encryptions,
                            u.decryptions, 0::pg_catalog.int8 AS pending_decryptions, u.disabled_decryptions
                     FROM event_crypto.key_usage u
                     UNION ALL
                     SELECT p.key_id, p.version, p.encryptions, p.encryptions, p.decryptions, p.decryptions,
                            p.disabled_decryptions
                     FROM event_crypto.usage_pending_counts() p) c
               GROUP BY c.key_id, c.version) n
           ON n.key_id OPERATOR(pg_catalog.=) k.key_id AND n.version OPERATOR(pg_catalog.=) k.version
    -- the setting as this session sees it (an integer; through numeric, as 0.1.0 showed it as 2.14748e+09); its default
    -- when the library is not loaded in this session
    CROSS JOIN (SELECT COALESCE(NULLIF(pg_catalog.current_setting('event_crypto.rotate_after_encryptions', true), '')
                                    ::pg_catalog.numeric::pg_catalog.int8,
                                2147483647) AS rotate_after_encryptions) l;
COMMENT ON VIEW event_crypto.stats_key_versions IS
    'Per key version: encryptions and decryptions (flushed and pending), disabled decryption attempts, and the nonce budget used as a percentage of event_crypto.rotate_after_encryptions.';

-- Key versions by status, always one row per status (zero when there is none; a live key id has exactly one active
-- version, so the active row counts live key ids too), with the usage of its versions: encryptions and decryptions
-- (flushed and pending), attempts under disabled versions, the highest share of
-- event_crypto.rotate_after_encryptions a version used, and how many used half of it or all of it (on the active
-- row: due for rotation).
CREATE VIEW event_crypto.stats_keys AS
    SELECT s.status, COALESCE(c.key_versions, 0) AS key_versions, COALESCE(c.encryptions, 0) AS encryptions,
           COALESCE(c.pending_encryptions, 0) AS pending_encryptions,
           COALESCE(c.decryptions, 0) AS decryptions,
           COALESCE(c.disabled_decryptions, 0) AS disabled_decryptions,
           COALESCE(c.nonce_budget_max_used_pct, 0) AS nonce_budget_max_used_pct,
           COALESCE(c.versions_over_half_budget, 0) AS versions_over_half_budget,
           COALESCE(c.versions_at_limit, 0) AS versions_at_limit
    FROM (VALUES (1, 'active'), (2, 'retired'), (3, 'disabled'), (4, 'shredded')) AS s(position, status)
    LEFT JOIN (SELECT v.status, pg_catalog.count(*) AS key_versions,
                      pg_catalog.sum(v.encryptions)::pg_catalog.int8 AS encryptions,
                      pg_catalog.sum(v.pending_encryptions)::pg_catalog.int8 AS pending_encryptions,
                      pg_catalog.sum(v.decryptions)::pg_catalog.int8 AS decryptions,
                      pg_catalog.sum(v.disabled_decryptions)::pg_catalog.int8 AS disabled_decryptions,
                      pg_catalog.max(v.nonce_budget_used_pct) AS nonce_budget_max_used_pct,
                      pg_catalog.count(*) FILTER (WHERE v.encryptions OPERATOR(pg_catalog.*) 2
                                                        OPERATOR(pg_catalog.>=) v.rotate_after_encryptions)
                          AS versions_over_half_budget,
                      pg_catalog.count(*) FILTER (WHERE v.encryptions OPERATOR(pg_catalog.>=) v.rotate_after_encryptions)
                          AS versions_at_limit
               FROM event_crypto.stats_key_versions v
               GROUP BY v.status) c
           ON c.status OPERATOR(pg_catalog.=) s.status
    ORDER BY s.position;
COMMENT ON VIEW event_crypto.stats_keys IS
    'Key versions by status, with their encryptions, decryptions, disabled decryption attempts and nonce budget (the highest share of event_crypto.rotate_after_encryptions used, versions past half of it and at it).';

-- Shredding: key ids shredded whole (shred_key, forget_subject, retention: no version left) and when the last
-- was; apart from them, single versions destroyed by retirement while their key id lives on.
CREATE VIEW event_crypto.stats_shreds AS
    WITH shredded AS MATERIALIZED (
        SELECT k.key_id, k.shredded_at,
               NOT EXISTS (SELECT 1 FROM event_crypto.keys l
                           WHERE l.key_id OPERATOR(pg_catalog.=) k.key_id
                             AND l.status OPERATOR(pg_catalog.<>) 'shredded') AS whole
        FROM event_crypto.keys k WHERE k.status OPERATOR(pg_catalog.=) 'shredded')
    SELECT pg_catalog.count(DISTINCT s.key_id) FILTER (WHERE s.whole) AS shredded_key_ids,
           pg_catalog.max(s.shredded_at) FILTER (WHERE s.whole) AS last_shred_at,
           pg_catalog.count(*) FILTER (WHERE NOT s.whole) AS destroyed_versions,
           pg_catalog.max(s.shredded_at) FILTER (WHERE NOT s.whole) AS last_destroyed_at
    FROM shredded s;
COMMENT ON VIEW event_crypto.stats_shreds IS
    'Key ids shredded whole and the time of the last shred; key versions destroyed by retirement.';

-- The last maintenance run (one row, also before the first run: runs = 0 and the rest NULL).
CREATE VIEW event_crypto.stats_maintenance AS
    SELECT COALESCE(m.runs, 0) AS runs, COALESCE(m.runs_not_ok, 0) AS runs_not_ok,
           m.last_started_at, m.last_finished_at,
           pg_catalog.date_part('epoch', m.last_finished_at OPERATOR(pg_catalog.-) m.last_started_at) AS last_duration_seconds,
           m.last_ok,
           ARRAY(SELECT r.value OPERATOR(pg_catalog.->>) 'action'
                 FROM pg_catalog.jsonb_array_elements(m.last_result) AS r(value)
                 WHERE (r.value OPERATOR(pg_catalog.->>) 'ok') OPERATOR(pg_catalog.=) 'false') AS last_not_ok_actions,
           m.last_run_by, m.last_run_via, m.last_result, m.last_ok_at, m.last_not_ok_at
    FROM (VALUES (true)) AS o(one)
    LEFT JOIN event_crypto.maintenance_status m ON m.one;
COMMENT ON VIEW event_crypto.stats_maintenance IS
    'The last maintenance run: when, how long, whether every action was ok (and which were not), who ran it and how; runs counted.';

-- The head of the audit chain: the position and a prefix of the hash of the newest sealed row (verify_audit_log()
-- gives the whole hash after walking the chain), and when it was sealed.
CREATE VIEW event_crypto.stats_audit AS
    SELECT h.seq AS head_seq, pg_catalog.left(pg_catalog.encode(h.row_hash, 'hex'), 16) AS head_hash_prefix,
           h.sealed_at AS head_sealed_at
    FROM (VALUES (true)) AS o(one)
    LEFT JOIN LATERAL (SELECT a.seq, a.row_hash, a.sealed_at FROM event_crypto.audit_head a
                       ORDER BY a.seq DESC LIMIT 1) h ON o.one;
COMMENT ON VIEW event_crypto.stats_audit IS
    'The audit chain head: position, hash prefix (16 hex digits) and when it was sealed.';

REVOKE ALL ON event_crypto.maintenance_status, event_crypto.stats_keys, event_crypto.stats_key_versions,
              event_crypto.stats_shreds, event_crypto.stats_maintenance, event_crypto.stats_audit FROM PUBLIC;
GRANT SELECT ON event_crypto.maintenance_status, event_crypto.stats_keys, event_crypto.stats_key_versions,
                event_crypto.stats_shreds, event_crypto.stats_maintenance, event_crypto.stats_audit
    TO event_crypto_admin;
