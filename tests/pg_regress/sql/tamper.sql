-- Tampering: every byte flipped, truncation, extension, header edits, moves between fields/rows/keys, contexts;
-- envelopes of format 1 (read forever, written when event_crypto.envelope_format = 1), then of format 2.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
SET event_crypto.envelope_format = 1;
SELECT event_crypto.create_key('t1');
SELECT event_crypto.create_key('t2');
CREATE FUNCTION pg_temp.try(p jsonb, ctx text DEFAULT NULL) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    -- 'unchanged': the value no longer claims to be an envelope and passes through as the text it is
    RETURN CASE WHEN event_crypto.decrypt_fields(p, ctx, 'error') = p THEN 'unchanged' ELSE 'decrypted' END;
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END $$;
CREATE TEMP TABLE env AS
SELECT event_crypto.encrypt_fields('{"email":"secret@example.com","phone":"555-0100"}', '{email,phone}', 't1', 'stream-1') AS p;

-- the untouched document decrypts
SELECT pg_temp.try(p, 'stream-1') FROM env;

-- every character of the email envelope replaced: never decrypts, never an internal error. A change inside the
-- "$ec1$" prefix makes the string stop claiming to be an envelope: it then passes through as the (ciphertext) text
-- it is, never as plaintext.
WITH e AS (SELECT jsonb_build_object('email', p->'email') AS p, p->>'email' AS s FROM env),
tampered AS (
  SELECT i, pg_temp.try(jsonb_set(p, '{email}', to_jsonb(overlay(s PLACING CASE WHEN substr(s, i, 1) = 'A' THEN 'B' ELSE 'A' END FROM i FOR 1))), 'stream-1') AS state
  FROM e, generate_series(1, length(s)) AS i)
SELECT i <= 5 AS in_prefix, count(*) > 5 AS many, count(*) FILTER (WHERE state = 'decrypted') AS decrypted,
       count(*) FILTER (WHERE state = 'unchanged') AS unchanged,
       count(*) FILTER (WHERE state NOT IN ('XX001', '22P02', '22000', '0A000', '42704', 'unchanged')) AS unexpected
FROM tampered GROUP BY 1 ORDER BY 1;
-- the prefix variants that still claim to be an envelope fail closed
SELECT pg_temp.try(jsonb_set(p, '{email}', to_jsonb(replace(p->>'email', '$ec1$', v))), 'stream-1') AS state, v
FROM env, unnest(ARRAY['$ec01$', '$ec9$', '$ec1$$']) AS v;

-- truncated and extended
SELECT pg_temp.try(jsonb_set(p, '{email}', to_jsonb(left(p->>'email', 20))), 'stream-1') AS truncated_header,
       -- dropping the last character: malformed (non-canonical final bits) or unauthenticated, by the random tail
       pg_temp.try(jsonb_set(p, '{email}', to_jsonb(left(p->>'email', -1))), 'stream-1') IN ('22P02', 'XX001') AS truncated_by_one_fails,
       pg_temp.try(jsonb_set(p, '{email}', to_jsonb(left(p->>'email', -4))), 'stream-1') AS truncated_tag,
       pg_temp.try(jsonb_set(p, '{email}', to_jsonb((p->>'email') || 'AAAA')), 'stream-1') AS extended
FROM env;
-- format version changed: an unknown one, and format 2 (whose header the body is not)
SELECT pg_temp.try(jsonb_set(p, '{email}', to_jsonb(replace(p->>'email', '$ec1$', '$ec3$'))), 'stream-1') AS version_3,
       pg_temp.try(jsonb_set(p, '{email}', to_jsonb(replace(p->>'email', '$ec1$', '$ec2$'))), 'stream-1') AS as_version_2
FROM env;
-- moved to another field, swapped between fields
SELECT pg_temp.try(jsonb_build_object('mail', p->'email', 'phone', p->'phone'), 'stream-1') AS renamed,
       pg_temp.try(jsonb_build_object('email', p->'phone', 'phone', p->'email'), 'stream-1') AS swapped,
       pg_temp.try(jsonb_build_object('wrapper', jsonb_build_object('email', p->'email')), 'stream-1') AS nested
