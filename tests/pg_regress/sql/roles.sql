-- Issue 11, item 12: every function and procedure of event_crypto called as each role: a role with no event_crypto
-- role, the admin, the encryptor and the decryptor (none of them a superuser). Each call is a valid one; the
-- matrix shows who may make it: ok, or the SQLSTATE. The documented roles are sufficient: a non-superuser admin
-- protects tables (it needs TRIGGER on them and CREATE on their schema), and an application without any
-- event_crypto role (or USAGE on its schema) inserts into protected tables.
\set VERBOSITY sqlstate
BEGIN;
CREATE ROLE r_nobody;
CREATE ROLE r_admin IN ROLE event_crypto_admin;
CREATE ROLE r_enc IN ROLE event_crypto_encryptor;
CREATE ROLE r_dec IN ROLE event_crypto_decryptor;
GRANT CREATE ON SCHEMA public TO r_admin;
SELECT event_crypto.create_key('r:k');
SELECT event_crypto.create_key('r:ret');
SELECT event_crypto.rotate_key('r:ret');
SELECT event_crypto.create_key('r:s-' || r) FROM unnest(ARRAY['r_nobody', 'r_admin', 'r_enc', 'r_dec']) r;
CREATE TABLE r_t (id serial PRIMARY KEY, subject text, payload jsonb, idx text, idx2 text, at timestamptz DEFAULT now());
CREATE TABLE r_t2 (id serial PRIMARY KEY, subject text, payload jsonb);
GRANT ALL ON r_t, r_t2 TO PUBLIC;
GRANT USAGE ON SEQUENCE r_t_id_seq TO PUBLIC;
SELECT count(*) FROM event_crypto.protect('r_t', 'payload', fields => ARRAY['email'], key_column => 'subject');
SELECT count(*) FROM event_crypto.add_blind_index('r_t', 'payload', 'email', 'idx2', 'r:k');
GRANT SELECT ON r_t_decrypted TO PUBLIC;
CREATE TABLE r_v AS SELECT event_crypto.encrypt_value('"v"', 'r:k') AS e;
GRANT SELECT ON r_v TO PUBLIC;
-- the application: no event_crypto role, no USAGE on schema event_crypto
SET ROLE r_nobody;
INSERT INTO r_t (subject, payload) VALUES ('r-subject', '{"email": "r@x.io"}');
RESET ROLE;
SELECT payload->>'email' LIKE '$ec2$%' AS encrypted FROM r_t;

