-- Usage counts, rotation and retention policies, and run_maintenance(): what the background worker (or pg_cron)
-- runs every event_crypto.worker_interval.

-- Encryptions per key version, moved here from shared memory by event_crypto.flush_usage().
CREATE TABLE event_crypto.key_usage (
    key_id      text        NOT NULL,
    version     integer     NOT NULL,
    encryptions bigint      NOT NULL DEFAULT 0 CHECK (encryptions >= 0),
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (key_id, version)
);
COMMENT ON TABLE event_crypto.key_usage IS 'Encryptions per key version (flushed by the maintenance run).';
SELECT pg_catalog.pg_extension_config_dump('event_crypto.key_usage', '');

CREATE VIEW event_crypto.key_info AS
    SELECT k.key_id, k.version, k.algorithm, k.status, k.master_key_id, k.created_at, k.created_by, k.retired_at,
           k.shredded_at, k.shredded_by, k.wrapped_key IS NOT NULL AS has_key_material,
           COALESCE(u.encryptions, 0) OPERATOR(pg_catalog.+) COALESCE(p.pending, 0) AS encryptions
    FROM event_crypto.keys k
    LEFT JOIN event_crypto.key_usage u
           ON u.key_id OPERATOR(pg_catalog.=) k.key_id AND u.version OPERATOR(pg_catalog.=) k.version
    LEFT JOIN event_crypto.usage_pending() p
           ON p.key_id OPERATOR(pg_catalog.=) k.key_id AND p.version OPERATOR(pg_catalog.=) k.version;
COMMENT ON VIEW event_crypto.key_info IS
    'The key catalog without the wrapped key material, with the encryptions counted per version (flushed and pending).';

-- Scheduled rotation: active versions of key ids matching key_pattern (LIKE) older than rotate_every are rotated.
CREATE TABLE event_crypto.rotation_policies (
    key_pattern  text        PRIMARY KEY CHECK (key_pattern <> ''),
    rotate_every interval    NOT NULL CHECK (rotate_every > interval '0'),
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by   name        NOT NULL DEFAULT CURRENT_USER
);
COMMENT ON TABLE event_crypto.rotation_policies IS 'Scheduled rotation: key ids LIKE key_pattern are rotated every rotate_every.';
SELECT pg_catalog.pg_extension_config_dump('event_crypto.rotation_policies', '');

-- Sets (or, with every => NULL, removes) the rotation schedule of the key ids matching a LIKE pattern.
CREATE FUNCTION event_crypto.set_rotation(key_pattern text, every interval)
    RETURNS event_crypto.rotation_policies
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r event_crypto.rotation_policies;
BEGIN
    IF key_pattern IS NULL THEN
        RAISE EXCEPTION 'key_pattern must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF key_pattern = '' THEN
        RAISE EXCEPTION 'key_pattern must not be empty' USING ERRCODE = '22023', HINT = 'Use ''%'' for every key id.';
    END IF;
    IF every IS NULL THEN
        DELETE FROM event_crypto.rotation_policies p WHERE p.key_pattern = set_rotation.key_pattern;
        RETURN NULL;
    END IF;
    IF every <= interval '0' THEN
        RAISE EXCEPTION 'the rotation interval must be positive' USING ERRCODE = '22023';
    END IF;
    INSERT INTO event_crypto.rotation_policies AS p (key_pattern, rotate_every) VALUES (key_pattern, every)
    ON CONFLICT ON CONSTRAINT rotation_policies_pkey
        DO UPDATE SET rotate_every = EXCLUDED.rotate_every, created_at = now(), created_by = CURRENT_USER
    RETURNING * INTO r;
    RETURN r;
END
$$;

