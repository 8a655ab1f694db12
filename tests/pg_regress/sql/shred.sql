-- Shredding: policies on decrypt, other keys intact, no new data under a shredded id.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
SELECT event_crypto.create_key('subject:alice');
SELECT event_crypto.create_key('subject:bob', 'chacha20-poly1305');
CREATE TEMP TABLE events (subject text, payload jsonb);
INSERT INTO events SELECT s, event_crypto.encrypt_fields(jsonb_build_object('email', s || '@x.io', 'n', 1, 'deep', jsonb_build_object('v', s)), '{email,deep.v}', 'subject:' || s)
FROM unnest(ARRAY['alice', 'bob']) AS s;
SELECT event_crypto.rotate_key('subject:alice');
INSERT INTO events SELECT 'alice', event_crypto.encrypt_fields('{"email":"alice2@x.io","n":2}', '{email}', 'subject:alice');
SELECT subject, event_crypto.decrypt_fields(payload) FROM events ORDER BY subject, payload->'n';
SELECT event_crypto.shred_key('subject:alice') AS versions_destroyed;
SELECT subject, event_crypto.decrypt_fields(payload) FROM events ORDER BY subject, payload->'n';
SELECT subject, event_crypto.decrypt_fields(payload, NULL, 'keep') = payload AS kept FROM events ORDER BY subject, payload->'n';
SELECT event_crypto.decrypt_fields(payload, NULL, 'error') FROM events WHERE subject = 'alice';   -- 55000
SELECT event_crypto.decrypt_value(event_crypto.encrypt_value('"v"', 'subject:bob')) AS bob_value;
SELECT event_crypto.encrypt_fields('{"email":"x"}', '{email}', 'subject:alice');                  -- 42704 (as for a key id that never existed)
SELECT event_crypto.encrypt_value('"x"', 'subject:alice');                                         -- 42704
ROLLBACK;

-- decrypt_value with a shredded key: NULL, the envelope, or an error
BEGIN;
SELECT event_crypto.create_key('v');
CREATE TEMP TABLE ev AS SELECT event_crypto.encrypt_value('{"a":1}', 'v') AS e;
SELECT event_crypto.shred_key('v');
SELECT event_crypto.decrypt_value(e) IS NULL AS null_policy, event_crypto.decrypt_value(e, NULL, 'keep') = to_jsonb(e) AS keep_policy FROM ev;
SELECT event_crypto.decrypt_value(e, NULL, 'error') FROM ev;   -- 55000
ROLLBACK;