FROM env;
-- wrong context, missing context, context where none was bound
SELECT pg_temp.try(p, 'stream-2') AS wrong_context, pg_temp.try(p, NULL) AS no_context FROM env;
SELECT pg_temp.try(event_crypto.encrypt_fields('{"email":"x"}', '{email}', 't1'), 'stream-1') AS unexpected_context;
-- the key id in the header edited to another existing key: the header is authenticated
SELECT pg_temp.try(jsonb_build_object('email', '$ec1$' || translate(encode(
          overlay(decode(translate(substr(p->>'email', 6), '-_', '+/') || repeat('=', (4 - length(substr(p->>'email', 6)) % 4) % 4), 'base64')
                  PLACING convert_to('t2', 'UTF8') FROM 4 FOR 2), 'base64'), '+/=' || chr(10), '-_')), 'stream-1') AS key_id_edited
FROM env;
-- the key version in the header edited (1 -> 2, both existing versions of t1): the header is authenticated
SELECT event_crypto.rotate_key('t1');
SELECT pg_temp.try(jsonb_build_object('email', '$ec1$' || translate(encode(
          set_byte(decode(translate(substr(p->>'email', 6), '-_', '+/') || repeat('=', (4 - length(substr(p->>'email', 6)) % 4) % 4), 'base64'),
                   3 + 2 + 3, 2), 'base64'), '+/=' || chr(10), '-_')), 'stream-1') AS version_edited
FROM env;
-- an envelope copied from another row with another context
SELECT pg_temp.try(jsonb_build_object('email', (event_crypto.encrypt_fields('{"email":"other"}', '{email}', 't1', 'stream-9'))->'email'), 'stream-1') AS other_row;
-- messages name the key and path, never the plaintext
\set VERBOSITY default
SELECT event_crypto.decrypt_fields(jsonb_build_object('email', p->'phone', 'phone', p->'email'), 'stream-1') FROM env;
SELECT event_crypto.decrypt_fields(p, 'stream-1', 'error') FROM env WHERE false;
\set VERBOSITY sqlstate

-- Format 2 (the default): the same attacks, and the fields of its header, byte by byte: algorithm and flags
-- (byte 0), the key's handle (bytes 1-8), the key version in LEB128 (byte 9 here).
RESET event_crypto.envelope_format;
CREATE FUNCTION pg_temp.unb64(s text) RETURNS bytea LANGUAGE sql AS $$
    SELECT decode(translate(s, '-_', '+/') || repeat('=', (4 - length(s) % 4) % 4), 'base64') $$;
CREATE FUNCTION pg_temp.b64(b bytea) RETURNS text LANGUAGE sql AS $$
    SELECT translate(encode(b, 'base64'), '+/=' || chr(10), '-_') $$;
-- the document with bytes [at, at + n) of the email envelope's blob replaced by r
CREATE FUNCTION pg_temp.with_bytes(p jsonb, at int, n int, r bytea) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_set(p, '{email}', to_jsonb('$ec2$' || pg_temp.b64(overlay(pg_temp.unb64(substr(p->>'email', 6)) PLACING r FROM at + 1 FOR n)))) $$;
CREATE TEMP TABLE env2 AS
SELECT event_crypto.encrypt_fields('{"email":"secret@example.com","phone":"555-0100"}', '{email,phone}', 't1', 'stream-1') AS p;
-- t1's version 2 (rotated above), its handle in bytes 1-8; 10 bytes of header, 12 of nonce, 20 of ciphertext, 16 of tag
SELECT p->>'email' LIKE '$ec2$%' AS format_2, octet_length(pg_temp.unb64(substr(p->>'email', 6))) AS blob_bytes,
       substr(pg_temp.unb64(substr(p->>'email', 6)), 2, 8) = int8send(handle) AS names_t1_by_handle,
       get_byte(pg_temp.unb64(substr(p->>'email', 6)), 9) AS version,
       pg_temp.try(p, 'stream-1') AS untouched
