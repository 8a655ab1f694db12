-- Compression before encryption (compress => 'zstd', envelope format 2 flag 0x02): every function with 'none',
-- 'zstd' and a bad value, NULLs, small values (never compressed), 4 KB and 64 KB documents, a protected table, the
-- flag authenticated. (A forged decompression bomb needs the data key to seal: it is covered by the core's tests,
-- crates/event_crypto_core/tests/compression.rs, a_decompression_bomb_fails_cleanly_and_fast.)
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
SELECT event_crypto.create_key('cmp');
SELECT event_crypto.create_key('cmp-chacha', 'chacha20-poly1305');
-- the first byte of an envelope's blob: algorithm << 4 | flags (0x02: compressed)
CREATE FUNCTION pg_temp.first_byte(env text) RETURNS int LANGUAGE sql IMMUTABLE AS $$
    SELECT get_byte(decode(translate(substr(env, 6, 4), '-_', '+/'), 'base64'), 0) $$;
CREATE FUNCTION pg_temp.compressed(env text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT (pg_temp.first_byte(env) & 2) <> 0 $$;
-- documents: 4 KB and 64 KB of realistic JSON (repeated structure, varying values)
CREATE TEMP TABLE big (name text, doc jsonb);
INSERT INTO big
SELECT name, jsonb_build_object('id', 1, 'email', 'a@x.io', 'body', jsonb_agg(jsonb_build_object(
           'sku', 'SKU-' || i, 'qty', i % 7, 'price', (i * 37 % 1000) / 100.0, 'note', 'gift wrap ' || (i % 3 = 0))))
FROM (VALUES ('4k', 45), ('64k', 720)) AS v(name, n), generate_series(1, n) AS i
GROUP BY name;
SELECT name, length(doc->>'body') BETWEEN 0.8 * CASE name WHEN '4k' THEN 4096 ELSE 65536 END
                                      AND 1.2 * CASE name WHEN '4k' THEN 4096 ELSE 65536 END AS about_right
FROM big ORDER BY name;

-- encrypt_fields: 'none' (the default) and 'zstd'
CREATE TEMP TABLE enc AS
SELECT b.name, c AS compress, k AS key_id,
       event_crypto.encrypt_fields(b.doc, '{email,body}', k, compress => c) AS doc
FROM big b, unnest(ARRAY['none', 'zstd']) AS c, unnest(ARRAY['cmp', 'cmp-chacha']) AS k;
-- the short e-mail address is never compressed; the body is with 'zstd' only; every document round trips
SELECT e.name, e.compress, e.key_id, pg_temp.compressed(e.doc->>'email') AS email_compressed,
       pg_temp.compressed(e.doc->>'body') AS body_compressed,
       event_crypto.decrypt_fields(e.doc) = b.doc AS round_trip
FROM enc e JOIN big b USING (name) ORDER BY 1, 2, 3;
-- compressed envelopes are much shorter; uncompressed ones as long as ever
SELECT n.name, n.key_id, length(z.doc->>'body') < length(n.doc->>'body') / 3 AS much_shorter,
       length(n.doc->>'body') > length(b.doc->>'body') AS uncompressed_longer_than_plaintext
FROM enc n JOIN enc z USING (name, key_id) JOIN big b USING (name)
WHERE n.compress = 'none' AND z.compress = 'zstd' ORDER BY 1, 2;
-- the default is 'none', and 'none' is the header of before (algorithm 1, no flag)
SELECT pg_temp.first_byte(event_crypto.encrypt_fields(doc, '{body}', 'cmp')->>'body') AS first_byte_default,
       pg_temp.first_byte(event_crypto.encrypt_fields(doc, '{body}', 'cmp', NULL, 'zstd')->>'body') AS first_byte_zstd,
       pg_temp.first_byte(event_crypto.encrypt_fields(doc, '{body}', 'cmp', 'stream-1', 'zstd')->>'body') AS with_context
FROM big WHERE name = '4k';
-- with a context
SELECT event_crypto.decrypt_fields(event_crypto.encrypt_fields(doc, '{body}', 'cmp', 'stream-1', 'zstd'), 'stream-1') = doc AS ok
FROM big;

-- encrypt_value: small values never compressed, large ones are; NULL in, NULL out
SELECT v AS value, pg_temp.compressed(event_crypto.encrypt_value(v::jsonb, 'cmp', compress => 'zstd')) AS compressed,
       event_crypto.decrypt_value(event_crypto.encrypt_value(v::jsonb, 'cmp', compress => 'zstd')) = v::jsonb AS round_trip
FROM unnest(ARRAY['1', 'true', 'null', '"a@x.io"', '{"a":[1,2]}', '""']) AS v;
SELECT name, pg_temp.compressed(event_crypto.encrypt_value(doc, 'cmp', compress => 'zstd')) AS compressed,
       pg_temp.compressed(event_crypto.encrypt_value(doc, 'cmp')) AS compressed_by_default,
       event_crypto.decrypt_value(event_crypto.encrypt_value(doc, 'cmp', 'ctx', 'zstd'), 'ctx') = doc AS round_trip
FROM big ORDER BY 1;
SELECT event_crypto.encrypt_value(NULL, 'cmp', compress => 'zstd') IS NULL AS null_value,
       event_crypto.encrypt_fields(NULL, '{a}', 'cmp', compress => 'zstd') IS NULL AS null_payload;

-- the threshold: 256 bytes of JSON text by default (a setting); values up to it are never compressed
SELECT current_setting('event_crypto.compress_threshold') AS threshold;
SELECT n AS text_length,
       pg_temp.compressed(event_crypto.encrypt_value(to_jsonb(repeat('a', n - 2)), 'cmp', compress => 'zstd')) AS compressed
FROM unnest(ARRAY[255, 256, 257, 258]) AS n;
SET event_crypto.compress_threshold = 1000;
SELECT pg_temp.compressed(event_crypto.encrypt_value(to_jsonb(repeat('a', 998)), 'cmp', compress => 'zstd')) AS at_1000,
       pg_temp.compressed(event_crypto.encrypt_value(to_jsonb(repeat('a', 999)), 'cmp', compress => 'zstd')) AS at_1001;
SET event_crypto.compress_threshold = 0;
-- even with threshold 0, a value zstd cannot shrink is stored as it is
SELECT pg_temp.compressed(event_crypto.encrypt_value('"x"', 'cmp', compress => 'zstd')) AS tiny;
SET event_crypto.compress_threshold = -1;
RESET event_crypto.compress_threshold;

-- bad values: 22023, the value not echoed; NULL: 22004
SELECT event_crypto.encrypt_fields('{"a":1}', '{a}', 'cmp', compress => 'gzip');
SELECT event_crypto.encrypt_value('1', 'cmp', compress => 'ZSTD');
SELECT event_crypto.encrypt_value('1', 'cmp', compress => NULL);
SELECT event_crypto.encrypt_fields('{"a":1}', '{a}', 'cmp', compress => NULL);
-- format 1 has no compressed flag: compression is refused (0A000), 'none' works as ever
SET event_crypto.envelope_format = 1;
SELECT event_crypto.encrypt_value('1', 'cmp', compress => 'zstd');
SELECT event_crypto.encrypt_fields('{"a":1}', '{a}', 'cmp', compress => 'zstd');
SELECT left(event_crypto.encrypt_value('1', 'cmp', compress => 'none'), 5) AS prefix;
RESET event_crypto.envelope_format;

-- the flag is authenticated: cleared on a compressed envelope, set on an uncompressed one (XX001); an unknown flag
-- bit is refused as malformed (22P02)
CREATE FUNCTION pg_temp.set_first_byte(env text, b int) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT '$ec2$' || rtrim(translate(replace(encode(set_byte(decode(translate(substr(env, 6), '-_', '+/')
               || repeat('=', (4 - length(substr(env, 6)) % 4) % 4), 'base64'), 0, b), 'base64'), E'\n', ''),
               '+/', '-_'), '=')
    $$;
CREATE TEMP TABLE one AS
SELECT event_crypto.encrypt_value(doc, 'cmp', compress => 'zstd') AS z, event_crypto.encrypt_value(doc, 'cmp') AS n
FROM big WHERE name = '4k';
SELECT pg_temp.first_byte(z) AS z_byte, pg_temp.first_byte(n) AS n_byte FROM one;
SELECT event_crypto.decrypt_value(pg_temp.set_first_byte(z, 16)) FROM one;
SELECT event_crypto.decrypt_value(pg_temp.set_first_byte(n, 18)) FROM one;
SELECT event_crypto.decrypt_value(pg_temp.set_first_byte(z, 22)) FROM one;
-- the untouched ones still decrypt (the helper re-encodes faithfully)
SELECT event_crypto.decrypt_value(pg_temp.set_first_byte(z, 18)) = (SELECT doc FROM big WHERE name = '4k') AS same FROM one;

-- a protected table with compress => 'zstd'
CREATE TABLE cmp_events (id int PRIMARY KEY, subject text, payload jsonb);
SELECT compress FROM event_crypto.protect('cmp_events', 'payload', fields => '{email,body}', key_column => 'subject',
                                          compress => 'zstd');
SELECT compress FROM event_crypto.protected_columns WHERE table_name = 'cmp_events'::regclass;
INSERT INTO cmp_events SELECT row_number() OVER (ORDER BY name), 'alice', doc FROM big;
SELECT id, pg_temp.compressed(payload->>'email') AS email_compressed, pg_temp.compressed(payload->>'body') AS body_compressed
FROM cmp_events ORDER BY id;
SELECT c.id, c.payload = b.doc AS round_trip
FROM cmp_events_decrypted c JOIN (SELECT row_number() OVER (ORDER BY name) AS id, doc FROM big) b USING (id) ORDER BY 1;
-- protect() again without compress: back to 'none' for new rows; old rows still read
SELECT compress FROM event_crypto.protect('cmp_events', 'payload', fields => '{email,body}', key_column => 'subject');
INSERT INTO cmp_events SELECT 10, 'bob', doc FROM big WHERE name = '4k';
SELECT id, pg_temp.compressed(payload->>'body') AS body_compressed FROM cmp_events ORDER BY id;
SELECT count(*) AS readable FROM cmp_events_decrypted c JOIN big b ON c.payload = b.doc;
-- a bad value, and a hand-written configuration row, are refused
SELECT event_crypto.protect('cmp_events', 'payload', fields => '{email}', key_column => 'subject', compress => 'lz4');
SELECT event_crypto.protect('cmp_events', 'payload', fields => '{email}', key_column => 'subject', compress => NULL);
UPDATE event_crypto.protected_columns SET compress = 'brotli' WHERE table_name = 'cmp_events'::regclass;
-- format 1 with a table that compresses: the write is refused, not stored without a word
SELECT compress FROM event_crypto.protect('cmp_events', 'payload', fields => '{email,body}', key_column => 'subject',
                                          compress => 'zstd');
SET event_crypto.envelope_format = 1;
INSERT INTO cmp_events SELECT 11, 'carol', doc FROM big WHERE name = '4k';
RESET event_crypto.envelope_format;
-- the protect trigger checks compressed envelopes entering the table like any other (bound to the row)
INSERT INTO cmp_events SELECT 12, 'alice', payload FROM cmp_events WHERE id = 1;
UPDATE cmp_events SET payload = payload WHERE id = 1;
SELECT count(*) AS rows FROM cmp_events;
SELECT event_crypto.unprotect('cmp_events', 'payload') IS NOT NULL AS unprotected;
ROLLBACK;
