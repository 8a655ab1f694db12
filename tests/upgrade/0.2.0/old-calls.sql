-- Run with this library under release 0.2.0's SQL objects, before ALTER EXTENSION UPDATE (tests/upgrade.sh): every
-- function whose signature gained parameters since 0.2.0 still works when called as 0.2.0 defined it (src/compat.rs
-- forwards the old C symbol with the new parameters' defaults). In a transaction that is rolled back: the data the
-- upgrade compares stays as it was.
\set ON_ERROR_STOP on
BEGIN;
CREATE TABLE u2_old_calls (id serial PRIMARY KEY, subject text, payload jsonb);
SELECT table_name, fields, key_prefix, allow_unlisted_types
FROM event_crypto.protect('u2_old_calls', 'payload', ARRAY['email'], NULL, 'subject', 'old:', NULL, NULL, NULL, 'error', NULL, false);
SELECT (event_crypto.protect('u2_old_calls', 'payload', fields => ARRAY['email', 'phone'], key_column => 'subject',
                             key_prefix => 'old:')).fields;
INSERT INTO u2_old_calls (subject, payload) VALUES ('s1', '{"email": "a@example.com", "phone": "+15550100", "n": 1}');
SELECT payload->>'email' LIKE '$ec%' AS email_encrypted, payload->>'phone' LIKE '$ec%' AS phone_encrypted, payload->'n' AS n
FROM u2_old_calls;
SELECT event_crypto.decrypt_fields(payload) FROM u2_old_calls;
SELECT event_crypto.decrypt_fields(event_crypto.encrypt_fields('{"a": "x", "b": 2}', '{a}', 'u2:aes'));
SELECT event_crypto.decrypt_fields(event_crypto.encrypt_fields('{"a": "x"}', ARRAY['a'], 'u2:aes', 'ctx'), 'ctx');
SELECT event_crypto.decrypt_value(event_crypto.encrypt_value('"v"', 'u2:aes'));
SELECT event_crypto.decrypt_value(event_crypto.encrypt_value('[1, 2]', 'u2:chacha', context => 'c'), 'c');
ROLLBACK;
