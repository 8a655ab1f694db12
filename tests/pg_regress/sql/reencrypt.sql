-- Re-encryption after a rotation, migrating plaintext of a column protected late, and retiring key versions.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
SELECT event_crypto.create_key('re:k');
SELECT event_crypto.create_key('re:other');
CREATE TEMP TABLE v1 AS
SELECT event_crypto.encrypt_fields('{"email": "a@x.io", "n": 1.50, "tags": ["x", {"y": true}], "keep": "plain"}',
                                   '{email,n,tags[1].y}', 're:k', 'stream-1') AS p;
-- nothing is stale while version 1 is active: the document comes back as it was
SELECT event_crypto.needs_reencryption(p) AS stale, event_crypto.reencrypt_fields(p, 'stream-1') = p AS unchanged FROM v1;
SELECT event_crypto.rotate_key('re:k');
SELECT event_crypto.needs_reencryption(p) AS stale, event_crypto.uses_key_version(p, 're:k', 1) AS uses_v1,
       event_crypto.uses_key_version(p, 're:k', 2) AS uses_v2 FROM v1;
CREATE TEMP TABLE v2 AS SELECT event_crypto.reencrypt_fields(p, 'stream-1') AS p FROM v1;
SELECT event_crypto.needs_reencryption(p) AS stale, event_crypto.uses_key_version(p, 're:k', 1) AS uses_v1,
       event_crypto.uses_key_version(p, 're:k', 2) AS uses_v2,
       p->>'keep' AS keep, (p->>'email') <> (SELECT p->>'email' FROM v1) AS new_envelope FROM v2;
-- the same plaintext, at the same place, bound to the same context
SELECT event_crypto.decrypt_fields(p, 'stream-1') FROM v2;
SELECT event_crypto.decrypt_fields(p, 'stream-1') = (SELECT event_crypto.decrypt_fields(p, 'stream-1') FROM v1) AS same FROM v2;
SELECT event_crypto.decrypt_fields(p, 'stream-2') FROM v2;                         -- XX001 other context
SELECT event_crypto.decrypt_fields(p) FROM v2;                                     -- 22000 no context
-- reencryption authenticates first: a wrong or missing context, a moved or tampered envelope fail
SELECT event_crypto.reencrypt_fields(p, 'stream-2') FROM v1;                       -- XX001
SELECT event_crypto.reencrypt_fields(p) FROM v1;                                   -- 22000
SELECT event_crypto.reencrypt_fields(jsonb_set(p, '{keep}', p->'email'), 'stream-1') FROM v1;  -- XX001 moved
SELECT event_crypto.reencrypt_fields(jsonb_set(p, '{email}', to_jsonb(overlay(p->>'email' placing
           CASE substr(p->>'email', length(p->>'email') - 5, 1) WHEN 'A' THEN 'B' ELSE 'A' END
           FROM length(p->>'email') - 5 FOR 1))), 'stream-1')
FROM v1;                                                                           -- XX001 tampered
SELECT event_crypto.reencrypt_fields('{"a": "$ec1$AAAA"}');                        -- 22P02 malformed
SELECT event_crypto.reencrypt_fields('{"a": "$ec2$AAAA"}');                        -- 22P02 malformed
SELECT event_crypto.reencrypt_fields('{"a": "$ec3$AAAA"}');                        -- 0A000 unknown format
-- plain documents, scalars, NULLs
SELECT event_crypto.reencrypt_fields('{"a": 1, "b": [true, null, "x"]}');
SELECT event_crypto.reencrypt_fields('"just text"'), event_crypto.reencrypt_fields('[]'), event_crypto.reencrypt_fields(NULL);
SELECT event_crypto.needs_reencryption(NULL), event_crypto.needs_reencryption('{}'),
       event_crypto.needs_reencryption('{"email": "plain"}', '{email}') AS plaintext_field,
       event_crypto.needs_reencryption('{"email": "plain"}', '{other}') AS absent_field;