-- Retention: shred keys older than older_than (key_pattern), or, per protected table keyed by subject, forget
-- subjects whose key is older than older_than or who have had no event for inactive_for (by time_column).
CREATE TABLE event_crypto.retention_policies (
    id           bigserial   PRIMARY KEY,
    key_pattern  text        CHECK (key_pattern <> ''),
    table_name   regclass,
    older_than   interval    CHECK (older_than > interval '0'),
    inactive_for interval    CHECK (inactive_for > interval '0'),
    time_column  name,
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by   name        NOT NULL DEFAULT CURRENT_USER,
    CONSTRAINT retention_one_target CHECK ((key_pattern IS NULL) <> (table_name IS NULL)),
    CONSTRAINT retention_some_limit CHECK (older_than IS NOT NULL OR inactive_for IS NOT NULL),
    CONSTRAINT retention_inactivity_needs_table CHECK (inactive_for IS NULL OR (table_name IS NOT NULL AND time_column IS NOT NULL))
);
CREATE UNIQUE INDEX retention_policies_pattern ON event_crypto.retention_policies (key_pattern) WHERE key_pattern IS NOT NULL;
CREATE UNIQUE INDEX retention_policies_table ON event_crypto.retention_policies (table_name) WHERE table_name IS NOT NULL;
COMMENT ON TABLE event_crypto.retention_policies IS 'Retention: which keys or subjects enforce_retention() shreds.';
SELECT pg_catalog.pg_extension_config_dump('event_crypto.retention_policies', '');
SELECT pg_catalog.pg_extension_config_dump('event_crypto.retention_policies_id_seq', '');

CREATE FUNCTION event_crypto.set_retention(key_pattern text DEFAULT NULL, "table" regclass DEFAULT NULL,
                                           older_than interval DEFAULT NULL, inactive_for interval DEFAULT NULL,
                                           time_column name DEFAULT NULL)
    RETURNS event_crypto.retention_policies
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r event_crypto.retention_policies;
BEGIN
    IF (key_pattern IS NULL) = ("table" IS NULL) THEN
        RAISE EXCEPTION 'give either key_pattern or table' USING ERRCODE = '22023';
    END IF;
    IF key_pattern = '' THEN
        RAISE EXCEPTION 'key_pattern must not be empty' USING ERRCODE = '22023';
    END IF;
    IF older_than IS NULL AND inactive_for IS NULL THEN
        RAISE EXCEPTION 'give older_than, inactive_for or both' USING ERRCODE = '22023',
              HINT = 'Use event_crypto.drop_retention() to remove a policy.';
    END IF;
    IF older_than <= interval '0' OR inactive_for <= interval '0' THEN
        RAISE EXCEPTION 'retention intervals must be positive' USING ERRCODE = '22023';
    END IF;
    IF inactive_for IS NOT NULL AND ("table" IS NULL OR time_column IS NULL) THEN
        RAISE EXCEPTION 'inactive_for needs a table and its time_column' USING ERRCODE = '22023';
    END IF;
    IF "table" IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM event_crypto.protected_columns c
                       WHERE c.table_name = "table" AND c.key_column IS NOT NULL) THEN
            RAISE EXCEPTION '% is not protected with a key per subject', "table" USING ERRCODE = '55000',
                  HINT = 'Call event_crypto.protect() with key_column first.';
        END IF;
        IF time_column IS NOT NULL AND NOT EXISTS (
               SELECT 1 FROM pg_attribute a WHERE a.attrelid = "table" AND a.attname = time_column
                  AND a.attnum > 0 AND NOT a.attisdropped
                  AND a.atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype)) THEN
            RAISE EXCEPTION 'column "%" of % does not exist or is not a timestamp or date', time_column, "table"
                  USING ERRCODE = '42703';
        END IF;
    END IF;
    DELETE FROM event_crypto.retention_policies p
     WHERE p.key_pattern = set_retention.key_pattern OR p.table_name = set_retention."table";
    INSERT INTO event_crypto.retention_policies (key_pattern, table_name, older_than, inactive_for, time_column)
    VALUES (key_pattern, "table", older_than, inactive_for, time_column) RETURNING * INTO r;
    RETURN r;
END
$$;

CREATE FUNCTION event_crypto.drop_retention(key_pattern text DEFAULT NULL, "table" regclass DEFAULT NULL)
    RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (key_pattern IS NULL) = ("table" IS NULL) THEN
        RAISE EXCEPTION 'give either key_pattern or table' USING ERRCODE = '22023';
    END IF;
    DELETE FROM event_crypto.retention_policies p
     WHERE p.key_pattern = drop_retention.key_pattern OR p.table_name = drop_retention."table";
    RETURN FOUND;
