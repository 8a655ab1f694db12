-- The audit log's hash chain and its guard. The content that is hashed: every column but the hashes, as a jsonb
-- array in its canonical text form, the time as seconds since the epoch (independent of TimeZone and DateStyle).
CREATE FUNCTION event_crypto.audit_content(r event_crypto.audit_log) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.jsonb_build_array(r.seq, r.id, pg_catalog.date_part('epoch', r.at)::pg_catalog.text, r.actor,
                                        r.session_actor, r.action, r.subject, r.key_ids, r.details,
                                        r.xact_id::pg_catalog.text)::pg_catalog.text
$$;

-- Sealing happens at commit, in the writing transaction's pre-commit callback (src/audit.rs): the AFTER INSERT
-- trigger audit_pending (see privileges.sql) remembers each new row, whoever inserts it.

-- Append-only: UPDATE, DELETE and TRUNCATE are refused unless the current role is a superuser (the seal runs as
-- the extension's owner, a superuser). Nobody else is granted them either; this also holds if someone is.
CREATE FUNCTION event_crypto.audit_append_only() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT COALESCE((SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER), false) THEN
        RAISE EXCEPTION 'event_crypto audit log is append-only'
            USING ERRCODE = '42501',
                  DETAIL = pg_catalog.format('%s on %s is refused for role %s.', TG_OP, TG_TABLE_NAME, CURRENT_USER),
                  HINT = 'Audit rows are never changed or removed; only a superuser can, and verify_audit_log() detects it.';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON event_crypto.audit_log
    FOR EACH ROW EXECUTE FUNCTION event_crypto.audit_append_only();
CREATE TRIGGER audit_append_only_truncate BEFORE TRUNCATE ON event_crypto.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION event_crypto.audit_append_only();
CREATE TRIGGER audit_head_append_only BEFORE UPDATE OR DELETE ON event_crypto.audit_head
    FOR EACH ROW EXECUTE FUNCTION event_crypto.audit_append_only();
CREATE TRIGGER audit_head_append_only_truncate BEFORE TRUNCATE ON event_crypto.audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION event_crypto.audit_append_only();

-- Walks the chain in position order; stops at the first break and says what it is. head_hash is worth recording
-- outside the database (a superuser can rewrite the whole chain; an externally kept head shows that too).
CREATE FUNCTION event_crypto.verify_audit_log(OUT ok boolean, OUT rows_checked bigint, OUT first_bad_seq bigint,
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
COMMENT ON FUNCTION event_crypto.verify_audit_log() IS
    'Checks the audit log''s hash chain: ok, rows checked, the first broken position and what is wrong, and the chain head.';
