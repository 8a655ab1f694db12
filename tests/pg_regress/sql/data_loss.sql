-- Issue 12: nothing lost by mistake. Each section is a repro from the issue that destroyed data (or let one table
-- stop maintenance for all) before, and now must not.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;

CREATE ROLE dl_nobody;
-- 1. Retiring a version still in use. A table written with encrypt_fields directly (no protect(), no
--    reencrypt_table) keeps its rows: the retirement is refused, whichever column type holds the envelopes.
CREATE TABLE dl_direct (id int, doc jsonb, note text, raw json);
SELECT event_crypto.create_key('dl:k1');
INSERT INTO dl_direct SELECT g, event_crypto.encrypt_fields('{"a":"secret"}', '{a}', 'dl:k1'), NULL, NULL FROM generate_series(1, 500) g;
INSERT INTO dl_direct VALUES (501, NULL, 'a note holding ' || (event_crypto.encrypt_fields('{"a":"x"}', '{a}', 'dl:k1')->>'a'), NULL);
INSERT INTO dl_direct VALUES (502, NULL, NULL, event_crypto.encrypt_fields('{"a":"x"}', '{a}', 'dl:k1')::json);
CREATE MATERIALIZED VIEW dl_copy AS SELECT doc FROM dl_direct WHERE id <= 3;
SELECT event_crypto.rotate_key('dl:k1');
SELECT table_name, column_name, rows, unreadable, note FROM event_crypto.key_version_usage('dl:k1', 1) ORDER BY 1, 2;
SELECT event_crypto.retire_key_version('dl:k1', 1);                                  -- 55006
\set VERBOSITY default
SELECT event_crypto.retire_key_version('dl:k1', 1);
\set VERBOSITY sqlstate
SELECT count(*) FROM dl_direct WHERE event_crypto.decrypt_fields(doc)->>'a' = 'secret';
-- re-encrypted (and the copies gone), the version is disabled, not destroyed: decryption under it fails closed
-- with its own SQLSTATE, or follows on_shredded, and every attempt is reported
SELECT event_crypto.encrypt_fields('{"a":"held by an application"}', '{a}', 'dl:k1') AS old_env \gset
UPDATE dl_direct SET doc = event_crypto.reencrypt_fields(doc), note = NULL, raw = NULL;
DROP MATERIALIZED VIEW dl_copy;
SELECT event_crypto.rotate_key('dl:k1');
UPDATE dl_direct SET doc = event_crypto.reencrypt_fields(doc);
SELECT * FROM event_crypto.key_version_usage('dl:k1', 2);
SELECT event_crypto.retire_key_version('dl:k1', 2) - 'destroy_after' - 'columns_checked' AS receipt;
SELECT status, destroy_after > now() + interval '6 days' AS waits FROM event_crypto.key_info WHERE key_id = 'dl:k1' AND version = 2;
SELECT event_crypto.decrypt_fields(:'old_env'::jsonb);                               -- under disabled version 2: null, a warning
SELECT event_crypto.encrypt_fields('{"a":"s"}', '{a}', 'dl:k1')->>'a' LIKE '$ec2$%' AS still_encrypts;
-- an envelope under the disabled version: null (the default on_shredded), kept, or the error 38004
SELECT event_crypto.reencrypt_fields(:'old_env'::jsonb) = :'old_env'::jsonb AS not_moved;
CREATE TEMP TABLE dl_held AS SELECT e FROM (VALUES (event_crypto.encrypt_value('"v3 secret"', 'dl:k1'))) v(e);
SELECT event_crypto.rotate_key('dl:k1');
SELECT event_crypto.retire_key_version('dl:k1', 3);                                  -- 55006: dl_held uses it
UPDATE dl_direct SET doc = event_crypto.reencrypt_fields(doc);
SELECT e AS v3_env FROM dl_held \gset
DROP TABLE dl_held;
SELECT event_crypto.retire_key_version('dl:k1', 3)->>'disabled' AS disabled;
SELECT event_crypto.decrypt_value(:'v3_env') AS reads_null;
SELECT event_crypto.decrypt_value(:'v3_env', on_shredded => 'keep') = to_jsonb(:'v3_env'::text) AS kept;
SELECT event_crypto.decrypt_value(:'v3_env', on_shredded => 'error');                -- 38004
-- every attempt is counted per key version and reported by the next flush (the maintenance run's first action)
SELECT (event_crypto.flush_usage())->'disabled_decryptions' AS reported;
SELECT version, disabled_decryptions FROM event_crypto.key_info WHERE key_id = 'dl:k1' AND disabled_decryptions > 0 ORDER BY 1;
-- cancel_retire re-enables it until the wait is over
SELECT event_crypto.cancel_retire('dl:k1', 3);
SELECT event_crypto.decrypt_value(:'v3_env') AS readable_again;
SELECT event_crypto.cancel_retire('dl:k1', 3) AS was_not_disabled;
SELECT event_crypto.cancel_retire('dl:k1', 9);                                       -- 42704
SELECT event_crypto.cancel_retire(NULL, 1);                                          -- 22004
SELECT * FROM event_crypto.key_version_usage(NULL, 1);                                -- 22004
SELECT * FROM event_crypto.key_version_usage('dl:k1', NULL);                          -- 22004
SELECT * FROM event_crypto.key_version_usage('dl:k1', 0);                             -- 22023
SELECT * FROM event_crypto.key_version_usage('', 1);                                  -- 22023
SELECT count(*) FROM event_crypto.key_version_usage('no such key', 1);                -- nothing uses it
SELECT event_crypto.cancel_retire('dl:k1', 0);                                       -- 22023
-- the event triggers' functions: internal, but bad input is still an error, not a crash
SELECT event_crypto.follow_column_rename(NULL, 1);                                   -- 22004
SELECT event_crypto.follow_column_rename('dl_direct', NULL);                         -- 22004
SELECT event_crypto.follow_column_rename('dl_direct', 99) AS nothing_renamed;
SELECT event_crypto.ddl_table_changed(NULL);                                         -- 22004
SET ROLE dl_nobody;
SELECT event_crypto.follow_column_rename('dl_direct', 1);                            -- 42501 nobody may call it
SELECT event_crypto.ddl_table_changed('dl_direct');                                  -- 42501
RESET ROLE;
-- the maintenance run destroys a disabled version once event_crypto.retire_wait has passed, not before
SET event_crypto.retire_wait = '1h';
SELECT event_crypto.retire_key_version('dl:k1', 3)->>'disabled' AS disabled;
SELECT destroy_after BETWEEN now() + interval '59 minutes' AND now() + interval '1 hour' AS in_an_hour
FROM event_crypto.key_info WHERE key_id = 'dl:k1' AND version = 3;
SELECT event_crypto.maintenance_action('retire');
RESET event_crypto.retire_wait;
UPDATE event_crypto.keys SET destroy_after = now() WHERE key_id = 'dl:k1' AND status = 'disabled';
SELECT event_crypto.maintenance_action('retire');
SELECT version, status, has_key_material FROM event_crypto.key_info WHERE key_id = 'dl:k1' ORDER BY version;
SELECT event_crypto.cancel_retire('dl:k1', 3);                                       -- 55000 destroyed for good
SELECT event_crypto.decrypt_value(:'v3_env') AS shredded_reads_null;
-- force destroys at once (after the refusal above, the operator's explicit choice)
SELECT event_crypto.create_key('dl:k2');
CREATE TABLE dl_forced (doc jsonb);
INSERT INTO dl_forced VALUES (event_crypto.encrypt_fields('{"a":"x"}', '{a}', 'dl:k2'));
SELECT event_crypto.rotate_key('dl:k2');
SELECT event_crypto.retire_key_version('dl:k2', 1, force => true);
SELECT event_crypto.decrypt_fields(doc) FROM dl_forced;
-- only superusers may shorten the wait
CREATE ROLE dl_admin IN ROLE event_crypto_admin;
SET ROLE dl_admin;
SET event_crypto.retire_wait = 0;                                                    -- 42501
RESET ROLE;
-- shredding stays immediate
SELECT event_crypto.shred_key('dl:k2');

-- 2. Rows that row-level security hides are neither skipped nor counted as zero. The admin sees 5 of 10 rows;
--    re-encryption and the count before a retirement cover all 10 (as the table's owner, row security off).
CREATE ROLE dl_owner;
GRANT CREATE ON SCHEMA public TO dl_owner;
SET ROLE dl_owner;
CREATE TABLE dl_rls (id int, tenant text, doc jsonb);
ALTER TABLE dl_rls ENABLE ROW LEVEL SECURITY;
CREATE POLICY only_a ON dl_rls USING (tenant = 'a');
GRANT SELECT, UPDATE ON dl_rls TO dl_admin;
RESET ROLE;
SELECT event_crypto.create_key('k:rls');
INSERT INTO dl_rls SELECT g, CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END, event_crypto.encrypt_fields('{"s":"x"}', '{s}', 'k:rls')
FROM generate_series(1, 10) g;
SELECT event_crypto.rotate_key('k:rls');
SET ROLE dl_admin;
SELECT count(*) AS admin_sees FROM dl_rls;
SELECT rows FROM event_crypto.key_version_usage('k:rls', 1) WHERE table_name = 'public.dl_rls';
SELECT event_crypto.retire_key_version('k:rls', 1);                                  -- 55006: 10 rows
SELECT rows_scanned, rows_rewritten FROM event_crypto.reencrypt_batch('dl_rls', 'doc', 100);
RESET ROLE;
SELECT count(*) FILTER (WHERE event_crypto.uses_key_version(doc, 'k:rls', 2)) AS on_v2, count(*) FROM dl_rls;
-- a policy that applies to the owner too (FORCE): the rows cannot all be seen, so nothing is taken as zero
SELECT event_crypto.rotate_key('k:rls');
ALTER TABLE dl_rls FORCE ROW LEVEL SECURITY;
SET ROLE dl_admin;
SELECT table_name, column_name, rows FROM event_crypto.key_version_usage('k:rls', 2) WHERE table_name = 'public.dl_rls' ORDER BY 2;
SELECT event_crypto.retire_key_version('k:rls', 2);                                  -- 55006 cannot be shown unused
SELECT * FROM event_crypto.reencrypt_batch('dl_rls', 'doc', 100);                    -- 42501 refused, not half done
RESET ROLE;
ALTER TABLE dl_rls NO FORCE ROW LEVEL SECURITY;
-- and a column the caller may not read is not counted as zero either
REVOKE SELECT ON dl_rls FROM dl_admin;
SET ROLE dl_admin;
SELECT column_name, rows, note IS NOT NULL AS why FROM event_crypto.key_version_usage('k:rls', 2) WHERE table_name = 'public.dl_rls' ORDER BY 1;
RESET ROLE;

-- 3. Forgetting acts on one kind of subject: user 42 is not tenant 42.
CREATE TABLE dl_invoices (tenant int, payload jsonb);
CREATE TABLE dl_events (user_id int, payload jsonb);
SELECT count(*) FROM event_crypto.protect('dl_invoices', 'payload', fields => '{amount}', key_column => 'tenant', key_prefix => 'dltenant:');
SELECT count(*) FROM event_crypto.protect('dl_events', 'payload', fields => '{email}', key_column => 'user_id', key_prefix => 'dluser:');
INSERT INTO dl_invoices VALUES (42, '{"amount":"100"}');
INSERT INTO dl_events VALUES (42, '{"email":"u42@x.io"}');
SELECT event_crypto.forget_subject('42');                                            -- 22023 which kind?
\set VERBOSITY default
SELECT event_crypto.forget_subject('42');
\set VERBOSITY sqlstate
SELECT r->'key_ids' AS key_ids, r->>'key_prefix' AS key_prefix FROM event_crypto.forget_subject('42', key_prefix => 'dluser:') r;
SELECT tenant, payload FROM dl_invoices_decrypted;
SELECT user_id, payload FROM dl_events_decrypted;
SELECT event_crypto.export_subject('42');                                            -- 22023
SELECT jsonb_array_length(event_crypto.export_subject('42', key_prefix => 'dltenant:')->'tables') AS tables;
SELECT event_crypto.forget_subject('42', key_prefix => '');                          -- 22023
-- a retention policy forgets its table's kind of subject only, and its dry run lists exactly what it shreds
CREATE TABLE dl_logins (login text, at timestamptz DEFAULT now(), payload jsonb);
SELECT count(*) FROM event_crypto.protect('dl_logins', 'payload', fields => '{ip}', key_column => 'login', key_prefix => 'dllogin:');
INSERT INTO dl_logins (login, payload) VALUES ('zoe', '{"ip":"10.0.0.1"}');
INSERT INTO dl_events VALUES (7, '{"email":"zoe@x.io"}');
SELECT event_crypto.subject_key_id('dluser:', 'zoe') AS user_zoe \gset
SELECT event_crypto.create_key(:'user_zoe');
UPDATE event_crypto.keys SET created_at = now() - interval '2 days' WHERE key_id IN ('dllogin:zoe', :'user_zoe');
SELECT count(*) FROM event_crypto.set_retention("table" => 'dl_logins', older_than => '1 day');
SELECT key_id, subject, shredded FROM event_crypto.enforce_retention() WHERE key_id LIKE 'dl%' ORDER BY 1;
SELECT key_id, subject, shredded FROM event_crypto.enforce_retention(dry_run => false) WHERE key_id LIKE 'dl%' ORDER BY 1;
SELECT named_key(key_id, 'dllogin:zoe') AS key_id, status FROM event_crypto.key_info
WHERE key_id IN ('dllogin:zoe', :'user_zoe', event_crypto.key_id_digest('dllogin:zoe')) ORDER BY 1;

-- 4. fields_by_type fails closed: a type it does not name (case counts) or a NULL type is refused, never stored in
--    plaintext; a "*" entry says what other types get.
CREATE TABLE dl_typed (subject text, kind text, payload jsonb);
SELECT count(*) FROM event_crypto.protect('dl_typed', 'payload', key_column => 'subject', type_column => 'kind',
                                          fields_by_type => '{"CustomerCreated":["email","card"]}');
INSERT INTO dl_typed VALUES ('s', 'CustomerCreated', '{"email":"a@x.io","card":"4111111111111111"}');
INSERT INTO dl_typed VALUES ('s', 'customercreated', '{"email":"a@x.io","card":"4111111111111111"}');  -- 23514
INSERT INTO dl_typed VALUES ('s', 'CustomerUpdated', '{"email":"a@x.io","card":"4111111111111111"}');  -- 23514
INSERT INTO dl_typed VALUES ('s', NULL, '{"email":"a@x.io","card":"4111111111111111"}');               -- 23514
UPDATE dl_typed SET kind = 'Other';                                                                   -- 23514
\set VERBOSITY default
INSERT INTO dl_typed VALUES ('s', 'customercreated', '{"email":"a@x.io"}');
\set VERBOSITY sqlstate
SELECT count(*) FROM event_crypto.protect('dl_typed', 'payload', key_column => 'subject', type_column => 'kind',
                                          fields_by_type => '{"CustomerCreated":["email","card"],"*":["card"]}');
INSERT INTO dl_typed VALUES ('s', 'CustomerUpdated', '{"email":"a@x.io","card":"4111111111111111"}');
INSERT INTO dl_typed VALUES ('s', NULL, '{"card":"4111111111111111"}');
SELECT kind, payload->>'email' LIKE '$ec2$%' AS email_enc, payload->>'card' LIKE '$ec2$%' AS card_enc FROM dl_typed ORDER BY kind NULLS LAST;
SELECT event_crypto.protect('dl_typed', 'payload', key_column => 'subject', fields => '{x}', allow_unlisted_types => true); -- 22023 no types
SELECT event_crypto.protect('dl_typed', 'payload', key_column => 'subject', fields => '{x}', allow_unlisted_types => NULL); -- 22004

-- 5. A dropped table, a renamed or dropped column: the configuration follows, and nothing stops for the others.
CREATE TABLE dl_sessions (login text, at timestamptz DEFAULT now(), payload jsonb);
SELECT count(*) FROM event_crypto.protect('dl_sessions', 'payload', fields => '{token}', key_column => 'login', key_prefix => 'dllogin:');
SELECT count(*) FROM event_crypto.set_retention("table" => 'dl_sessions', inactive_for => '1 day', time_column => 'at');
DROP TABLE dl_sessions CASCADE;
SELECT count(*) AS dead_config FROM event_crypto.protected_columns WHERE table_name::oid NOT IN (SELECT oid FROM pg_class);
SELECT count(*) AS dead_policies FROM event_crypto.retention_policies WHERE table_name::oid NOT IN (SELECT oid FROM pg_class);
SELECT count(*) >= 0 AS retention_runs FROM event_crypto.enforce_retention();
SELECT action, ok FROM event_crypto.run_maintenance() WHERE action = 'retention';
-- a change to the configuration tables (here by a DROP) must not leave the session's key cache blind to later
-- changes of the key catalog (found by the isolation test forget-during-insert)
SELECT event_crypto.create_key('dl:inv');
SELECT event_crypto.encrypt_fields('{"a":"x"}', '{a}', 'dl:inv') IS NOT NULL AS encrypts;
CREATE TABLE dl_gone (s text, payload jsonb);
SELECT count(*) FROM event_crypto.protect('dl_gone', 'payload', fields => '{x}', key_id => 'dl:inv');
DROP TABLE dl_gone CASCADE;
DELETE FROM event_crypto.keys WHERE key_id = 'dl:inv';
SELECT event_crypto.encrypt_fields('{"a":"x"}', '{a}', 'dl:inv');                    -- 42704
-- renamed key column and protected column: inserts, forgetting, exporting and the view keep working
ALTER TABLE dl_events RENAME COLUMN user_id TO uid;
ALTER TABLE dl_events RENAME COLUMN payload TO body;
SELECT column_name, key_column FROM event_crypto.protected_columns WHERE table_name = 'dl_events'::regclass;
INSERT INTO dl_events VALUES (8, '{"email":"e8@x.io"}');
SELECT uid, body->>'email' LIKE '$ec2$%' AS encrypted FROM dl_events ORDER BY uid;
SELECT uid, body FROM dl_events_decrypted ORDER BY uid;
SELECT r->'rows' AS rows FROM jsonb_path_query(event_crypto.export_subject('8', key_prefix => 'dluser:'), '$.tables[*]') r;
SELECT r->>'complete' AS complete, r->'skipped' AS skipped FROM event_crypto.forget_subject('8', key_prefix => 'dluser:') r;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'dl_events'::regclass AND NOT tgisinternal;
-- a dropped key column: its configuration fails closed (inserts refused) and says so; erasure carries on,
-- reporting the table it could not handle
CREATE TABLE dl_broken (who text, payload jsonb, idx text);
SELECT count(*) FROM event_crypto.protect('dl_broken', 'payload', fields => '{email}', key_column => 'who', key_prefix => 'dluser:');
SELECT count(*) FROM event_crypto.add_blind_index('dl_broken', 'payload', 'email', 'idx', 'dl:idx');
ALTER TABLE dl_broken DROP COLUMN who CASCADE;
INSERT INTO dl_broken (payload) VALUES ('{"email":"x"}');                          -- 42703
SELECT r->>'complete' AS complete, jsonb_array_length(r->'skipped') AS skipped FROM event_crypto.forget_subject('9', key_prefix => 'dluser:') r;
-- a dropped protected column: its configuration and trigger go, the table works
ALTER TABLE dl_broken DROP COLUMN payload CASCADE;
SELECT count(*) FROM event_crypto.protected_columns WHERE table_name = 'dl_broken'::regclass;
INSERT INTO dl_broken (idx) VALUES ('plain');

-- 10. Smaller traps.
-- a column name over 42 bytes: the trigger name is never truncated into a clash; protect() runs again
CREATE TABLE dl_long (id int, payload_of_an_event_with_a_column_name_this_long_goes_on jsonb);
SELECT count(*) FROM event_crypto.protect('dl_long', 'payload_of_an_event_with_a_column_name_this_long_goes_on', fields => '{x}', key_id => 'dl:k3');
SELECT count(*) FROM event_crypto.protect('dl_long', 'payload_of_an_event_with_a_column_name_this_long_goes_on', fields => '{x}', key_id => 'dl:k3');
SELECT tgname, length(tgname) FROM pg_trigger WHERE tgrelid = 'dl_long'::regclass AND NOT tgisinternal;
SELECT event_crypto.unprotect('dl_long', 'payload_of_an_event_with_a_column_name_this_long_goes_on');
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'dl_long'::regclass AND NOT tgisinternal;
-- unprotect() drops the view it made (by oid, followed through a rename), never what took its old name
CREATE TABLE dl_view_t (k text, payload jsonb);
SELECT count(*) FROM event_crypto.protect('dl_view_t', 'payload', fields => '{x}', key_id => 'dl:k3');
ALTER VIEW dl_view_t_decrypted RENAME TO dl_view_t_renamed;
CREATE TABLE dl_view_t_decrypted (precious int);
SELECT event_crypto.unprotect('dl_view_t', 'payload');
SELECT to_regclass('dl_view_t_renamed') IS NULL AS ours_dropped, to_regclass('dl_view_t_decrypted') IS NOT NULL AS other_kept;
-- a table made with INHERITS from a protected table is protected too (its rows show through the parent)
CREATE TABLE dl_child () INHERITS (dl_events);
INSERT INTO dl_child VALUES (10, '{"email":"child@x.io"}');
SELECT body->>'email' LIKE '$ec2$%' AS child_encrypted FROM ONLY dl_child;
SELECT uid, body FROM dl_events_decrypted WHERE uid = 10;
CREATE TABLE dl_plain_child (uid int, body jsonb);
ALTER TABLE dl_plain_child INHERIT dl_events;
INSERT INTO dl_plain_child VALUES (11, '{"email":"late@x.io"}');
SELECT body->>'email' LIKE '$ec2$%' AS attached_child_encrypted FROM ONLY dl_plain_child;
-- ... and one made with LIKE is warned about
CREATE TABLE dl_archive (LIKE dl_events INCLUDING ALL, archived_at timestamptz);
\set VERBOSITY default
CREATE TABLE dl_archive2 (LIKE dl_events INCLUDING ALL);
\set VERBOSITY sqlstate
-- unprotecting the parent takes the children's triggers too
SELECT event_crypto.unprotect('dl_events', 'body');
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid IN ('dl_child'::regclass, 'dl_plain_child'::regclass) AND NOT tgisinternal;
INSERT INTO dl_child VALUES (12, '{"email":"after@x.io"}');

ROLLBACK;