FROM env2, event_crypto.keys WHERE key_id = 't1' AND version = 1;
-- every character of the envelope text replaced (as above)
WITH e AS (SELECT jsonb_build_object('email', p->'email') AS p, p->>'email' AS s FROM env2),
tampered AS (
  SELECT i, pg_temp.try(jsonb_set(p, '{email}', to_jsonb(overlay(s PLACING CASE WHEN substr(s, i, 1) = 'A' THEN 'B' ELSE 'A' END FROM i FOR 1))), 'stream-1') AS state
  FROM e, generate_series(1, length(s)) AS i)
SELECT i <= 5 AS in_prefix, count(*) > 5 AS many, count(*) FILTER (WHERE state = 'decrypted') AS decrypted,
       count(*) FILTER (WHERE state = 'unchanged') AS unchanged,
       count(*) FILTER (WHERE state NOT IN ('XX001', '22P02', '22000', '0A000', '42704', 'unchanged')) AS unexpected
FROM tampered GROUP BY 1 ORDER BY 1;
-- every byte of the blob set to every other value (14,790 envelopes): nothing decrypts. Byte 0: another algorithm
-- does not authenticate (XX001), the context flag cleared is a context mismatch (22000), any other code or flag bit
-- is malformed (22P02); the handle: no key has the new one (42704); the version byte: 0 is malformed, version 1
-- exists and does not authenticate, 3 to 127 do not exist; with its continuation bit set the version takes in the
-- next byte (the nonce's, random: unknown, or not minimal); nonce, ciphertext and tag: XX001.
WITH blob AS (SELECT p, pg_temp.unb64(substr(p->>'email', 6)) AS b FROM env2),
tampered AS (
  SELECT CASE WHEN i = 0 THEN '00 algorithm, flags' WHEN i <= 8 THEN '01-08 handle' WHEN i = 9 AND v < 128 THEN '09 version'
              WHEN i = 9 THEN '09 version, continued' WHEN i <= 21 THEN '10-21 nonce' WHEN i <= 41 THEN '22-41 ciphertext'
              ELSE '42-57 tag' END AS bytes,
         pg_temp.try(pg_temp.with_bytes(p, i, 1, set_byte('\x00'::bytea, 0, v)), 'stream-1') AS state
  FROM blob, generate_series(0, octet_length(b) - 1) AS i, generate_series(0, 255) AS v
  WHERE v <> get_byte(b, i)),
states AS (SELECT bytes, state, count(*) AS n FROM tampered GROUP BY 1, 2)
SELECT bytes, sum(n) AS tries, coalesce(sum(n) FILTER (WHERE state = 'decrypted'), 0) AS decrypted,
       coalesce(sum(n) FILTER (WHERE state NOT IN ('XX001', '22P02', '22000', '42704')), 0) AS unexpected,
       CASE WHEN bytes = '09 version, continued' THEN '(random)' ELSE string_agg(state || ' ' || n, ', ' ORDER BY state) END AS states
FROM states GROUP BY bytes ORDER BY bytes;
-- the handle replaced by another key's (t2's, which has no version 2; and with the version 1 it has: the header is
-- authenticated, t2's key does not open it); by a handle no key has; by 0
SELECT pg_temp.try(pg_temp.with_bytes(p, 1, 8, int8send(handle)), 'stream-1') AS handle_of_t2,
       pg_temp.try(pg_temp.with_bytes(p, 1, 9, int8send(handle) || '\x01'::bytea), 'stream-1') AS handle_of_t2_v1,
       pg_temp.try(pg_temp.with_bytes(p, 1, 8, '\x0000000000000001'), 'stream-1') AS unknown_handle,
       pg_temp.try(pg_temp.with_bytes(p, 1, 8, '\x0000000000000000'), 'stream-1') AS handle_0
FROM env2, event_crypto.keys WHERE key_id = 't2';
-- the version: edited (2 -> 1, both existing versions of t1), the same version 2 in a longer (not minimal) LEB128,
-- 2^31 (above the highest version)
SELECT pg_temp.try(pg_temp.with_bytes(p, 9, 1, '\x01'), 'stream-1') AS version_edited,
       pg_temp.try(pg_temp.with_bytes(p, 9, 1, '\x8200'), 'stream-1') AS not_minimal,
       pg_temp.try(pg_temp.with_bytes(p, 9, 1, '\x8080808008'), 'stream-1') AS out_of_range
FROM env2;
-- byte 0: the context flag cleared, the compressed flag (bit 1) set (authenticated: XX001), a reserved flag bit set,
-- the other algorithm, an unknown algorithm
SELECT pg_temp.try(pg_temp.with_bytes(p, 0, 1, '\x10'), 'stream-1') AS no_context_flag,
       pg_temp.try(pg_temp.with_bytes(p, 0, 1, '\x13'), 'stream-1') AS flag_bit_1,
       pg_temp.try(pg_temp.with_bytes(p, 0, 1, '\x19'), 'stream-1') AS flag_bit_3,
       pg_temp.try(pg_temp.with_bytes(p, 0, 1, '\x21'), 'stream-1') AS chacha,
       pg_temp.try(pg_temp.with_bytes(p, 0, 1, '\x31'), 'stream-1') AS algorithm_3
FROM env2;
-- prefixes: an unknown format, format 1's (whose header the body is not), variants that still claim an envelope
SELECT pg_temp.try(jsonb_set(p, '{email}', to_jsonb(replace(p->>'email', '$ec2$', v))), 'stream-1') AS state, v
FROM env2, unnest(ARRAY['$ec3$', '$ec1$', '$ec02$', '$ec9$', '$ec2$$']) AS v;
-- truncated and extended (the blob is not a multiple of 3 bytes: a cut or an extension of the text either leaves
-- non-canonical base64 bits or decodes, and then does not authenticate)
SELECT pg_temp.try(jsonb_set(p, '{email}', to_jsonb(left(p->>'email', 17))), 'stream-1') AS truncated_header,
       pg_temp.try(jsonb_set(p, '{email}', to_jsonb(left(p->>'email', -1))), 'stream-1') IN ('22P02', 'XX001') AS truncated_by_one_fails,
       pg_temp.try(jsonb_set(p, '{email}', to_jsonb(left(p->>'email', -4))), 'stream-1') IN ('22P02', 'XX001') AS truncated_tag_fails,
       pg_temp.try(jsonb_set(p, '{email}', to_jsonb((p->>'email') || 'AAAA')), 'stream-1') IN ('22P02', 'XX001') AS extended_fails,
       pg_temp.try(pg_temp.with_bytes(p, 58, 0, '\x000000'), 'stream-1') AS three_bytes_more
FROM env2;
-- moved to another field, swapped, nested; wrong and missing context; from another row
SELECT pg_temp.try(jsonb_build_object('mail', p->'email', 'phone', p->'phone'), 'stream-1') AS renamed,
       pg_temp.try(jsonb_build_object('email', p->'phone', 'phone', p->'email'), 'stream-1') AS swapped,
       pg_temp.try(jsonb_build_object('wrapper', jsonb_build_object('email', p->'email')), 'stream-1') AS nested,
       pg_temp.try(p, 'stream-2') AS wrong_context, pg_temp.try(p, NULL) AS no_context,
       pg_temp.try(jsonb_build_object('email', (event_crypto.encrypt_fields('{"email":"other"}', '{email}', 't1', 'stream-9'))->'email'), 'stream-1') AS other_row
FROM env2;
-- messages name the key id (the handle's, looked up), version and path, never the plaintext
\set VERBOSITY default
SELECT event_crypto.decrypt_fields(jsonb_build_object('email', p->'phone', 'phone', p->'email'), 'stream-1') FROM env2;
SELECT event_crypto.decrypt_fields(pg_temp.with_bytes(p, 1, 8, '\x0000000000000001'), 'stream-1') FROM env2;
SELECT event_crypto.decrypt_fields(pg_temp.with_bytes(p, 9, 1, '\x8200'), 'stream-1') FROM env2;
ROLLBACK;
