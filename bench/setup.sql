-- Benchmark schema: realistic events, event_crypto tables, and the alternatives users would write instead.
-- Variables: :rows (events), :subjects (distinct subjects).
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
CREATE EXTENSION event_crypto;
CREATE EXTENSION pgcrypto;

-- Events of 300-600 bytes, nested, with sensitive fields (email, phone, ssn, name, address.street) and others.
CREATE TABLE src AS
SELECT i, gen_random_uuid() AS stream_id, 'u' || (i % :subjects) AS subject_id,
       (ARRAY['CustomerRegistered','OrderPlaced','PaymentCaptured','AddressChanged'])[1 + i % 4] AS type,
       jsonb_build_object(
         'email', 'user' || i || '@' || (ARRAY['example.com','mail.example.org','corp.example.net'])[1 + i % 3],
         'phone', '+1-555-' || lpad((i::bigint * 7919 % 10000000)::text, 7, '0'),
         'ssn', lpad((i::bigint * 104729 % 1000000000)::text, 9, '0'),
         'name', (ARRAY['Alice','Bob','Carol','Dave','Erin','Frank'])[1 + i % 6] || ' ' || repeat('X', 3 + i % 12),
         'address', jsonb_build_object('street', (i % 999 + 1) || ' ' || (ARRAY['Main St','Oak Avenue','Elm Road'])[1 + i % 3],
                                       'city', 'Springfield', 'zip', lpad((i % 99999)::text, 5, '0'), 'country', 'US'),
         'amount', round(((i::bigint * 37) % 100000) / 100.0, 2), 'currency', (ARRAY['EUR','USD','GBP'])[1 + i % 3],
         'items', (SELECT jsonb_agg(jsonb_build_object('sku', 'SKU-' || (i + k), 'qty', 1 + k, 'price', round(((i + k) % 5000) / 100.0, 2)))
                   FROM generate_series(0, i % 3) k),
         'meta', jsonb_build_object('version', 1 + i % 3, 'source', 'bench', 'correlation', md5(i::text))
       ) AS payload
FROM generate_series(1, :rows) i;
ALTER TABLE src ADD PRIMARY KEY (i);

-- Keys: one for the single-key jobs, one per subject, one for blind indexes.
SELECT event_crypto.create_key('bench-key') \g /dev/null
SELECT count(event_crypto.create_key('subject:u' || s)) FROM generate_series(0, :subjects - 1) s \g /dev/null
SELECT event_crypto.create_key('bench-index') \g /dev/null

-- Pre-encrypted copies for the decrypt jobs.
CREATE TABLE enc_single AS SELECT i, event_crypto.encrypt_fields(payload, ARRAY['email','phone','ssn'], 'bench-key') AS p FROM src;
CREATE TABLE enc_subject AS SELECT i, event_crypto.encrypt_fields(payload, ARRAY['email','phone','ssn'], 'subject:' || subject_id) AS p FROM src;

-- pgcrypto equivalents, as users write them: AES-CBC with a random IV stored in front, PGP symmetric, HMAC.
CREATE FUNCTION cbc_enc(t text) RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE iv bytea := gen_random_bytes(16);
BEGIN
  RETURN encode(iv || encrypt_iv(convert_to(t, 'UTF8'), '\x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f'::bytea, iv, 'aes-cbc'), 'base64');
