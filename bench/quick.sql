-- A quick, single-run measurement (not the full benchmark): 100k realistic events (~325 bytes of JSONB each,
-- nested, 1,000 subjects), 3 sensitive fields. Run after `bash demo/run.sh` has installed and configured the
-- extension in the system cluster:
--     runuser -u postgres -- psql -X -f bench/quick.sql
-- Needs pgcrypto (postgresql-contrib) for the comparison rows.
\set ON_ERROR_STOP 1
DROP DATABASE IF EXISTS event_crypto_quick;
CREATE DATABASE event_crypto_quick;
\c event_crypto_quick
SET client_min_messages = warning;
CREATE EXTENSION event_crypto;
CREATE EXTENSION pgcrypto;
SELECT event_crypto.create_key('k') \g /dev/null
CREATE TABLE src AS
SELECT i, gen_random_uuid() AS stream_id, 'u' || (i % 1000) AS subj, jsonb_build_object(
  'email', 'user' || i || '@example.com', 'phone', '+1-555-' || lpad(i::text, 7, '0'), 'ssn', lpad(i::text, 9, '0'),
  'name', 'Name ' || i, 'address', jsonb_build_object('street', i || ' Main St', 'city', 'Springfield', 'zip', '12345'),
  'amount', (i % 1000) / 7.0, 'currency', 'EUR',
  'items', jsonb_build_array(jsonb_build_object('sku', 'A' || i, 'qty', 1, 'price', 9.99),
                             jsonb_build_object('sku', 'B', 'qty', 2, 'price', 1.5))) AS payload
FROM generate_series(1, 100000) i;
CREATE TABLE plain_ev (id bigserial PRIMARY KEY, stream_id uuid, subject_id text, payload jsonb);
CREATE TABLE prot_ev (id bigserial PRIMARY KEY, stream_id uuid, subject_id text, payload jsonb);
SELECT event_crypto.protect('prot_ev', 'payload', fields => ARRAY['email','phone','ssn'],
                            key_column => 'subject_id', context_column => 'stream_id') \g /dev/null
-- create the 1,000 subject keys first (first-use creation is a one-off per subject)
INSERT INTO prot_ev (stream_id, subject_id, payload) SELECT stream_id, subj, payload FROM src WHERE i <= 1000;
CREATE TABLE enc AS SELECT event_crypto.encrypt_fields(payload, ARRAY['email','phone','ssn'], 'k') AS p FROM src;
TRUNCATE plain_ev, prot_ev;
VACUUM ANALYZE src, enc;
-- one backend for every row (event_crypto's functions are PARALLEL SAFE; a parallel plan would halve the scans here)
SET max_parallel_workers_per_gather = 0;
\timing on
\echo '== scan encrypt, 3 fields, one key'
SELECT count(event_crypto.encrypt_fields(payload, ARRAY['email','phone','ssn'], 'k')) FROM src;
\echo '== scan decrypt'
SELECT count(event_crypto.decrypt_fields(p)) FROM enc;
\echo '== pgcrypto encrypt_iv AES-CBC (random IV), same 3 fields rewritten in SQL'
SELECT count(jsonb_set(jsonb_set(jsonb_set(payload,
  '{email}', to_jsonb(encode(encrypt_iv(convert_to(payload->>'email','UTF8'), '\x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f'::bytea, gen_random_bytes(16), 'aes-cbc'), 'base64'))),
  '{phone}', to_jsonb(encode(encrypt_iv(convert_to(payload->>'phone','UTF8'), '\x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f'::bytea, gen_random_bytes(16), 'aes-cbc'), 'base64'))),
  '{ssn}', to_jsonb(encode(encrypt_iv(convert_to(payload->>'ssn','UTF8'), '\x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f'::bytea, gen_random_bytes(16), 'aes-cbc'), 'base64')))) FROM src;
\echo '== blind_index over 100k values'
SELECT count(event_crypto.blind_index(payload->>'email', 'k')) FROM src;
\echo '== pgcrypto hmac with a literal key'
SELECT count(hmac(payload->>'email', 'literal-key-0123456789abcdef', 'sha256')) FROM src;
\echo '== INSERT ... SELECT 100k into an unprotected table'
INSERT INTO plain_ev (stream_id, subject_id, payload) SELECT stream_id, subj, payload FROM src;
\echo '== INSERT ... SELECT 100k into a protected table (3 fields, per-subject keys, context)'
INSERT INTO prot_ev (stream_id, subject_id, payload) SELECT stream_id, subj, payload FROM src;
\timing off
SELECT count(*) FILTER (WHERE payload->>'email' LIKE '$ec2$%') AS encrypted_rows FROM prot_ev;
