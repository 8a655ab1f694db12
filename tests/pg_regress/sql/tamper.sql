-- Tampering: every byte flipped, truncation, extension, header edits, moves between fields/rows/keys, contexts.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
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
-- format version changed
SELECT pg_temp.try(jsonb_set(p, '{email}', to_jsonb(replace(p->>'email', '$ec1$', '$ec2$'))), 'stream-1') AS version_2 FROM env;
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
ROLLBACK;