CREATE TEMP TABLE calls (n serial, call text);
INSERT INTO calls (call) VALUES
    ('SELECT event_crypto.create_key(''r:c-'' || current_user)'),
    ('SELECT event_crypto.rotate_key(''r:k'')'),
    ('SELECT event_crypto.shred_key(''r:s-'' || current_user)'),
    ('SELECT event_crypto.master_key_id()'),
    ('SELECT * FROM event_crypto.master_key_status()'),
    ('SELECT * FROM event_crypto.rewrap_keys_batch()'),
    ('CALL event_crypto.rewrap_keys()'),
    ('SELECT * FROM event_crypto.verify_audit_log()'),
    ('SELECT event_crypto.protect(''r_t2'', ''payload'', fields => ARRAY[''email''], key_column => ''subject'')'),
    ('SELECT event_crypto.add_blind_index(''r_t'', ''payload'', ''email'', ''idx'', ''r:k'')'),
    ('SELECT event_crypto.drop_blind_index(''r_t'', ''idx'')'),
    ('SELECT event_crypto.unprotect(''r_t2'', ''payload'')'),
    ('SELECT event_crypto.validate_fields(''{a.b, c[*]}'')'),
    ('SELECT event_crypto.validate_normalize(''lower'')'),
    ('SELECT event_crypto.forget_subject(''r-gone-'' || current_user)'),
    ('SELECT event_crypto.retire_key_version(''r:ret'', 1, force => true)'),
    ('SELECT * FROM event_crypto.reencrypt_batch(''r_t'', ''payload'')'),
    ('CALL event_crypto.reencrypt_table(''r_t'', ''payload'')'),
    ('SELECT event_crypto.reencrypt_end(''r_t'')'),
    ('SELECT event_crypto.set_rotation(''r:%'', ''1 year'')'),
    ('SELECT event_crypto.set_retention(''r:%'', older_than => ''100 years'')'),
    ('SELECT event_crypto.drop_retention(''r:%'')'),
    ('SELECT * FROM event_crypto.enforce_retention()'),
    ('SELECT * FROM event_crypto.run_maintenance()'),
    ('SELECT event_crypto.maintenance_action(''flush_usage'')'),
    ('SELECT event_crypto.flush_usage()'),
    ('SELECT event_crypto.usage_tracking()'),
    ('SELECT * FROM event_crypto.usage_pending()'),
    ('SELECT * FROM event_crypto.usage_pending_counts()'),
    ('SELECT event_crypto.reencrypt_fields(payload) FROM r_t'),
    ('SELECT event_crypto.needs_reencryption(payload) FROM r_t'),
    ('SELECT event_crypto.uses_key_version(payload, ''r:k'', 1) FROM r_t'),
    ('SELECT event_crypto.subject_key_id(''subject:'', ''x'')'),
    ('SELECT * FROM event_crypto.subject_of_key_id(''subject:'', ''subject:x'')'),
    ('SELECT event_crypto.encrypt_fields(''{"a": 1}'', ''{a}'', ''r:k'')'),
    ('SELECT event_crypto.encrypt_value(''1'', ''r:k'')'),
    ('SELECT event_crypto.blind_index(''x'', ''r:k'')'),
    ('SELECT event_crypto.decrypt_fields(payload) FROM r_t'),
    ('SELECT event_crypto.decrypt_value(e) FROM r_v'),
    ('SELECT event_crypto.decrypt_row(payload, ''r_t'', ''payload'', subject, NULL) FROM r_t'),
    ('SELECT * FROM r_t_decrypted'),
    ('SELECT event_crypto.export_subject(''r-subject'')'),
    ('SELECT event_crypto.key_id_digest(''r:k'')'),
    ('SELECT event_crypto.was_forgotten(''r-subject'')'),
    ('SELECT event_crypto.verify_forget_receipt(''r-subject'', ''{}'')'),
    ('SELECT count(*) FROM event_crypto.key_info'),
    ('SELECT count(*) FROM event_crypto.keys'),
    ('SELECT count(*) FROM event_crypto.audit_log'),
    ('SELECT count(*) FROM event_crypto.protected_columns'),
    ('INSERT INTO r_t (subject, payload) VALUES (''r-'' || current_user, ''{"email": "x@x.io"}'')');
CREATE TEMP TABLE outcome (n int, role text, result text);
GRANT ALL ON outcome TO PUBLIC;
DO $$
DECLARE
    c record;
    r text;
    res text;
BEGIN
    FOR c IN SELECT * FROM calls ORDER BY n LOOP
        FOREACH r IN ARRAY ARRAY['r_nobody', 'r_admin', 'r_enc', 'r_dec'] LOOP
            BEGIN
                EXECUTE format('SET LOCAL ROLE %I', r);
                EXECUTE c.call;
                res := 'ok';
                RESET ROLE;
            EXCEPTION WHEN OTHERS THEN
                res := SQLSTATE;
            END;
            INSERT INTO outcome VALUES (c.n, r, res);
        END LOOP;
    END LOOP;
END
$$;
SELECT c.call,
       max(o.result) FILTER (WHERE o.role = 'r_nobody') AS nobody,
       max(o.result) FILTER (WHERE o.role = 'r_admin') AS admin,
       max(o.result) FILTER (WHERE o.role = 'r_enc') AS encryptor,
       max(o.result) FILTER (WHERE o.role = 'r_dec') AS decryptor
FROM calls c JOIN outcome o USING (n) GROUP BY c.n, c.call ORDER BY c.n;
ROLLBACK;
