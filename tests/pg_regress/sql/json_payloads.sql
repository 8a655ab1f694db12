-- Payloads stored as json, not jsonb (issue 13): protect() accepts a json column; the trigger works on the binary
-- form and stores valid json (key order, spacing and duplicate keys become jsonb's); the decrypted view keeps the
-- column's type; decrypt_fields() takes the column cast to jsonb; forget_subject, export_subject, blind indexes and
-- re-encryption work on it.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
CREATE TABLE jev (id serial PRIMARY KEY, subject text, payload json, email_idx text);
INSERT INTO jev (subject, payload) VALUES ('old', '{"email":"old@x.io"}');   -- before protect(): plaintext
SELECT count(*) FROM event_crypto.protect('jev', 'payload', fields => '{email,card.number}', key_column => 'subject', key_prefix => 'js:');
SELECT event_crypto.create_key('js-index') > 0 AS index_key;
SELECT count(*) FROM event_crypto.add_blind_index('jev', 'payload', 'email', 'email_idx', 'js-index');
INSERT INTO jev (subject, payload) VALUES
  ('alice', '{"z": 1,   "email": "alice@x.io", "card": {"number": "4111 1111 1111 1111", "exp": "12/29"}}'),
  ('bob',   '{"email": "first@x.io", "email": "bob@x.io", "n": 2}'),       -- duplicate key: the last one counts
  ('carol', '{"n": 3}'),                                                    -- nothing to encrypt: stored as given
  ('dave',  'null'),
  ('erin',  NULL);
COPY jev (subject, payload) FROM stdin;
frank	{"email": "frank@x.io", "tags": ["a", "b"]}
\.
-- stored as json, valid, encrypted; where the trigger rewrote a value its keys are in jsonb's order, without spaces
SELECT subject, pg_typeof(payload) AS type, json_typeof(payload) AS json_type,
       payload->>'email' LIKE '$ec2$%' AS email_encrypted, payload#>>'{card,number}' LIKE '$ec2$%' AS card_encrypted,
       payload#>>'{card,exp}' AS exp, email_idx = event_crypto.blind_index(event_crypto.decrypt_fields(payload::jsonb)->>'email', 'js-index') AS indexed
FROM jev ORDER BY id;
SELECT subject, payload::text FROM jev WHERE subject IN ('carol', 'dave') ORDER BY id;
SELECT subject, event_crypto.decrypt_fields(payload::jsonb) AS decrypted FROM jev WHERE subject IN ('alice', 'bob') ORDER BY id;
-- the decrypted view keeps the json type
SELECT subject, pg_typeof(payload) AS type, payload::text AS payload FROM jev_decrypted ORDER BY id;
-- lookups by blind index
SELECT subject FROM jev WHERE email_idx = event_crypto.blind_index('bob@x.io', 'js-index');
-- an UPDATE that leaves the payload alone, and one that changes it
UPDATE jev SET email_idx = 'forged' WHERE subject = 'frank';
UPDATE jev SET payload = '{"email":"bob2@x.io"}' WHERE subject = 'bob';
SELECT subject, email_idx = event_crypto.blind_index(event_crypto.decrypt_fields(payload::jsonb)->>'email', 'js-index') AS indexed,
       event_crypto.decrypt_fields(payload::jsonb)->>'email' AS email
FROM jev WHERE subject IN ('frank', 'bob') ORDER BY id;
-- a value jsonb cannot hold is refused, never stored as it came
INSERT INTO jev (subject, payload) VALUES ('nul', '{"email":"a\u0000b"}');                                    -- 22023
-- a copied envelope is refused in a json column as in a jsonb one
INSERT INTO jev (subject, payload) SELECT 'mallory', payload FROM jev WHERE subject = 'alice';               -- 23514
-- re-encryption: the row written before protect() is encrypted, the column stays json
SELECT rows_scanned, rows_rewritten, rows_invalid FROM event_crypto.reencrypt_batch('jev', 'payload', 100);
SELECT subject, pg_typeof(payload) AS type, payload->>'email' LIKE '$ec2$%' AS encrypted FROM jev WHERE subject = 'old';
-- export and forget
SELECT t->>'table' AS table_name, jsonb_array_length(t->'rows') AS rows, t->'rows'->0->'payload' AS payload
FROM jsonb_array_elements(event_crypto.export_subject('alice', key_prefix => 'js:')->'tables') t;
SELECT r->>'complete' AS complete FROM event_crypto.forget_subject('alice', key_prefix => 'js:') r;
SELECT subject, payload::text AS payload, email_idx IS NULL AS index_cleared FROM jev_decrypted WHERE subject = 'alice';
-- other types (text here) are still refused as payloads
CREATE TABLE jbad (id int, subject text, payload text);
SELECT count(*) FROM event_crypto.protect('jbad', 'payload', fields => '{email}', key_column => 'subject');  -- 42804
-- a json value jsonb cannot hold (\u0000), stored before protect(): re-encryption leaves that row alone and counts it
-- (rows_invalid), and encrypts the others (a pass used to fail on it, encrypting nothing)
CREATE TABLE jnul (id serial PRIMARY KEY, subject text, payload json);
INSERT INTO jnul (subject, payload) VALUES ('a', '{"email": "a@x.io", "note": "nul \u0000 here"}'), ('b', '{"email": "b@x.io"}');
SELECT count(*) FROM event_crypto.protect('jnul', 'payload', fields => '{email}', key_column => 'subject', key_prefix => 'jn:');
SELECT rows_scanned, rows_rewritten, rows_invalid, finished FROM event_crypto.reencrypt_batch('jnul', 'payload');
SELECT subject, payload::text LIKE '%"email":"$ec2$%' AS encrypted, payload::text LIKE '%\u0000%' AS kept_as_it_was FROM jnul ORDER BY id;
ROLLBACK;
