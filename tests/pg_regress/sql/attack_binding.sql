-- Issue 11, items 2, 7 and 15: an envelope that enters a protected column must be bound to the row's key (and its
-- context, and the field it is in), or the row is refused; whatever the trigger keeps is parsed; blind index values
-- are recomputed; the decrypted view and export_subject decrypt a row's envelopes only under the row's key, and one
-- bad row (written before these checks, or with triggers off) never makes a table unreadable; a value of another
-- shape than its path expects is encrypted whole, never skipped.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
CREATE TABLE ab (id serial PRIMARY KEY, subject text, stream text, payload jsonb, email_idx text);
SELECT count(*) FROM event_crypto.protect('ab', 'payload', fields => ARRAY['email'], key_column => 'subject',
                                          context_column => 'stream');
SELECT count(*) FROM event_crypto.add_blind_index('ab', 'payload', 'email', 'email_idx', 'ab-tenant');
INSERT INTO ab (subject, stream, payload) VALUES
    ('alice', 's1', '{"email": "alice@x.io"}'), ('alice', 's2', '{"email": "alice-2@x.io"}'),
    ('bob', 's3', '{"email": "bob@x.io"}'), ('mallory', 's4', '{"email": "mallory@x.io"}');

-- item 2: alice's envelope copied into an event of mallory, of bob, of another stream of alice, or into another
-- field of her own event: refused
INSERT INTO ab (subject, stream, payload) SELECT 'mallory', stream, payload FROM ab WHERE subject = 'alice' AND stream = 's1';  -- 23514
INSERT INTO ab (subject, stream, payload) SELECT 'mallory', 's4', payload FROM ab WHERE subject = 'alice' AND stream = 's1';    -- 23514
INSERT INTO ab (subject, stream, payload) SELECT 'bob', 's3', payload FROM ab WHERE subject = 'alice' AND stream = 's1';        -- 23514
INSERT INTO ab (subject, stream, payload) SELECT 'alice', 's2', payload FROM ab WHERE subject = 'alice' AND stream = 's1';      -- 23514
INSERT INTO ab (subject, stream, payload)
SELECT 'alice', 's1', jsonb_build_object('notes', payload->'email') FROM ab WHERE subject = 'alice' AND stream = 's1';          -- 23514
UPDATE ab SET payload = (SELECT payload FROM ab WHERE subject = 'alice' AND stream = 's1') WHERE subject = 'mallory';           -- 23514
\set VERBOSITY default
INSERT INTO ab (subject, stream, payload) SELECT 'mallory', 's4', payload FROM ab WHERE subject = 'alice' AND stream = 's1';
INSERT INTO ab (subject, stream, payload) SELECT 'alice', 's2', payload FROM ab WHERE subject = 'alice' AND stream = 's1';
\set VERBOSITY sqlstate
-- ... an envelope of another key the encryptor could make, e.g. the table's blind index key id
INSERT INTO ab (subject, stream, payload)
VALUES ('mallory', 's4', jsonb_build_object('email', event_crypto.encrypt_value('"x@x.io"', 'ab-tenant', 's4')));                -- 23514
-- a genuine replay (the row as it was, to its own subject and stream) is kept byte for byte; a blind index value
-- supplied with it is recomputed
INSERT INTO ab (subject, stream, payload, email_idx)
SELECT subject, stream, payload, 'a forged index value' FROM ab WHERE subject = 'alice' AND stream = 's1';
SELECT count(DISTINCT payload) AS same_payload, count(DISTINCT email_idx) AS same_index,
       bool_and(email_idx = event_crypto.blind_index('alice@x.io', 'ab-tenant')) AS recomputed
FROM ab WHERE subject = 'alice' AND stream = 's1';

