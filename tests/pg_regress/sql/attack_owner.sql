-- Issue 11, item 1 (and 4, 5, 6): code a table's owner controls never runs with more rights than the owner has.
-- forget_subject, export_subject, retire_key_version, enforce_retention and reencrypt_batch work on a table as its
-- owner in a security-restricted operation, after checking the caller's own privileges; a table that cannot be
-- handled is skipped and reported, never allowed to stop erasure of every subject.
--
-- ao_owner owns the tables and writes their triggers, policies and casts; it has no event_crypto role. Its code
-- tries to use whatever rights it runs with and writes down who it ran as (app.stolen).
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
CREATE ROLE ao_owner;
CREATE ROLE ao_admin IN ROLE event_crypto_admin;        -- an administrator that is not a superuser
CREATE ROLE ao_reader IN ROLE event_crypto_decryptor;
CREATE ROLE ao_app;                                      -- the application: no event_crypto role at all
CREATE SCHEMA app AUTHORIZATION ao_owner;
GRANT USAGE ON SCHEMA app TO ao_admin, ao_reader, ao_app;
GRANT CREATE ON SCHEMA app TO ao_admin;                  -- for the decrypted view protect() creates
SELECT event_crypto.create_key('subject:victim');

SET ROLE ao_owner;
CREATE TABLE app.stolen (who name, what text);
GRANT INSERT ON app.stolen TO PUBLIC;
-- a subject id type with a cast to text the owner wrote (the old export compared key_column::text)
CREATE TYPE app.sid AS ENUM ('alice', 'bob', 'carol');
CREATE FUNCTION app.sid_text(s app.sid) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO app.stolen VALUES (current_user, 'cast ran');
    RETURN pg_catalog.format('%s', s);
END $$;
CREATE CAST (app.sid AS text) WITH FUNCTION app.sid_text(app.sid);
CREATE TABLE app.t5 (id serial PRIMARY KEY, subject app.sid, payload jsonb, email_idx text, at timestamptz DEFAULT now());
-- a statement trigger that tries to become superuser and to shred another subject's key
CREATE FUNCTION app.pwn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        EXECUTE 'ALTER ROLE ao_owner SUPERUSER';
        INSERT INTO app.stolen VALUES (current_user, 'became superuser');
    EXCEPTION WHEN OTHERS THEN
        INSERT INTO app.stolen VALUES (current_user, 'ALTER ROLE refused: ' || SQLSTATE);
    END;
    BEGIN
        PERFORM event_crypto.shred_key('subject:victim');
        INSERT INTO app.stolen VALUES (current_user, 'shredded subject:victim');
    EXCEPTION WHEN OTHERS THEN
        INSERT INTO app.stolen VALUES (current_user, 'shred_key refused: ' || SQLSTATE);
    END;
    RETURN NULL;