SELECT event_crypto.needs_reencryption('{"email": "plain"}', '{"bad path["}');      -- 42601
SELECT event_crypto.uses_key_version(p, NULL, 1) FROM v1;                           -- 22004
SELECT event_crypto.uses_key_version(p, 're:k', NULL) FROM v1;                      -- 22004
SELECT event_crypto.uses_key_version(p, 're:k', 0), event_crypto.uses_key_version(NULL, 're:k', 1) FROM v1;
SELECT event_crypto.reencrypt_fields(p, '') FROM v1;                               -- 22023 empty context
-- a single value made by encrypt_value (a scalar document) is re-encrypted as well
CREATE TEMP TABLE solo AS SELECT to_jsonb(event_crypto.encrypt_value('"solo"', 're:other')) AS e;
SELECT event_crypto.rotate_key('re:other');
SELECT event_crypto.uses_key_version(m, 're:other', 2) AS moved, event_crypto.decrypt_value(m #>> '{}') AS plain
FROM (SELECT event_crypto.reencrypt_fields(e) AS m FROM solo) s;

-- retire_key_version: never the active version, never while a protected table still uses it
CREATE TABLE re_events (id serial PRIMARY KEY, subject text, stream text, payload jsonb, email_idx text);
-- rows written before the table was protected: plaintext
INSERT INTO re_events (subject, stream, payload)
SELECT 'u' || (i % 3), 'stream-' || i, jsonb_build_object('email', 'early' || i || '@x.io', 'n', i) FROM generate_series(1, 5) i;
SELECT count(*) FROM event_crypto.protect('re_events', 'payload', fields => ARRAY['email'], key_column => 'subject',
                                          context_column => 'stream');
SELECT count(*) FROM event_crypto.add_blind_index('re_events', 'payload', 'email', 'email_idx', 're:k');
INSERT INTO re_events (subject, stream, payload)
SELECT 'u' || (i % 3), 'stream-' || i, jsonb_build_object('email', 'late' || i || '@x.io', 'n', i) FROM generate_series(6, 10) i;
SELECT count(*) FILTER (WHERE payload->>'email' LIKE '$ec2$%') AS encrypted, count(*) AS total FROM re_events;
SELECT event_crypto.rotate_key('subject:u1');
SELECT event_crypto.retire_key_version('subject:u1', 2);                  -- 55006 the active version
SELECT event_crypto.retire_key_version('subject:u1', 1);                  -- 55006 rows still use it
\set VERBOSITY default
SELECT event_crypto.retire_key_version('subject:u1', 1);
\set VERBOSITY sqlstate
SELECT event_crypto.retire_key_version('subject:u1', 3);                  -- 42704 no such version
SELECT event_crypto.retire_key_version('nope', 1);                        -- 42704
SELECT event_crypto.retire_key_version('subject:u1', 0);                  -- 22023
SELECT event_crypto.retire_key_version(NULL, 1);                          -- 22004
SELECT event_crypto.retire_key_version('subject:u1', NULL);               -- 22004
SELECT event_crypto.retire_key_version('subject:u1', 1, NULL);            -- 22004
-- one pass in batches of 3 (in a transaction here; CALL reencrypt_table commits each batch)
SELECT * FROM event_crypto.reencrypt_batch('re_events', 'payload', 3);
SELECT table_name, column_name, batches, rows_scanned, rows_rewritten, finished_at IS NULL AS running
FROM event_crypto.reencrypt_progress;
SELECT * FROM event_crypto.reencrypt_batch('re_events', 'payload', 3);
SELECT * FROM event_crypto.reencrypt_batch('re_events', 'payload', 3);
SELECT * FROM event_crypto.reencrypt_batch('re_events', 'payload', 3);
SELECT * FROM event_crypto.reencrypt_batch('re_events', 'payload', 3);   -- rows rewritten on their own page come round again
SELECT * FROM event_crypto.reencrypt_batch('re_events', 'payload', 3);
SELECT * FROM event_crypto.reencrypt_batch('re_events', 'payload', 3);
SELECT finished_at IS NOT NULL AS finished FROM event_crypto.reencrypt_progress;
-- every row is encrypted now, under the newest version of its subject's key; early rows got blind index values
SELECT subject, count(*) AS rows, count(*) FILTER (WHERE payload->>'email' LIKE '$ec2$%') AS encrypted,
       bool_and(event_crypto.uses_key_version(payload, 'subject:' || subject, CASE subject WHEN 'u1' THEN 2 ELSE 1 END)) AS newest,
       count(email_idx) AS indexed
FROM re_events GROUP BY subject ORDER BY subject;
SELECT id, event_crypto.decrypt_fields(payload, stream)->>'email' AS email FROM re_events ORDER BY id;
SELECT count(*) FROM re_events WHERE email_idx = event_crypto.blind_index('early4@x.io', 're:k');
-- the next call starts a new pass, which finds nothing to do
SELECT * FROM event_crypto.reencrypt_batch('re_events', 'payload', 100);
SELECT * FROM event_crypto.reencrypt_batch('re_events', 'payload', 100);
-- now version 1 can go: it is disabled first (issue 12), and destroyed by the maintenance run once
-- event_crypto.retire_wait has passed; envelopes still under it elsewhere read as shredded
CREATE TEMP TABLE untracked AS SELECT event_crypto.encrypt_value('"kept"', 'subject:u0') AS e;
SELECT event_crypto.rotate_key('subject:u0');
SELECT event_crypto.retire_key_version('subject:u1', 1) - 'destroy_after' - 'columns_checked' AS receipt;
SELECT event_crypto.retire_key_version('subject:u1', 1) - 'destroy_after' AS again;
SELECT destroy_after BETWEEN now() + interval '7 days' - interval '1 minute' AND now() + interval '7 days' AS in_a_week
FROM event_crypto.key_info WHERE key_id = 'subject:u1' AND version = 1;
SELECT event_crypto.maintenance_action('retire') AS not_yet;
UPDATE event_crypto.keys SET destroy_after = now() - interval '1 second' WHERE key_id = 'subject:u1' AND version = 1;
SELECT event_crypto.maintenance_action('retire') AS destroyed;
SELECT event_crypto.retire_key_version('subject:u0', 1);                  -- 55006 re_events rows of u0 use it
SELECT event_crypto.retire_key_version('subject:u0', 1, force => true) AS receipt;
SELECT event_crypto.decrypt_value(e) AS shredded_reads_null, event_crypto.decrypt_value(e, on_shredded => 'keep') = to_jsonb(e) AS kept
FROM untracked;
SELECT event_crypto.decrypt_value(e, on_shredded => 'error') FROM untracked;          -- 55000
SELECT event_crypto.decrypt_fields(payload, stream)->>'email' AS email FROM re_events WHERE subject = 'u0' ORDER BY id;
SELECT key_id, version, status, has_key_material FROM event_crypto.key_info WHERE key_id IN ('subject:u0', 'subject:u1')
ORDER BY 1, 2;
-- the key id itself is live: new events and lookups work
INSERT INTO re_events (subject, stream, payload) VALUES ('u0', 'stream-x', '{"email": "new@x.io"}');
SELECT event_crypto.decrypt_fields(payload, stream)->>'email' FROM re_events WHERE stream = 'stream-x';
SELECT action, named_keys(key_ids, 'subject:u0', 'subject:u1') AS key_ids,
       named_key(details #>> '{destroyed,0,key_id}', 'subject:u1') AS destroyed_key,
       details - 'destroy_after' - 'columns_checked' #- '{destroyed,0,key_id}' AS details FROM event_crypto.audit_log
WHERE action IN ('retire_key_version', 'disable_key_version') ORDER BY id;
-- a non-superuser with the admin and encryptor roles and UPDATE on the table can run a pass; without UPDATE not
SELECT event_crypto.rotate_key('subject:u2');
CREATE ROLE re_operator;
GRANT event_crypto_admin, event_crypto_encryptor TO re_operator;
GRANT SELECT ON re_events TO re_operator;
SET ROLE re_operator;
SELECT * FROM event_crypto.reencrypt_batch('re_events', 'payload', 100);   -- 42501 no UPDATE on the table
RESET ROLE;
GRANT UPDATE ON re_events TO re_operator;
SET ROLE re_operator;
SELECT * FROM event_crypto.reencrypt_batch('re_events', 'payload', 100);
SELECT * FROM event_crypto.reencrypt_batch('re_events', 'payload', 100);
SELECT event_crypto.decrypt_fields(payload, stream) FROM re_events LIMIT 1;  -- 42501 re-encrypting needs no decryptor role
RESET ROLE;
SELECT count(*) FILTER (WHERE event_crypto.uses_key_version(payload, 'subject:u2', 2)) AS u2_newest FROM re_events;
-- a column that is not protected, bound to a context column: name it
CREATE TABLE re_manual (id serial PRIMARY KEY, stream text, p jsonb);
INSERT INTO re_manual (stream, p)
SELECT 's' || i, event_crypto.encrypt_fields(jsonb_build_object('email', i || '@x.io'), '{email}', 're:k', 's' || i)
FROM generate_series(1, 3) i;
SELECT event_crypto.rotate_key('re:k');
SELECT * FROM event_crypto.reencrypt_batch('re_manual', 'p');                            -- 22000 bound to a context
SELECT * FROM event_crypto.reencrypt_batch('re_manual', 'p', context_column => 'id');     -- XX001 the wrong one
SELECT * FROM event_crypto.reencrypt_batch('re_manual', 'p', context_column => 'nope');   -- 42703
SELECT * FROM event_crypto.reencrypt_batch('re_manual', 'p', context_column => 'stream');
SELECT count(*) FILTER (WHERE event_crypto.uses_key_version(p, 're:k', 3)) AS newest,
       count(*) FILTER (WHERE event_crypto.decrypt_fields(p, stream)->>'email' LIKE '%@x.io') AS readable FROM re_manual;
SELECT * FROM event_crypto.reencrypt_batch('re_events', 'payload', context_column => 'subject');  -- 22023 configured otherwise
-- bad arguments
SELECT * FROM event_crypto.reencrypt_batch('re_events', 'nope');          -- 42703
SELECT * FROM event_crypto.reencrypt_batch('re_events', 'subject');       -- 42804 not jsonb
SELECT * FROM event_crypto.reencrypt_batch('re_events', 'payload', 0);    -- 22023
SELECT * FROM event_crypto.reencrypt_batch(NULL, 'payload');              -- 22004
SELECT * FROM event_crypto.reencrypt_batch('no_such_table', 'payload');   -- 42P01
CALL event_crypto.reencrypt_table('re_events', 'payload');                -- 2D000 cannot commit inside a transaction block
ROLLBACK;

-- The procedure commits batch after batch (outside a transaction block).
CREATE TABLE re_proc (id serial PRIMARY KEY, payload jsonb);
SELECT event_crypto.create_key('re:proc');
INSERT INTO re_proc (payload)
SELECT event_crypto.encrypt_fields(jsonb_build_object('email', 'p' || i || '@x.io'), '{email}', 're:proc') FROM generate_series(1, 25) i;
SELECT event_crypto.rotate_key('re:proc');
CALL event_crypto.reencrypt_table('re_proc', 'payload', 10);
SELECT batches, rows_scanned, rows_rewritten, finished_at IS NOT NULL AS finished FROM event_crypto.reencrypt_progress
WHERE table_name = 're_proc'::regclass;
SELECT count(*) FILTER (WHERE event_crypto.uses_key_version(payload, 're:proc', 2)) AS newest, count(*) FROM re_proc;
SELECT event_crypto.retire_key_version('re:proc', 1) - 'destroy_after' - 'columns_checked' AS receipt;
SELECT count(*) FROM re_proc WHERE (event_crypto.decrypt_fields(payload)->>'email') LIKE 'p%@x.io';
DROP TABLE re_proc;
SELECT event_crypto.shred_key('re:proc');

-- Envelope formats (issue 15): rows written in format 1 (event_crypto.envelope_format = 1, or by 0.2.0) move to
-- format 2 under the same key version; key_version_usage, uses_key_version and retire_key_version count both
-- formats (format 1 envelopes by key id, format 2 by handle); with the setting at 1, re-encryption moves rows back.
BEGIN;
-- one whole pass of reencrypt_batch (CALL reencrypt_table commits, which a transaction block cannot)
CREATE FUNCTION pg_temp.pass(t regclass) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    b record;
    n bigint := 0;
BEGIN
    LOOP
        SELECT * INTO b FROM event_crypto.reencrypt_batch(t, 'payload', 100);
        n := b.rows_rewritten;   -- the pass's count so far
        EXIT WHEN b.finished;
    END LOOP;
    RETURN n;
END $$;
CREATE TABLE re_fmt (id serial PRIMARY KEY, subject text, payload jsonb, note text);
SELECT count(*) FROM event_crypto.protect('re_fmt', 'payload', fields => ARRAY['email', 'card'], key_column => 'subject');
SET event_crypto.envelope_format = 1;
INSERT INTO re_fmt (subject, payload) SELECT 'f' || (i % 2), jsonb_build_object('email', 'v1-' || i || '@x.io', 'card', '4111') FROM generate_series(1, 4) i;
RESET event_crypto.envelope_format;
INSERT INTO re_fmt (subject, payload) SELECT 'f' || (i % 2), jsonb_build_object('email', 'v2-' || i || '@x.io', 'card', '4111') FROM generate_series(5, 6) i;
-- envelopes of f1 pasted into free text: one of format 1 (row 1's), one of format 2 (row 5's)
UPDATE re_fmt SET note = 'see ' || (SELECT payload->>'card' FROM re_fmt WHERE id = 1) WHERE id = 4;
UPDATE re_fmt SET note = 'see ' || (SELECT payload->>'card' FROM re_fmt WHERE id = 5) WHERE id = 2;
SELECT id, subject, left(payload->>'email', 5) AS email_format, left(payload->>'card', 5) AS card_format,
       event_crypto.uses_key_version(payload, 'subject:' || subject, 1) AS uses_v1,
       event_crypto.needs_reencryption(payload) AS needs
FROM re_fmt ORDER BY id;
-- a format 1 envelope names the key id; a format 2 one only the handle, which says nothing of the subject
CREATE FUNCTION pg_temp.unb64(s text) RETURNS bytea LANGUAGE sql AS $$
    SELECT decode(translate(s, '-_', '+/') || repeat('=', (4 - length(s) % 4) % 4), 'base64') $$;
SELECT left(payload->>'email', 5) AS format,
       bool_or(position(convert_to('subject:' || subject, 'UTF8') IN pg_temp.unb64(substr(payload->>'email', 6))) > 0) AS names_key_id,
       min(length(payload->>'email')) AS envelope_length
FROM re_fmt GROUP BY 1 ORDER BY 1;
SELECT table_name, column_name, rows, unreadable FROM event_crypto.key_version_usage('subject:f1', 1)
WHERE table_name = 'public.re_fmt' ORDER BY 1, 2;
SELECT event_crypto.retire_key_version('subject:f1', 1);                  -- 55006 the active version
SELECT event_crypto.rotate_key('subject:f1');
SELECT event_crypto.retire_key_version('subject:f1', 1);                  -- 55006 rows use it, in both formats
-- re-encryption: every row moves (f0's format 1 rows under the same version, f1's rows to version 2); the texts
-- get shorter, and they read the same
SELECT sum(length(payload::text)) AS bytes_before FROM re_fmt \gset
SELECT pg_temp.pass('re_fmt') AS rewritten;
SELECT id, subject, left(payload->>'email', 5) AS email_format, left(payload->>'card', 5) AS card_format,
       event_crypto.uses_key_version(payload, 'subject:' || subject, CASE subject WHEN 'f1' THEN 2 ELSE 1 END) AS newest,
       event_crypto.needs_reencryption(payload) AS needs, event_crypto.decrypt_fields(payload)->>'email' AS email
FROM re_fmt ORDER BY id;
SELECT sum(length(payload::text)) < :bytes_before AS shorter FROM re_fmt;
-- the free text still holds version 1 envelopes of f1 (in both formats): counted, and the version stays
SELECT table_name, column_name, rows, unreadable FROM event_crypto.key_version_usage('subject:f1', 1)
WHERE table_name = 'public.re_fmt' ORDER BY 1, 2;
SELECT event_crypto.retire_key_version('subject:f1', 1);                  -- 55006
UPDATE re_fmt SET note = NULL;
-- with event_crypto.envelope_format = 1, format 2 rows need re-encryption, and a pass moves them back
SET event_crypto.envelope_format = 1;
SELECT count(*) FILTER (WHERE event_crypto.needs_reencryption(payload)) AS needs FROM re_fmt;
SELECT pg_temp.pass('re_fmt') AS rewritten;
SELECT count(*) FILTER (WHERE payload->>'email' LIKE '$ec1$%' AND payload->>'card' LIKE '$ec1$%') AS format_1,
       count(*) FILTER (WHERE event_crypto.decrypt_fields(payload)->>'email' LIKE 'v_-%@x.io') AS readable FROM re_fmt;
SELECT event_crypto.reencrypt_fields(event_crypto.encrypt_fields('{"a":"x"}', '{a}', 'subject:f0'))->>'a' LIKE '$ec1$%' AS stays_1;
RESET event_crypto.envelope_format;
SELECT event_crypto.reencrypt_fields(event_crypto.encrypt_fields('{"a":"x"}', '{a}', 'subject:f0'))->>'a' LIKE '$ec2$%' AS written_2;
SELECT pg_temp.pass('re_fmt') AS rewritten;
SELECT count(*) FILTER (WHERE payload->>'email' LIKE '$ec2$%' AND payload->>'card' LIKE '$ec2$%') AS format_2 FROM re_fmt;
SELECT event_crypto.retire_key_version('subject:f1', 1) - 'destroy_after' - 'columns_checked' AS receipt;
SET event_crypto.envelope_format = 3;                                     -- 22023 1 or 2
SET event_crypto.envelope_format = 0;                                     -- 22023
ROLLBACK;