END $$;
CREATE FUNCTION cbc_dec(t text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE b bytea := decode(t, 'base64');
BEGIN
  RETURN convert_from(decrypt_iv(substr(b, 17), '\x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f'::bytea, substr(b, 1, 16), 'aes-cbc'), 'UTF8');
END $$;
CREATE FUNCTION rewrite3(p jsonb, f text) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE k text; v text;
BEGIN
  FOREACH k IN ARRAY ARRAY['email', 'phone', 'ssn'] LOOP
    v := p->>k;
    IF v IS NOT NULL THEN
      p := jsonb_set(p, ARRAY[k], to_jsonb(CASE f
             WHEN 'cbc' THEN cbc_enc(v)
             WHEN 'cbc_dec' THEN cbc_dec(v)
             WHEN 'pgp' THEN encode(pgp_sym_encrypt(v, 'bench-passphrase'), 'base64')
             WHEN 'pgp_s2k0' THEN encode(pgp_sym_encrypt(v, 'bench-passphrase', 's2k-mode=0'), 'base64')
             ELSE md5(v) END));
    END IF;
  END LOOP;
  RETURN p;
END $$;
CREATE TABLE cbc_enc_doc AS SELECT i, rewrite3(payload, 'cbc') AS p FROM src;

-- Target tables: plain, protected by event_crypto (per-subject keys, stream context), and by plpgsql triggers.
CREATE TABLE t_plain (id bigserial PRIMARY KEY, stream_id uuid, subject_id text, type text, payload jsonb);
CREATE TABLE t_ec (LIKE t_plain INCLUDING ALL);
SELECT event_crypto.protect('t_ec', 'payload', fields => ARRAY['email','phone','ssn'],
                            key_column => 'subject_id', context_column => 'stream_id') \g /dev/null
-- The rows exactly as t_ec stores them: inserted into t_plain they give the cost of wider rows, inserted into t_ec
-- (a replay or restore) the cost of checking that every envelope is bound to its row.
INSERT INTO t_ec (stream_id, subject_id, type, payload) SELECT stream_id, subject_id, type, payload FROM src ORDER BY i;
CREATE TABLE src_stored AS SELECT stream_id, subject_id, type, payload FROM t_ec ORDER BY id;
TRUNCATE t_ec;
-- Protected like t_ec, but for a field the events do not have: the trigger's own cost on rows with nothing to do.
CREATE TABLE t_ec_none (LIKE t_plain INCLUDING ALL);
SELECT event_crypto.protect('t_ec_none', 'payload', fields => ARRAY['not_in_these_events'],
                            key_column => 'subject_id', context_column => 'stream_id') \g /dev/null
CREATE TABLE t_ec_single (LIKE t_plain INCLUDING ALL);
SELECT event_crypto.protect('t_ec_single', 'payload', fields => ARRAY['email','phone','ssn'], key_id => 'bench-key') \g /dev/null
-- Protected like t_ec, with the PII guard warning about personal data outside the fields (these events carry a name
-- and a street address in plaintext: every row is reported; the timed session discards the warnings).
CREATE TABLE t_ec_pii (LIKE t_plain INCLUDING ALL);
SELECT event_crypto.protect('t_ec_pii', 'payload', fields => ARRAY['email','phone','ssn'],
                            key_column => 'subject_id', context_column => 'stream_id', unprotected_pii => 'warn') \g /dev/null
-- Without any index (no primary key): the insert cost of the rows themselves, where the trigger's share is largest.
CREATE TABLE t_plain_noidx (id bigint GENERATED BY DEFAULT AS IDENTITY, stream_id uuid, subject_id text, type text, payload jsonb);
CREATE TABLE t_ec_noidx (LIKE t_plain_noidx INCLUDING ALL);
SELECT event_crypto.protect('t_ec_noidx', 'payload', fields => ARRAY['email','phone','ssn'],
                            key_column => 'subject_id', context_column => 'stream_id') \g /dev/null
CREATE FUNCTION trg_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.payload := rewrite3(NEW.payload, TG_ARGV[0]); RETURN NEW; END $$;
CREATE TABLE t_cbc (LIKE t_plain INCLUDING ALL);
CREATE TRIGGER enc BEFORE INSERT ON t_cbc FOR EACH ROW EXECUTE FUNCTION trg_rewrite('cbc');
CREATE TABLE t_pgp (LIKE t_plain INCLUDING ALL);
CREATE TRIGGER enc BEFORE INSERT ON t_pgp FOR EACH ROW EXECUTE FUNCTION trg_rewrite('pgp');
CREATE TABLE t_pgp_s2k0 (LIKE t_plain INCLUDING ALL);
CREATE TRIGGER enc BEFORE INSERT ON t_pgp_s2k0 FOR EACH ROW EXECUTE FUNCTION trg_rewrite('pgp_s2k0');
CREATE TABLE t_md5 (LIKE t_plain INCLUDING ALL);
CREATE TRIGGER enc BEFORE INSERT ON t_md5 FOR EACH ROW EXECUTE FUNCTION trg_rewrite('md5');

-- The same rows as a COPY file for the COPY jobs.
COPY (SELECT stream_id, subject_id, type, payload FROM src ORDER BY i) TO '/tmp/event_crypto_bench.copy';

-- One round of one job: runs `stmt` after `prepare` (not timed) and returns the milliseconds.
-- Large fields for compression (issue 17): documents whose `body` is an order history of about 4 KB and 64 KB of
-- JSON, encrypted whole under one key with and without compress => 'zstd'.
CREATE TABLE docs_4k AS
SELECT i, jsonb_build_object('id', i, 'body', (SELECT jsonb_agg(jsonb_build_object('sku', 'SKU-' || (i * 7 + j) % 997,
           'qty', 1 + j % 5, 'price', round(((i + j) % 1000) / 7.0, 2), 'status', (ARRAY['shipped','delivered','returned'])[1 + (i + j) % 3],
           'note', 'left at the front desk, signed by ' || (ARRAY['Alice','Bob','Carol','Dan'])[1 + j % 4]))
         FROM generate_series(1, 28) j)) AS d
FROM generate_series(1, 2000) i;
CREATE TABLE docs_64k AS
SELECT i, jsonb_build_object('id', i, 'body', (SELECT jsonb_agg(jsonb_build_object('sku', 'SKU-' || (i * 7 + j) % 997,
           'qty', 1 + j % 5, 'price', round(((i + j) % 1000) / 7.0, 2), 'status', (ARRAY['shipped','delivered','returned'])[1 + (i + j) % 3],
           'note', 'left at the front desk, signed by ' || (ARRAY['Alice','Bob','Carol','Dan'])[1 + j % 4]))
         FROM generate_series(1, 450) j)) AS d
FROM generate_series(1, 200) i;
CREATE TABLE enc_4k_none AS SELECT i, event_crypto.encrypt_fields(d, '{body}', 'bench-key') AS p FROM docs_4k;
CREATE TABLE enc_4k_zstd AS SELECT i, event_crypto.encrypt_fields(d, '{body}', 'bench-key', compress => 'zstd') AS p FROM docs_4k;
CREATE TABLE enc_64k_none AS SELECT i, event_crypto.encrypt_fields(d, '{body}', 'bench-key') AS p FROM docs_64k;
CREATE TABLE enc_64k_zstd AS SELECT i, event_crypto.encrypt_fields(d, '{body}', 'bench-key', compress => 'zstd') AS p FROM docs_64k;

CREATE FUNCTION bench_round(prepare text, stmt text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz;
BEGIN
  IF prepare <> '' THEN EXECUTE prepare; END IF;
  t0 := clock_timestamp();
  EXECUTE stmt;
  RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END $$;
VACUUM ANALYZE;
SELECT pg_size_pretty(avg(pg_column_size(payload))::bigint) AS avg_stored_payload, min(octet_length(payload::text)) AS min_text,
       max(octet_length(payload::text)) AS max_text FROM src;