END $$;
CREATE TRIGGER a_pwn BEFORE UPDATE ON app.t5 FOR EACH STATEMENT EXECUTE FUNCTION app.pwn();
-- a row-level security policy that copies decrypted data of another table (its owner's, readable by decryptors)
-- into the owner's own table when a decryptor reads
CREATE TABLE app.t6 (id serial PRIMARY KEY, subject text, payload jsonb);
GRANT SELECT ON app.t6 TO ao_reader;
CREATE FUNCTION app.leak() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO app.stolen SELECT current_user, 'leaked ' || (event_crypto.decrypt_fields(payload)->>'email') FROM app.t6;
    RETURN true;
EXCEPTION WHEN OTHERS THEN
    INSERT INTO app.stolen VALUES (current_user, 'leak refused: ' || SQLSTATE);
    RETURN true;
END $$;
ALTER TABLE app.t5 ENABLE ROW LEVEL SECURITY;
CREATE POLICY r ON app.t5 FOR SELECT USING (app.leak());
CREATE POLICY w ON app.t5 FOR INSERT WITH CHECK (true);
CREATE POLICY u ON app.t5 FOR UPDATE USING (true);
GRANT SELECT, UPDATE, TRIGGER ON app.t5 TO ao_admin;
GRANT SELECT ON app.t5 TO ao_reader;
GRANT INSERT ON app.t5 TO ao_app;
GRANT USAGE ON SEQUENCE app.t5_id_seq TO ao_app;
RESET ROLE;

-- A non-superuser admin protects the table (item 12: the documented role suffices, with TRIGGER on the table)
SET ROLE ao_admin;
SELECT table_name, column_name, key_column, decrypted_view
FROM event_crypto.protect('app.t5', 'payload', fields => ARRAY['email'], key_column => 'subject');
SELECT target_column FROM event_crypto.add_blind_index('app.t5', 'payload', 'email', 'email_idx', 'ao-tenant');
RESET ROLE;
-- and the application inserts without any event_crypto role or USAGE on its schema (item 12)
SET ROLE ao_app;
INSERT INTO app.t5 (subject, payload) VALUES ('alice', '{"email": "alice@x.io"}'), ('bob', '{"email": "bob@x.io"}'),
                                             ('carol', '{"email": "carol@x.io"}');
RESET ROLE;
INSERT INTO app.t6 (subject, payload) VALUES ('zed', event_crypto.encrypt_fields('{"email": "zed@x.io"}', '{email}', 'subject:victim'));
SELECT subject, payload->>'email' LIKE '$ec2$%' AS encrypted, email_idx IS NOT NULL AS indexed FROM app.t5 ORDER BY id;

-- Forgetting as a superuser (as the background worker used to): the owner's trigger runs as the owner, refused
SELECT (event_crypto.forget_subject('alice') - 'audit_id') - 'key_ids' AS receipt;
-- ... and as a non-superuser admin
SET ROLE ao_admin;
SELECT r->'complete' AS complete, r->'tables' AS tables FROM event_crypto.forget_subject('bob') r;
RESET ROLE;
SELECT rolsuper AS owner_became_superuser FROM pg_roles WHERE rolname = 'ao_owner';
SELECT status AS victim_key FROM event_crypto.key_info WHERE key_id = 'subject:victim';
SELECT who, what FROM app.stolen ORDER BY what;
DELETE FROM app.stolen;

-- Exporting as a decryptor: row-level security applies to the reader, so the owner's policy would run with the
-- reader's rights: the table is skipped and listed (and the policy never runs).
SET ROLE ao_reader;
SELECT r->'tables' AS tables, r->'skipped' AS skipped, r->'complete' AS complete
FROM event_crypto.export_subject('carol') r;
RESET ROLE;
SELECT count(*) AS policy_runs FROM app.stolen;
-- a superuser (whom row-level security does not filter) gets the rows; the policy still does not run, nor the cast
SELECT jsonb_path_query(event_crypto.export_subject('carol'), '$.tables[*].rows[*].payload') AS carol;
SELECT count(*) AS owner_code_runs FROM app.stolen;
-- a decryptor may name the table to accept that its owner's policies run with its rights
SET ROLE ao_reader;
SELECT jsonb_path_query(event_crypto.export_subject('carol', trust_policies => '{app.t5}'), '$.tables[*].rows[*].payload') AS carol;
RESET ROLE;
SELECT who, what FROM app.stolen ORDER BY what;
DELETE FROM app.stolen;

-- Counting rows before retiring a version, and retention, read the table as its owner too
SELECT event_crypto.rotate_key('subject:carol');
SELECT (event_crypto.retire_key_version('subject:carol', 1)) IS NULL;    -- 55006 still used by carol's row
SELECT (event_crypto.set_retention("table" => 'app.t5', inactive_for => '1 day', time_column => 'at')).id IS NOT NULL AS policy_set;
SET ROLE ao_owner;
UPDATE app.t5 SET at = now() - interval '2 days' WHERE subject = 'carol';
RESET ROLE;
DELETE FROM app.stolen;
SELECT key_id, subject, shredded FROM event_crypto.enforce_retention(dry_run => false);
SELECT who, what FROM app.stolen ORDER BY what;
DELETE FROM app.stolen;

-- Re-encryption rewrites rows as the owner: the owner's UPDATE trigger runs, powerless
CREATE TABLE app_manual (id serial PRIMARY KEY, p jsonb);
ALTER TABLE app_manual OWNER TO ao_owner;
INSERT INTO app_manual (p) SELECT event_crypto.encrypt_fields('{"x": "secret"}', '{x}', 'ao-tenant');
SELECT event_crypto.rotate_key('ao-tenant') AS rotated;
SET ROLE ao_owner;
CREATE TRIGGER b_pwn BEFORE UPDATE ON app_manual FOR EACH STATEMENT EXECUTE FUNCTION app.pwn();
GRANT SELECT, UPDATE ON app_manual TO ao_admin;
RESET ROLE;
SET ROLE ao_admin;
SELECT rows_scanned, rows_rewritten, rows_invalid FROM event_crypto.reencrypt_batch('app_manual', 'p');
RESET ROLE;
SELECT who, what FROM app.stolen ORDER BY what;
SELECT rolsuper AS owner_became_superuser FROM pg_roles WHERE rolname = 'ao_owner';

-- One table the caller may not touch does not stop erasure: it is skipped and reported, the keys are shredded
CREATE TABLE app_locked (id serial, subject text, payload jsonb, idx text);
SELECT count(*) FROM event_crypto.protect('app_locked', 'payload', fields => ARRAY['email'], key_column => 'subject');
SELECT count(*) FROM event_crypto.add_blind_index('app_locked', 'payload', 'email', 'idx', 'ao-tenant');
INSERT INTO app_locked (subject, payload) VALUES ('dora', '{"email": "d@x.io"}');
SET ROLE ao_admin;
SELECT r->'skipped' AS skipped, r->'complete' AS complete, r->'versions_destroyed' AS destroyed
FROM event_crypto.forget_subject('dora') r;
RESET ROLE;
SELECT status FROM event_crypto.key_info WHERE key_id IN ('subject:dora', event_crypto.key_id_digest('subject:dora'));
-- a table that is forced to apply its row-level security to its owner cannot be seen whole: skipped, said why
ALTER TABLE app_locked OWNER TO ao_owner;
ALTER TABLE app_locked ENABLE ROW LEVEL SECURITY;
ALTER TABLE app_locked FORCE ROW LEVEL SECURITY;
INSERT INTO app_locked (subject, payload) VALUES ('emil', '{"email": "e@x.io"}');
SELECT r->'skipped' AS skipped, r->'complete' AS complete FROM event_crypto.forget_subject('emil') r;
SELECT count(*) FILTER (WHERE action = 'forget_subject' AND details->>'complete' = 'false') AS incomplete_forgets_audited
FROM event_crypto.audit_log WHERE xact_id = pg_current_xact_id();
ROLLBACK;

-- Items 4 and 5: the configuration tables are written only through the functions, which check the caller's rights
-- on the table; every row written is validated, whoever writes it; stored names are never spliced into SQL.
BEGIN;
CREATE ROLE ao_admin2 IN ROLE event_crypto_admin;
CREATE TABLE cfg_t (id serial, subject text, payload jsonb, idx text, n integer, at timestamptz);
SELECT count(*) FROM event_crypto.protect('cfg_t', 'payload', fields => ARRAY['email'], key_column => 'subject');
SELECT count(*) FROM event_crypto.add_blind_index('cfg_t', 'payload', 'email', 'idx', 'cfg-tenant');
SET ROLE ao_admin2;
-- an admin without rights on the table can no longer switch its encryption off (item 5)
UPDATE event_crypto.protected_columns SET fields = '{no_such_field}';            -- 42501
DELETE FROM event_crypto.blind_indexes;                                          -- 42501
INSERT INTO event_crypto.protected_columns (table_name, column_name, fields, key_id) VALUES ('cfg_t', 'idx', '{a}', 'k');  -- 42501
UPDATE event_crypto.retention_policies SET older_than = '1 second';              -- 42501
SELECT event_crypto.protect('cfg_t', 'payload', fields => ARRAY['nothing'], key_column => 'subject');  -- 42501 no TRIGGER privilege
SELECT event_crypto.unprotect('cfg_t', 'payload');                               -- 42501
SELECT event_crypto.drop_blind_index('cfg_t', 'idx');                            -- 42501
SELECT event_crypto.add_blind_index('cfg_t', 'payload', 'email', 'n', 'k');      -- 42501
RESET ROLE;
SELECT fields FROM event_crypto.protected_columns WHERE table_name = 'cfg_t'::regclass;
-- item 4: the view is stored by oid: no text to splice; SQL in a "view name" is not even a valid value
UPDATE event_crypto.protected_columns SET decrypted_view = 'public.cfg_t_decrypted; ALTER ROLE ao_admin2 SUPERUSER; SELECT 1'
WHERE table_name = 'cfg_t'::regclass;                                           -- 42602
SELECT count(*) FROM event_crypto.protect('cfg_t', 'payload', fields => ARRAY['email'], key_column => 'subject');
SELECT rolsuper FROM pg_roles WHERE rolname = 'ao_admin2';
-- a renamed view is still the one protect() and unprotect() replace and drop (by oid)
ALTER VIEW cfg_t_decrypted RENAME TO cfg_t_renamed;
CREATE VIEW cfg_t_decrypted AS SELECT 1 AS unrelated;
SELECT decrypted_view FROM event_crypto.protected_columns WHERE table_name = 'cfg_t'::regclass;
SELECT event_crypto.unprotect('cfg_t', 'payload');
SELECT to_regclass('cfg_t_renamed') IS NULL AS ours_dropped, to_regclass('cfg_t_decrypted') IS NOT NULL AS unrelated_kept;
-- and a relation that has the view's name but is not its view is never replaced
SELECT count(*) FROM event_crypto.protect('cfg_t', 'payload', fields => ARRAY['email'], key_column => 'subject');  -- 42710
SELECT count(*) FROM event_crypto.protect('cfg_t', 'payload', fields => ARRAY['email'], key_column => 'subject',
                                          view_name => 'cfg_t_plain');
SELECT count(*) FROM event_crypto.add_blind_index('cfg_t', 'payload', 'email', 'idx', 'cfg-tenant');
-- item 6: rows written by hand, even by a superuser, are validated
UPDATE event_crypto.protected_columns SET fields = '{"a[*"}' WHERE table_name = 'cfg_t'::regclass;       -- 42601
UPDATE event_crypto.protected_columns SET key_column = 'nope' WHERE table_name = 'cfg_t'::regclass;       -- 42703
UPDATE event_crypto.protected_columns SET column_name = 'n' WHERE table_name = 'cfg_t'::regclass;          -- 42804 (cascades to blind_indexes)
INSERT INTO event_crypto.blind_indexes VALUES ('cfg_t', 'payload', 'email', 'at', 'cfg-tenant', NULL);      -- 42804 a timestamp column
INSERT INTO event_crypto.blind_indexes VALUES ('cfg_t', 'payload', 'items[*]', 'idx', 'cfg-tenant', NULL); -- 42601 several values
UPDATE event_crypto.protected_columns SET key_prefix = '' WHERE table_name = 'cfg_t'::regclass;           -- 22023
\set VERBOSITY default
UPDATE event_crypto.blind_indexes SET target_column = 'n' WHERE table_name = 'cfg_t'::regclass;
\set VERBOSITY sqlstate
-- item 6: a retyped column is refused, never read through the wrong type. A renamed column is followed by the
-- configuration (issue 12): a new column that takes the old name is not the protected one.
INSERT INTO cfg_t (subject, payload) VALUES ('s1', '{"email": "a@x.io"}');
ALTER TABLE cfg_t RENAME COLUMN payload TO payload_old;
ALTER TABLE cfg_t ADD COLUMN payload bigint;
SELECT column_name FROM event_crypto.protected_columns WHERE table_name = 'cfg_t'::regclass;
INSERT INTO cfg_t (subject, payload_old) VALUES ('s1', '{"email": "c@x.io"}');
SELECT payload_old->>'email' LIKE '$ec2$%' AS encrypted FROM cfg_t ORDER BY id;
ALTER TABLE cfg_t DROP COLUMN payload;
ALTER TABLE cfg_t RENAME COLUMN payload_old TO payload;
DROP VIEW cfg_t_plain;
ALTER TABLE cfg_t ALTER COLUMN idx TYPE name;
INSERT INTO cfg_t (subject, payload) VALUES ('s1', '{"email": "a@x.io"}');       -- 42804
ALTER TABLE cfg_t ALTER COLUMN idx TYPE text;
INSERT INTO cfg_t (subject, payload) VALUES ('s1', '{"email": "b@x.io"}');
SELECT count(*) AS rows, count(idx) AS indexed FROM cfg_t;
ROLLBACK;
