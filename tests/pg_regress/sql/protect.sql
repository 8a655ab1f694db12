-- Protected event tables: every way rows enter, blind index columns, forgetting and exporting a subject,
-- updates, the decrypted view with row-level security, configuration errors.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
SELECT event_crypto.create_key('tenant-42');
CREATE TABLE events (id bigserial PRIMARY KEY, stream_id uuid, subject_id text, type text,
                     payload jsonb, email_idx text, created_at timestamptz DEFAULT now());
SELECT table_name, column_name, fields, key_id, key_column, key_prefix, context_column, on_forgotten, decrypted_view
FROM event_crypto.protect('events', 'payload',
         fields         => ARRAY['email','phone','address.street','cards[*].number'],
         key_column     => 'subject_id',
         context_column => 'stream_id');
-- the normalisation by name: normalization => (0.1.0 called it "normalize", an SQL keyword)
SELECT * FROM event_crypto.add_blind_index('events', 'payload', 'email', 'email_idx', 'tenant-42', normalization => 'lower');
-- what is protected is one SELECT
SELECT p.table_name, p.column_name, b.field, b.target_column, b.key_id, b.normalize
FROM event_crypto.protected_columns p LEFT JOIN event_crypto.blind_indexes b USING (table_name, column_name);

CREATE TEMP VIEW stored AS
SELECT id, subject_id,
       (SELECT count(*) FROM jsonb_path_query(payload, 'strict $.**') v WHERE jsonb_typeof(v) = 'string' AND v #>> '{}' LIKE '$ec2$%') AS envelopes,
       payload::text ~ '(@x\.io|"4111|1 Main|5 Main)' AS plaintext_visible,  -- sentinels outside the base64url alphabet
       email_idx IS NOT NULL AS indexed
FROM events;

-- single INSERT, multi-row INSERT (first events of new subjects create their keys)
INSERT INTO events (stream_id, subject_id, type, payload) VALUES
  ('00000000-0000-0000-0000-00000000000a', 'alice', 'CustomerCreated',
   '{"email":"A@x.io","phone":"555","address":{"street":"1 Main","city":"Springfield"},"cards":[{"number":"4111"},{"number":"4111-2"}],"amount":12.50}');
INSERT INTO events (stream_id, subject_id, type, payload) VALUES
  ('00000000-0000-0000-0000-00000000000b', 'bob', 'CustomerCreated', '{"email":"b@x.io","phone":"666"}'),
  ('00000000-0000-0000-0000-00000000000c', 'carol', 'CustomerCreated', '{"email":"c@x.io"}');
-- INSERT ... SELECT
INSERT INTO events (stream_id, subject_id, type, payload)
SELECT '00000000-0000-0000-0000-00000000000d', 'dave', 'CustomerCreated', jsonb_build_object('email', 'd@x.io', 'n', 1);
-- COPY FROM
COPY events (stream_id, subject_id, type, payload) FROM stdin;
00000000-0000-0000-0000-00000000000e	erin	CustomerCreated	{"email": "e@x.io", "address": {"street": "5 Main"}}
\.
-- INSERT ... ON CONFLICT DO UPDATE with EXCLUDED, and with a literal
INSERT INTO events (id, stream_id, subject_id, type, payload)
VALUES (100, '00000000-0000-0000-0000-00000000000f', 'frank', 'CustomerCreated', '{"email":"f@x.io"}');
INSERT INTO events (id, stream_id, subject_id, type, payload)
VALUES (100, '00000000-0000-0000-0000-00000000000f', 'frank', 'CustomerUpdated', '{"email":"f@x.io","phone":"777"}')
ON CONFLICT (id) DO UPDATE SET payload = EXCLUDED.payload, type = EXCLUDED.type;
INSERT INTO events (id, stream_id, subject_id, type, payload)
VALUES (100, '00000000-0000-0000-0000-00000000000f', 'frank', 'x', '{}')
ON CONFLICT (id) DO UPDATE SET payload = '{"email":"g@x.io"}';
SELECT * FROM stored ORDER BY id;
-- one key per subject, created on first use
SELECT key_id, version, status FROM event_crypto.key_info WHERE key_id LIKE 'subject:%' ORDER BY key_id;
-- the decrypted view returns the original documents
SELECT id, subject_id, payload FROM events_decrypted ORDER BY id;
-- blind index lookups use an ordinary btree index
CREATE INDEX events_email_idx ON events (email_idx);
SELECT id, subject_id FROM events WHERE email_idx = event_crypto.blind_index('a@X.IO', 'tenant-42', 'lower');

-- replays and restores: rows that arrive already encrypted are stored exactly as they are
CREATE TEMP TABLE replay AS SELECT stream_id, subject_id, type, payload, email_idx FROM events WHERE subject_id = 'alice';
INSERT INTO events (stream_id, subject_id, type, payload, email_idx) SELECT * FROM replay;
SELECT count(DISTINCT payload) AS distinct_payloads, count(DISTINCT email_idx) AS distinct_idx, count(*) FROM events WHERE subject_id = 'alice';

-- UPDATE re-encrypts changed plaintext fields and leaves envelopes alone
UPDATE events SET payload = jsonb_set(payload, '{phone}', '"999"') WHERE subject_id = 'bob';
SELECT id, envelopes, plaintext_visible FROM stored WHERE subject_id = 'bob';
SELECT payload->>'phone' AS phone, payload->>'email' AS email FROM events_decrypted WHERE subject_id = 'bob';
-- the key and context columns cannot change under stored ciphertext
UPDATE events SET subject_id = 'mallory' WHERE subject_id = 'bob';                                -- 0A000
UPDATE events SET stream_id = '00000000-0000-0000-0000-0000000000ff' WHERE subject_id = 'bob';  -- 0A000
UPDATE events SET type = 'Renamed' WHERE subject_id = 'bob';                                     -- other columns are fine
-- fail closed: a row without a subject or context is refused, never stored in plaintext
INSERT INTO events (stream_id, subject_id, payload) VALUES ('00000000-0000-0000-0000-000000000001', NULL, '{"email":"x"}');  -- 22004
INSERT INTO events (stream_id, subject_id, payload) VALUES (NULL, 'zed', '{"email":"x"}');     -- 22004
INSERT INTO events (stream_id, subject_id, payload) VALUES ('00000000-0000-0000-0000-000000000001', '', '{"email":"x"}');  -- 22023
-- rows with nothing to encrypt need no key: no key is created for them
INSERT INTO events (stream_id, subject_id, payload) VALUES (NULL, NULL, '{"unrelated":1}'), (NULL, NULL, NULL);
SELECT count(*) FROM event_crypto.keys WHERE key_id IN ('subject:', 'subject:zed');

-- forget a subject: key shredded, blind index values cleared, audit row, receipt
SELECT event_crypto.forget_subject('alice') - 'audit_id' AS receipt;
SELECT id, subject_id, payload, email_idx IS NOT NULL AS indexed FROM events_decrypted WHERE subject_id IN ('alice', 'bob') ORDER BY id;
SELECT count(*) AS alice_by_index FROM events WHERE email_idx = event_crypto.blind_index('a@x.io', 'tenant-42', 'lower');
SELECT event_crypto.forget_subject('alice') - 'audit_id' AS receipt_again;
-- a forgotten subject gets no new key
INSERT INTO events (stream_id, subject_id, payload) VALUES ('00000000-0000-0000-0000-00000000000a', 'alice', '{"email":"A@x.io"}');  -- 23514
\set VERBOSITY default
INSERT INTO events (stream_id, subject_id, payload) VALUES ('00000000-0000-0000-0000-00000000000a', 'alice', '{"email":"A@x.io"}');
\set VERBOSITY sqlstate
-- forgetting a subject with no events yet leaves a shredded tombstone key: its first event is refused, never given
-- a live key (found by the load test: a subject forgotten before its first event was readable again)
SELECT (event_crypto.forget_subject('zoe'))->'tombstones' AS tombstones;
INSERT INTO events (stream_id, subject_id, payload) VALUES ('00000000-0000-0000-0000-00000000000b', 'zoe', '{"email":"z@x.io"}');  -- 23514
-- (kept as the key id's tombstone: its digest, issue 15)
SELECT named_key(key_id, 'subject:zoe') AS key_id, version, status, has_key_material FROM event_crypto.key_info
WHERE key_id = event_crypto.key_id_digest('subject:zoe');
SELECT (event_crypto.forget_subject('zoe'))->'already_forgotten' AS again;
-- unless the configuration says so: a fresh key generation, itself forgotten by forget_subject
SELECT on_forgotten FROM event_crypto.protect('events', 'payload', fields => ARRAY['email','phone','address.street','cards[*].number'],
                                              key_column => 'subject_id', context_column => 'stream_id', on_forgotten => 'new_key');
INSERT INTO events (stream_id, subject_id, payload) VALUES ('00000000-0000-0000-0000-00000000000a', 'alice', '{"email":"A2@x.io"}');
SELECT payload FROM events_decrypted WHERE subject_id = 'alice' AND payload->>'email' IS NOT NULL;
SELECT (event_crypto.forget_subject('alice') - 'audit_id') -> 'key_ids' AS generations;
SELECT count(*) FILTER (WHERE payload->>'email' IS NOT NULL) AS readable FROM events_decrypted WHERE subject_id = 'alice';
-- export: every event of a subject, decrypted
SELECT jsonb_path_query(event_crypto.export_subject('bob'), '$.tables[*].rows[*].payload') AS bob_export;
SELECT action, named_key(subject, 'tenant-42', 'subject:alice', 'subject:alice#2', 'subject:bob', 'subject:carol', 'subject:dave', 'subject:erin', 'subject:frank', 'subject:zoe') AS subject,
       named_keys(key_ids, 'tenant-42', 'subject:alice', 'subject:alice#2', 'subject:bob', 'subject:carol', 'subject:dave', 'subject:erin', 'subject:frank', 'subject:zoe') AS key_ids, actor = current_user AS by_me FROM event_crypto.audit_log
WHERE xact_id = pg_current_xact_id() ORDER BY id;   -- (earlier test files committed rows of their own)

-- event types with their own fields
CREATE TABLE typed (id serial PRIMARY KEY, subject text, kind text, payload jsonb);
-- fields for every row (name) plus each type's own fields
SELECT fields, type_column, fields_by_type FROM event_crypto.protect('typed', 'payload', fields => ARRAY['name'], key_column => 'subject', type_column => 'kind',
  fields_by_type => '{"CustomerCreated":["email","phone"],"PaymentProcessed":["card.token"]}');
INSERT INTO typed (subject, kind, payload) VALUES
  ('t1', 'CustomerCreated', '{"name":"N","email":"x@x.io","phone":"1","card":{"token":"tok"}}'),
  ('t1', 'PaymentProcessed', '{"name":"N","email":"x@x.io","card":{"token":"tok","last4":"4242"}}');
-- a type the configuration does not name is refused (issue 12: it was stored in plaintext) ...
INSERT INTO typed (subject, kind, payload) VALUES ('t1', 'Other', '{"name":"N","email":"x@x.io"}');   -- 23514
-- ... unless the configuration says what such rows get: here the common fields only
SELECT allow_unlisted_types FROM event_crypto.protect('typed', 'payload', fields => ARRAY['name'], key_column => 'subject', type_column => 'kind',
  fields_by_type => '{"CustomerCreated":["email","phone"],"PaymentProcessed":["card.token"]}', allow_unlisted_types => true);
INSERT INTO typed (subject, kind, payload) VALUES ('t1', 'Other', '{"name":"N","email":"x@x.io"}');
SELECT kind, payload->>'name' LIKE '$ec2$%' AS name_enc, payload->>'email' LIKE '$ec2$%' AS email_enc, payload->>'phone' LIKE '$ec2$%' AS phone_enc,
       payload->'card'->>'token' LIKE '$ec2$%' AS token_enc, payload->'card'->>'last4' AS last4 FROM typed ORDER BY id;
SELECT payload FROM typed_decrypted ORDER BY id;
-- one fixed key for every row, and a view name of one's choosing
CREATE TABLE fixed (id serial, payload jsonb);
SELECT key_id FROM event_crypto.protect('fixed', 'payload', fields => ARRAY['secret'], key_id => 'tenant-42', view_name => 'fixed_plain');
INSERT INTO fixed (payload) VALUES ('{"secret":"s1"}');
-- format 2 names the key by its handle: tenant-42's (version 1), the key id nowhere in the row
SELECT payload->>'secret' LIKE '$ec2$%' AND event_crypto.uses_key_version(payload, 'tenant-42', 1)
       AND position(int8send((SELECT handle FROM event_crypto.keys WHERE key_id = 'tenant-42' AND version = 1))
                    IN decode(translate(substr(payload->>'secret', 6, 12), '-_', '+/'), 'base64')) = 2
       AND strpos(payload::text, 'tenant') = 0 AS under_tenant_key
FROM fixed;
SELECT payload FROM fixed_plain;

-- configuration errors
SELECT event_crypto.protect('events', 'email_idx', fields => ARRAY['x'], key_id => 'k');         -- 42804 not jsonb
SELECT event_crypto.protect('events', 'nope', fields => ARRAY['x'], key_id => 'k');              -- 42703
SELECT event_crypto.protect('events', 'payload', fields => ARRAY['x']);                          -- 22023 no key
SELECT event_crypto.protect('events', 'payload', fields => ARRAY['x'], key_id => 'k', key_column => 'subject_id'); -- 22023 both
SELECT event_crypto.protect('events', 'payload', fields => ARRAY['a..b'], key_id => 'k');        -- 42601
SELECT event_crypto.protect('events', 'payload', fields => ARRAY[]::text[], key_id => 'k');      -- 22023 no fields
SELECT event_crypto.protect('events', 'payload', fields => ARRAY['x'], key_column => 'missing'); -- 42703
SELECT event_crypto.protect('events', 'payload', fields => ARRAY['x'], key_id => 'k', on_forgotten => 'ignore'); -- 22023
SELECT event_crypto.protect('events', 'payload', key_id => 'k', type_column => 'type', fields_by_type => '["x"]'); -- 22023
SELECT event_crypto.protect('events', 'payload', key_id => 'k', type_column => 'type', fields_by_type => '{"T":[1]}'); -- 22023
SELECT event_crypto.protect('stored', 'payload', fields => ARRAY['x'], key_id => 'k');           -- 42809 a view
SELECT event_crypto.protect(NULL, 'payload', fields => ARRAY['x'], key_id => 'k');               -- 22004
SELECT event_crypto.add_blind_index('events', 'payload', 'cards[*].number', 'email_idx', 'tenant-42'); -- 42601 several values
SELECT event_crypto.add_blind_index('events', 'payload', 'email', 'id', 'tenant-42');            -- 42804 not text
SELECT event_crypto.add_blind_index('events', 'payload', 'email', 'email_idx', 'tenant-42', 'upper'); -- 22023
SELECT event_crypto.add_blind_index('typed', 'subject', 'email', 'kind', 'tenant-42');           -- 55000 not protected

-- bad arguments of the subject functions and the helpers
SELECT event_crypto.forget_subject(NULL);                         -- 22004
SELECT event_crypto.forget_subject('');                           -- 22023
SELECT event_crypto.export_subject(NULL);                         -- 22004
SELECT event_crypto.export_subject('');                           -- 22023
SELECT event_crypto.unprotect(NULL, 'payload');                   -- 22004
SELECT event_crypto.unprotect('events', 'nope') AS not_protected;
SELECT event_crypto.drop_blind_index('events', 'email_idx') AS dropped, event_crypto.drop_blind_index('events', 'email_idx') AS again;
SELECT event_crypto.export_subject('nobody-here') AS empty_export;
-- fail closed when the trigger is misused or its configuration is gone
CREATE TABLE misuse (id serial, payload jsonb);
CREATE TRIGGER bare BEFORE INSERT ON misuse FOR EACH ROW EXECUTE FUNCTION event_crypto.protect_trigger();
INSERT INTO misuse (payload) VALUES ('{"email":"x"}');            -- 22023 no column argument
DROP TRIGGER bare ON misuse;
CREATE TRIGGER late AFTER INSERT ON misuse FOR EACH ROW EXECUTE FUNCTION event_crypto.protect_trigger('payload');
INSERT INTO misuse (payload) VALUES ('{"email":"x"}');            -- 22023 not BEFORE
DROP TRIGGER late ON misuse;
SELECT key_id FROM event_crypto.protect('misuse', 'payload', fields => ARRAY['email'], key_id => 'tenant-42');
DELETE FROM event_crypto.protected_columns WHERE table_name = 'misuse'::regclass;
INSERT INTO misuse (payload) VALUES ('{"email":"x"}');            -- 42703 trigger without configuration
SELECT count(*) AS stored FROM misuse;
SELECT key_column FROM event_crypto.protect('typed', 'payload', fields => ARRAY['name'], key_column => 'subject');
ALTER TABLE typed DROP COLUMN subject CASCADE;          -- drops the decrypted view with it
INSERT INTO typed (kind, payload) VALUES ('x', '{"name":"n"}');  -- 42703 the key column is gone

-- unprotect removes the trigger, the view and the configuration
SELECT event_crypto.unprotect('fixed', 'payload'), event_crypto.unprotect('fixed', 'payload') AS again;
SELECT to_regclass('fixed_plain') IS NULL AS view_dropped,
       NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'fixed'::regclass AND NOT tgisinternal) AS trigger_dropped;
INSERT INTO fixed (payload) VALUES ('{"secret":"stays plain now"}');
SELECT payload FROM fixed WHERE payload->>'secret' = 'stays plain now';
ROLLBACK;

-- the decrypted view: security_invoker keeps row-level security, and only decryptors read it
BEGIN;
CREATE TABLE rls_events (id serial, subject text, payload jsonb);
SELECT decrypted_view FROM event_crypto.protect('rls_events', 'payload', fields => ARRAY['email'], key_column => 'subject');
SELECT reloptions FROM pg_class WHERE oid = 'rls_events_decrypted'::regclass;
INSERT INTO rls_events (subject, payload) VALUES ('r1', '{"email":"r1@x.io"}'), ('r2', '{"email":"r2@x.io"}');
ALTER TABLE rls_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY only_r1 ON rls_events FOR SELECT USING (subject = 'r1');
CREATE ROLE ec_view_reader IN ROLE event_crypto_decryptor;
CREATE ROLE ec_view_nobody;
GRANT SELECT ON rls_events, rls_events_decrypted TO ec_view_reader, ec_view_nobody;
SET ROLE ec_view_reader;
SELECT subject, payload FROM rls_events_decrypted ORDER BY id;
RESET ROLE;
SET ROLE ec_view_nobody;
SELECT subject, payload FROM rls_events_decrypted ORDER BY id;   -- 42501
SELECT subject, payload->>'email' LIKE '$ec2$%' AS ciphertext_only FROM rls_events ORDER BY id;
SELECT event_crypto.export_subject('r1');                         -- 42501
SELECT event_crypto.forget_subject('r1');                         -- 42501
SELECT event_crypto.protect('rls_events', 'payload', fields => ARRAY['x'], key_id => 'k'); -- 42501
RESET ROLE;

-- key and context columns of other types: the key id and the bound context are the columns' ::text forms
-- (varchar and uuid are formatted by the extension itself, other types by their output functions)
CREATE TABLE typed (id int PRIMARY KEY, subj varchar(40), tenant bigint, stream uuid, at date, payload jsonb);
SELECT count(*) FROM event_crypto.protect('typed', 'payload', fields => ARRAY['x'], key_column => 'subj',
                                          key_prefix => 'typed:', context_column => 'stream');
INSERT INTO typed VALUES (1, 'Ünïcode Subject', 7, 'DEADBEEF-0123-4567-89AB-CDEFFEDCBA98', '2026-01-02', '{"x":"secret-1"}');
SELECT subj, stream::text, event_crypto.decrypt_fields(payload, stream::text)->>'x' AS x FROM typed;
-- the same uuid spelt otherwise is another context
SELECT event_crypto.decrypt_fields(payload, 'DEADBEEF0123456789ABCDEFFEDCBA98') FROM typed;  -- XX001
SELECT key_id FROM event_crypto.key_info WHERE key_id LIKE 'typed:%';
SELECT count(*) FROM event_crypto.protect('typed', 'payload', fields => ARRAY['y'], key_column => 'tenant',
                                          context_column => 'at');
INSERT INTO typed VALUES (2, 's', 7, NULL, '2026-01-02', '{"y":"secret-2"}');
SELECT id, event_crypto.decrypt_fields(payload, at::text)->>'y' AS y FROM typed WHERE id = 2;
SELECT key_id FROM event_crypto.key_info WHERE key_id LIKE '%7' ORDER BY 1;
-- refresh_decrypted_views(): re-creates every decrypted view (after an upgrade, or after someone dropped one), under
-- the name it has; tables whose owner the caller may not act for are reported, never skipped silently
CREATE TABLE other_owned (id int PRIMARY KEY, subject text, payload jsonb);
SELECT count(*) FROM event_crypto.protect('other_owned', 'payload', fields => ARRAY['x'], key_column => 'subject');
CREATE ROLE ec_other_owner;
ALTER TABLE other_owned OWNER TO ec_other_owner;
DROP VIEW typed_decrypted;
CREATE ROLE ec_refresher IN ROLE event_crypto_admin;
GRANT TRIGGER ON typed TO ec_refresher;
SET ROLE ec_refresher;
SELECT table_name, column_name, decrypted_view, refreshed, reason FROM event_crypto.refresh_decrypted_views() ORDER BY 1, 2;
RESET ROLE;
SELECT table_name, column_name, decrypted_view, refreshed, reason FROM event_crypto.refresh_decrypted_views() ORDER BY 1, 2;
SELECT c.relname FROM event_crypto.protected_columns p JOIN pg_class c ON c.oid = p.decrypted_view
WHERE p.table_name = 'typed'::regclass;
SELECT id, payload FROM typed_decrypted ORDER BY id;
ROLLBACK;