END
$$;

-- What the retention policies shred now (dry_run => false) or would (the default). Key policies shred the key
-- id; table policies forget the subject (every key generation, blind index values cleared). One audit row per
-- run that shredded anything, besides the rows of each shred and forget.
CREATE FUNCTION event_crypto.enforce_retention(dry_run boolean DEFAULT true)
    RETURNS TABLE (policy_id bigint, key_id text, subject text, reason text, shredded boolean)
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pol     event_crypto.retention_policies;
    cfg     event_crypto.protected_columns;
    r       record;
    -- a policy's candidates: key id, subject (NULL for key-pattern policies), why
    c_keys  text[];
    c_subj  text[];
    c_why   text[];
    done    text[] := '{}';
    keys    text[] := '{}';
BEGIN
    IF dry_run IS NULL THEN
        RAISE EXCEPTION 'dry_run must not be NULL' USING ERRCODE = '22004';
    END IF;
    FOR pol IN SELECT * FROM event_crypto.retention_policies ORDER BY id LOOP
        c_keys := '{}';
        c_subj := '{}';
        c_why := '{}';
        IF pol.key_pattern IS NOT NULL THEN
            SELECT COALESCE(array_agg(k.key_id ORDER BY k.key_id), '{}'),
                   COALESCE(array_agg(NULL::text ORDER BY k.key_id), '{}'),
                   COALESCE(array_agg(format('key created %s, more than %s ago', k.born, pol.older_than) ORDER BY k.key_id), '{}')
              INTO c_keys, c_subj, c_why
              FROM (SELECT k.key_id, min(k.created_at) AS born FROM event_crypto.keys k
                     WHERE k.key_id LIKE pol.key_pattern GROUP BY k.key_id) k
             WHERE k.born < now() - pol.older_than;
        ELSE
            SELECT * INTO cfg FROM event_crypto.protected_columns c
             WHERE c.table_name = pol.table_name AND c.key_column IS NOT NULL ORDER BY c.column_name LIMIT 1;
            CONTINUE WHEN NOT FOUND;   -- unprotected since the policy was set: nothing to decide by
            IF pol.inactive_for IS NOT NULL THEN
                FOR r IN EXECUTE format('SELECT t.%1$I::pg_catalog.text AS subj, max(t.%2$I)::pg_catalog.timestamptz AS last '
                                        'FROM %3$s t WHERE t.%1$I IS NOT NULL GROUP BY 1 '
                                        'HAVING max(t.%2$I)::pg_catalog.timestamptz < now() - $1 ORDER BY 1',
                                        cfg.key_column, pol.time_column, pol.table_name)
                         USING pol.inactive_for LOOP
                    c_keys := c_keys || (cfg.key_prefix || r.subj);
                    c_subj := c_subj || r.subj;
                    c_why := c_why || format('no event since %s, more than %s ago', r.last, pol.inactive_for);
                END LOOP;
            END IF;
            IF pol.older_than IS NOT NULL THEN
                FOR r IN EXECUTE format('SELECT s.subj, k.born FROM (SELECT DISTINCT t.%1$I::pg_catalog.text AS subj FROM %2$s t '
                                        'WHERE t.%1$I IS NOT NULL) s '
                                        'JOIN (SELECT k.key_id, min(k.created_at) AS born FROM event_crypto.keys k GROUP BY 1) k '
                                        '  ON k.key_id = $1 || s.subj WHERE k.born < now() - $2 ORDER BY 1',
                                        cfg.key_column, pol.table_name)
                         USING cfg.key_prefix, pol.older_than LOOP
                    c_keys := c_keys || (cfg.key_prefix || r.subj);
                    c_subj := c_subj || r.subj;
                    c_why := c_why || format('key created %s, more than %s ago', r.born, pol.older_than);
                END LOOP;
            END IF;
        END IF;
        -- One decision for every candidate: once per key id, only while the key is live; a subject is forgotten
        -- (every key generation, blind index values cleared), a key id of a key-pattern policy is shredded.
        policy_id := pol.id;
        FOR r IN SELECT * FROM unnest(c_keys, c_subj, c_why) AS c(kid, subj, why) LOOP
            CONTINUE WHEN r.kid = ANY (done) OR NOT EXISTS (
                SELECT 1 FROM event_crypto.keys k WHERE k.key_id = r.kid AND k.status <> 'shredded');
            done := done || r.kid;
            key_id := r.kid;
            subject := r.subj;
            reason := r.why;
            shredded := NOT dry_run;
            IF NOT dry_run THEN
                IF r.subj IS NULL THEN
                    PERFORM event_crypto.shred_key(r.kid);
                ELSE
                    PERFORM event_crypto.forget_subject(r.subj);
                END IF;
                keys := keys || r.kid;
            END IF;
            RETURN NEXT;
        END LOOP;
    END LOOP;
    IF cardinality(keys) > 0 THEN
        PERFORM event_crypto.record_maintenance('enforce_retention', keys,
                                                jsonb_build_object('shredded', cardinality(keys)));
    END IF;