-- item 7: a string that merely starts like an envelope is not one
INSERT INTO ab (subject, stream, payload) VALUES ('bob', 's3', '{"email": "$ec1$ bob-new@x.io (plaintext)"}');           -- 22P02
INSERT INTO ab (subject, stream, payload) VALUES ('bob', 's3', '{"email": "x", "other": "$ec1$AAAA"}');                  -- 22P02
INSERT INTO ab (subject, stream, payload) VALUES ('bob', 's3', '{"email": "$ec2$ bob-new@x.io (plaintext)"}');           -- 22P02
INSERT INTO ab (subject, stream, payload) VALUES ('bob', 's3', '{"email": "$ec2$AAAA"}');                                -- 22P02
INSERT INTO ab (subject, stream, payload) VALUES ('bob', 's3', '{"email": "$ec3$AAAA"}');                                -- 0A000
-- a supplied blind index value is replaced by the value's own: it cannot be made to match another subject
INSERT INTO ab (subject, stream, payload, email_idx)
VALUES ('mallory', 's4', '{"email": "mallory-2@x.io"}', event_crypto.blind_index('bob@x.io', 'ab-tenant'));
SELECT subject FROM ab WHERE email_idx = event_crypto.blind_index('bob@x.io', 'ab-tenant') ORDER BY id;
UPDATE ab SET email_idx = event_crypto.blind_index('bob@x.io', 'ab-tenant') WHERE subject = 'mallory';
SELECT subject FROM ab WHERE email_idx = event_crypto.blind_index('bob@x.io', 'ab-tenant') ORDER BY id;
-- a forgotten subject: new data refused, forged envelopes refused, its own old rows replayed with no index value
CREATE TEMP TABLE bob_history AS SELECT subject, stream, payload FROM ab WHERE subject = 'bob';
SELECT (event_crypto.forget_subject('bob'))->'versions_destroyed' AS destroyed;
INSERT INTO ab (subject, stream, payload) VALUES ('bob', 's3', '{"email": "bob-new@x.io"}');                 -- 23514
INSERT INTO ab (subject, stream, payload) VALUES ('bob', 's3', '{"email": "$ec1$ bob-new@x.io"}');           -- 22P02
INSERT INTO ab (subject, stream, payload, email_idx)
SELECT subject, stream, payload, event_crypto.blind_index('bob@x.io', 'ab-tenant') FROM bob_history;
SELECT count(*) AS bob_rows, count(email_idx) AS bob_indexed FROM ab WHERE subject = 'bob';
-- ... while its envelopes (their key now only a tombstone, a digest of its id, with the same handle) copied to
-- another subject's row are still refused
-- (the message names no key id: the handle is the tombstone's, whose key id is known only as a digest)
\set VERBOSITY default
DO $$
DECLARE d text;
BEGIN
    INSERT INTO ab (subject, stream, payload) SELECT 'mallory', stream, payload FROM bob_history LIMIT 1;
    RAISE NOTICE 'stored';
EXCEPTION WHEN check_violation THEN
    GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
    RAISE NOTICE 'refused; detail names bob: %, says shredded whole: %', d LIKE '%bob%', d LIKE '%shredded whole%';
END $$;
\set VERBOSITY sqlstate

-- One bad row cannot make the table unreadable. Rows slipped in with triggers off (or before this check existed):
-- alice's envelope in mallory's row, a malformed envelope, an envelope of another context.
SET session_replication_role = replica;
INSERT INTO ab (subject, stream, payload) SELECT 'mallory', 's4', payload FROM ab WHERE subject = 'alice' AND stream = 's1' LIMIT 1;
INSERT INTO ab (subject, stream, payload) VALUES ('mallory', 's4', '{"email": "$ec1$ plaintext"}');
INSERT INTO ab (subject, stream, payload) SELECT 'alice', 's2', payload FROM ab WHERE subject = 'alice' AND stream = 's1' LIMIT 1;
RESET session_replication_role;
-- the view reads each of them as null (the row's own key and context only); every other row decrypts
SELECT id, subject, stream, payload FROM ab_decrypted ORDER BY id;
-- export: the subject's rows, the bad envelopes as null and counted
SELECT t->'invalid_fields' AS invalid, jsonb_path_query_array(t, '$.rows[*].payload') AS payloads
FROM jsonb_path_query(event_crypto.export_subject('mallory'), '$.tables[*]') t;
-- decrypt_row itself: null (default), keep, or error
SELECT event_crypto.decrypt_row(payload, 'ab', 'payload', subject, stream) AS as_null,
       event_crypto.decrypt_row(payload, 'ab', 'payload', subject, stream, on_invalid => 'keep')->>'email' LIKE '$ec1$%' AS kept
FROM ab WHERE id = (SELECT max(id) FROM ab WHERE subject = 'mallory');
SELECT event_crypto.decrypt_row(payload, 'ab', 'payload', subject, stream, on_invalid => 'error')
FROM ab WHERE id = (SELECT max(id) FROM ab WHERE subject = 'mallory');                                      -- 22P02 the malformed one
-- re-encryption skips and counts them, and re-encrypts the rest
SELECT event_crypto.rotate_key('subject:alice') AS alice_v2;
SELECT rows_scanned, rows_rewritten, rows_invalid FROM event_crypto.reencrypt_batch('ab', 'payload', 1000);
-- and retiring a version counts the rows it can read and refuses while any row uses it
SELECT event_crypto.retire_key_version('subject:alice', 1);                                                 -- 55006
-- Format 2 (the default): the envelope names its key by a handle, looked up to its key id as the format 1 key id
-- was (the messages above name alice's key id as they did)
SELECT payload->>'email' LIKE '$ec2$%' AS format_2 FROM ab WHERE subject = 'alice' AND stream = 's1';
-- ... alice's envelope (version 2) with its handle and version replaced by those of mallory's key, in mallory's
-- row: bound by name, but the header is authenticated and mallory's key does not open it; and by a handle no key has
\set VERBOSITY default
INSERT INTO ab (subject, stream, payload)
SELECT 'mallory', 's4', jsonb_build_object('email', '$ec2$' || translate(encode(overlay(
           decode(translate(substr(a.payload->>'email', 6), '-_', '+/') || repeat('=', (4 - length(substr(a.payload->>'email', 6)) % 4) % 4), 'base64')
           PLACING int8send(k.handle) || '\x01'::bytea FROM 2 FOR 9), 'base64'), '+/=' || chr(10), '-_'))
FROM ab a, event_crypto.keys k WHERE a.subject = 'alice' AND a.stream = 's1' AND k.key_id = 'subject:mallory' LIMIT 1;  -- 23514
INSERT INTO ab (subject, stream, payload)
SELECT 'mallory', 's4', jsonb_build_object('email', '$ec2$' || translate(encode(overlay(
           decode(translate(substr(a.payload->>'email', 6), '-_', '+/') || repeat('=', (4 - length(substr(a.payload->>'email', 6)) % 4) % 4), 'base64')
           PLACING '\x0000000000000001'::bytea FROM 2 FOR 8), 'base64'), '+/=' || chr(10), '-_'))
FROM ab a WHERE a.subject = 'alice' AND a.stream = 's1' LIMIT 1;                                                -- 23514
\set VERBOSITY sqlstate
-- ... and alice's envelope written in format 1 (event_crypto.envelope_format = 1) is refused in mallory's row alike
SET event_crypto.envelope_format = 1;
INSERT INTO ab (subject, stream, payload) VALUES ('alice', 's1', '{"email": "alice-v1@x.io"}');
RESET event_crypto.envelope_format;
SELECT payload->>'email' LIKE '$ec1$%' AS format_1 FROM ab WHERE id = (SELECT max(id) FROM ab WHERE subject = 'alice');
INSERT INTO ab (subject, stream, payload)
SELECT 'mallory', 's1', payload FROM ab WHERE id = (SELECT max(id) FROM ab WHERE subject = 'alice');       -- 23514
ROLLBACK;

-- item 15: a field whose value has another shape than its path expects is encrypted whole, never left readable
BEGIN;
CREATE TABLE shapes (id serial PRIMARY KEY, subject text, payload jsonb);
SELECT count(*) FROM event_crypto.protect('shapes', 'payload', fields => ARRAY['cards[*].number', 'address.street'],
                                          key_column => 'subject');
INSERT INTO shapes (subject, payload) VALUES
    ('s', '{"cards": [{"number": "4111"}], "address": {"street": "1 Main", "city": "X"}}'),
    ('s', '{"cards": {"number": "4111 1111 1111 1111"}, "address": "1 Main St, X"}'),
    ('s', '{"cards": "4111 1111 1111 1111", "address": ["1 Main St"]}'),
    ('s', '{"cards": null, "address": null}');
SELECT id, payload->'cards' ?| ARRAY['number'] AS cards_object_left,
       jsonb_typeof(payload->'cards') AS cards, jsonb_typeof(payload->'address') AS address,
       payload::text LIKE '%4111%' OR payload::text LIKE '%Main%' AS plaintext_visible
FROM shapes ORDER BY id;
SELECT id, payload FROM shapes_decrypted ORDER BY id;
-- a document root the paths cannot look into is refused (nothing could be encrypted)
INSERT INTO shapes (subject, payload) VALUES ('s', '[{"cards": [{"number": "4111"}]}]');                    -- 22023
SELECT event_crypto.encrypt_fields('[{"email": "a@x.io"}]', '{email}', 'subject:s');                        -- 22023
ROLLBACK;