END
$$;

-- Rotates each key id (a failure is recorded and the others still rotate) and audits the batch as `reason`.
CREATE FUNCTION event_crypto.rotate_keys(key_ids text[], reason text) RETURNS jsonb
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kid    text;
    done   text[] := '{}';
    failed jsonb := '{}';
BEGIN
    FOREACH kid IN ARRAY key_ids LOOP
        BEGIN
            PERFORM event_crypto.rotate_key(kid);
            done := done || kid;
        EXCEPTION WHEN OTHERS THEN
            failed := failed || jsonb_build_object(kid, SQLERRM);
        END;
    END LOOP;
    IF cardinality(done) > 0 THEN
        PERFORM event_crypto.record_maintenance(reason, done, '{}');
    END IF;
    RETURN jsonb_build_object('rotated', cardinality(done))
           || CASE WHEN failed = '{}' THEN '{}' ELSE jsonb_build_object('failed', failed) END;
END
$$;

-- One maintenance run: flush usage counters, rotate key versions past the usage limit, rotate on schedule,
-- enforce retention. Each action runs in its own subtransaction: a failure is reported in its row (and logged by
-- the worker) and the other actions still run. Rotations are capped at 1,000 key ids per action and run.
CREATE FUNCTION event_crypto.run_maintenance()
    RETURNS TABLE (action text, ok boolean, detail jsonb)
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    lim     float8 := COALESCE(pg_catalog.current_setting('event_crypto.rotate_after_encryptions', true)::float8, 2147483648);
BEGIN
    FOREACH action IN ARRAY ARRAY['flush_usage', 'usage_rotation', 'scheduled_rotation', 'retention'] LOOP
        BEGIN
            detail := CASE action
                WHEN 'flush_usage' THEN event_crypto.flush_usage()
                WHEN 'usage_rotation' THEN event_crypto.rotate_keys(ARRAY(
                        SELECT k.key_id FROM event_crypto.key_usage u
                          JOIN event_crypto.keys k ON k.key_id = u.key_id AND k.version = u.version
                         WHERE k.status = 'active' AND u.encryptions >= lim ORDER BY 1 LIMIT 1000), action)
                    || jsonb_build_object('limit', lim)
                WHEN 'scheduled_rotation' THEN event_crypto.rotate_keys(ARRAY(
                        SELECT k.key_id FROM event_crypto.keys k
                         WHERE k.status = 'active'
                           AND EXISTS (SELECT 1 FROM event_crypto.rotation_policies p
                                        WHERE k.key_id LIKE p.key_pattern AND k.created_at <= now() - p.rotate_every)
                         ORDER BY k.created_at LIMIT 1000), action)
                WHEN 'retention' THEN (SELECT jsonb_build_object('shredded', count(*))
                                         FROM event_crypto.enforce_retention(false))
            END;
            ok := NOT detail ? 'failed';
        EXCEPTION WHEN OTHERS THEN
            ok := false;
            detail := jsonb_build_object('sqlstate', SQLSTATE, 'error', SQLERRM);
        END;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION event_crypto.run_maintenance() IS
    'Flushes usage counters, rotates key versions past the usage limit or due by schedule, enforces retention.';
