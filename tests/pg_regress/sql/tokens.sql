-- Issue 17, tokenization: tokenize() (formats opaque, card, email; deterministic per key id), the token vault,
-- detokenize() (NULL once the key id is shredded, and for a text that is no token), collisions, the maintenance
-- action token_purge, forget_subject and export_subject, who may call what, and no value in any message.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
SELECT event_crypto.create_key('tk:a');
SELECT event_crypto.create_key('tk:b');
-- formats: shapes
SELECT event_crypto.tokenize('alice@example.com', 'tk:a') ~ '^tok_[A-Za-z0-9_-]{22}$' AS opaque,
       event_crypto.tokenize('alice@example.com', 'tk:a', 'email') ~ '^t[a-z2-7]{15}@example\.com$' AS email,
       event_crypto.tokenize('4111 1111 1111 1111', 'tk:a', 'card') ~ '^[0-9]{12}1111$' AS card;
-- card tokens: Luhn-valid, the last four kept, never the input (12 to 19 digits, single spaces or hyphens)
CREATE TEMP TABLE cards AS
    SELECT c, event_crypto.tokenize(c, 'tk:a', 'card') AS t
    FROM (SELECT lpad((4000000000000000 + i * 7919)::text, 16, '0') AS c FROM generate_series(1, 200) i) s;
SELECT count(*) AS cards,
       count(*) FILTER (WHERE (SELECT sum(CASE WHEN o % 2 = 1 THEN (d * 2) / 10 + (d * 2) % 10 ELSE d END) % 10 = 0
                               FROM (SELECT substr(reverse(t), o, 1)::int AS d, o - 1 AS o FROM generate_series(1, 16) o) x)) AS luhn_valid,
       count(*) FILTER (WHERE right(t, 4) = right(c, 4)) AS last_four_kept,
       count(*) FILTER (WHERE t = c) AS equal_to_input,
       count(DISTINCT t) AS distinct_tokens
FROM cards;
SELECT right(event_crypto.tokenize('4111-1111-1111-1111', 'tk:a', 'card'), 4) AS grouped,
       event_crypto.tokenize('4111-1111-1111-1111', 'tk:a', 'card') = event_crypto.tokenize('4111 1111 1111 1111', 'tk:a', 'card') AS same_digits_other_token,
       length(event_crypto.tokenize('123456789012', 'tk:a', 'card')) AS from_12_digits,
       length(event_crypto.tokenize('1234567890123456789', 'tk:a', 'card')) AS from_19_digits;
-- determinism: the same value, the same token (the vault row is reused); other key ids, other tokens
SELECT event_crypto.tokenize('v-1', 'tk:a') = event_crypto.tokenize('v-1', 'tk:a') AS same,
       event_crypto.tokenize('v-1', 'tk:a') <> event_crypto.tokenize('v-1', 'tk:b') AS other_key_id,
       event_crypto.tokenize('v-1', 'tk:a') <> event_crypto.tokenize('v-2', 'tk:a') AS other_value,
       event_crypto.tokenize('v-1', 'tk:a') <> event_crypto.tokenize('V-1', 'tk:a') AS case_counts;
SELECT count(*) AS vault_rows_of_v1 FROM event_crypto.token_vault v
JOIN event_crypto.keys k ON k.handle = v.key_handle AND k.version = 1
WHERE k.key_id = 'tk:a' AND v.token = event_crypto.tokenize('v-1', 'tk:a');
-- rotation keeps the tokens (the token key comes from the key id's blind-index root, which rotation carries over);
-- values recorded under the old version still read
SELECT event_crypto.tokenize('v-1', 'tk:a') AS t1 \gset
SELECT event_crypto.rotate_key('tk:a');
SELECT event_crypto.tokenize('v-1', 'tk:a') = :'t1' AS same_after_rotation, event_crypto.detokenize(:'t1') AS value;
-- a version that vault values use is in use: retiring it is refused
SELECT event_crypto.retire_key_version('tk:a', 1);                                       -- 55006
SELECT table_name, column_name, rows FROM event_crypto.key_version_usage('tk:a', 1);
-- round trips
SELECT event_crypto.detokenize(event_crypto.tokenize('alice@example.com', 'tk:a', 'email')) AS email,
       event_crypto.detokenize(event_crypto.tokenize('4111 1111 1111 1111', 'tk:a', 'card')) AS card,
       event_crypto.detokenize(event_crypto.tokenize('', 'tk:a')) = '' AS empty_value,
       event_crypto.detokenize(event_crypto.tokenize('é ☃ x', 'tk:a')) AS unicode;
-- NULL, empty, huge, bad format, bad card, bad e-mail
SELECT event_crypto.tokenize(NULL, 'tk:a') IS NULL AS null_value, event_crypto.detokenize(NULL) IS NULL AS null_token;
SELECT event_crypto.tokenize('x', NULL);                                                 -- 22004
SELECT event_crypto.tokenize('x', 'tk:a', NULL);                                         -- 22004
SELECT event_crypto.tokenize('x', 'tk:a', 'secret-format-4111');                         -- 22023
SELECT length(event_crypto.tokenize(repeat('y', 8192), 'tk:a')) AS largest;
SELECT event_crypto.tokenize(repeat('y', 8193), 'tk:a');                                 -- 54000
SELECT event_crypto.tokenize('4111 1111 1111 111x', 'tk:a', 'card');                     -- 22023
SELECT event_crypto.tokenize('4111', 'tk:a', 'card');                                    -- 22023
SELECT event_crypto.tokenize('', 'tk:a', 'card');                                        -- 22023
SELECT event_crypto.tokenize('41111111111111111111', 'tk:a', 'card');                   -- 22023
SELECT event_crypto.tokenize('alice.example.com', 'tk:a', 'email');                      -- 22023
SELECT event_crypto.tokenize('alice@', 'tk:a', 'email');                                 -- 22023
SELECT event_crypto.tokenize('x', 'tk:none');                                            -- 42704
-- a text that is no token
SELECT event_crypto.detokenize('tok_AAAAAAAAAAAAAAAAAAAAAA') IS NULL AS unknown, event_crypto.detokenize('') IS NULL AS empty,
       event_crypto.detokenize(repeat('x', 100000)) IS NULL AS huge;
-- the vault holds no value in clear and names no key id
SELECT count(*) FILTER (WHERE value LIKE '$ec2$%') = count(*) AS all_envelopes,
       count(*) FILTER (WHERE strpos(value, 'alice') > 0 OR strpos(value, 'tk:a') > 0) AS in_clear
FROM event_crypto.token_vault;
-- collisions: a token another value already holds (planted here by hand, as a superuser) is detected and the value
-- gets the next candidate, the same one every time
SELECT event_crypto.tokenize('collide-me', 'tk:b') AS planted \gset
DELETE FROM event_crypto.token_vault WHERE token = :'planted';
INSERT INTO event_crypto.token_vault (token, key_handle, key_version, format, value_digest, value)
SELECT :'planted', handle, 1, 'opaque', '\x00'::bytea || decode(repeat('00', 31), 'hex'), 'not a value' FROM event_crypto.keys WHERE key_id = 'tk:b' AND version = 1;
SELECT event_crypto.tokenize('collide-me', 'tk:b') AS resolved \gset
SELECT :'resolved' <> :'planted' AS other_token, :'resolved' ~ '^tok_[A-Za-z0-9_-]{22}$' AS opaque,
       event_crypto.tokenize('collide-me', 'tk:b') = :'resolved' AS stable, event_crypto.detokenize(:'resolved') AS value;
-- the same under another key id: the token is unique across the vault
UPDATE event_crypto.token_vault SET key_handle = (SELECT handle FROM event_crypto.keys WHERE key_id = 'tk:a' AND version = 1)
WHERE token = :'planted';
DELETE FROM event_crypto.token_vault WHERE token = :'resolved';
SELECT event_crypto.tokenize('collide-me', 'tk:b') = :'resolved' AS same_next_candidate;
DELETE FROM event_crypto.token_vault WHERE token = :'planted';

-- privileges: the encryptor tokenizes, the decryptor detokenizes; nobody else; no role writes or reads the vault
CREATE ROLE tk_nobody;
CREATE ROLE tk_admin IN ROLE event_crypto_admin;
CREATE ROLE tk_enc IN ROLE event_crypto_encryptor;
CREATE ROLE tk_dec IN ROLE event_crypto_decryptor;
SET ROLE tk_enc;
SELECT event_crypto.tokenize('v-1', 'tk:a') = :'t1' AS encryptor_tokenizes;
SELECT event_crypto.detokenize(:'t1');                                                   -- 42501
SELECT count(*) FROM event_crypto.token_vault;                                           -- 42501
RESET ROLE;
SET ROLE tk_dec;
SELECT event_crypto.detokenize(:'t1') AS decryptor_detokenizes;
SELECT event_crypto.tokenize('v-1', 'tk:a');                                             -- 42501
RESET ROLE;
SET ROLE tk_admin;
SELECT event_crypto.tokenize('v-1', 'tk:a');                                             -- 42501
SELECT event_crypto.detokenize(:'t1');                                                   -- 42501
DELETE FROM event_crypto.token_vault;                                                    -- 42501
RESET ROLE;
SET ROLE tk_nobody;
SELECT event_crypto.tokenize('v-1', 'tk:a');                                             -- 42501
RESET ROLE;
SELECT r.rolname, has_table_privilege(r.oid, 'event_crypto.token_vault', 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE') AS any_privilege
FROM pg_roles r WHERE r.rolname LIKE 'event_crypto\_%' ORDER BY 1;

-- shred: detokenize gives NULL at once; tokenize refuses as for a key id that never existed; the maintenance run
-- purges the vault rows and says how many
SELECT event_crypto.tokenize('b-1', 'tk:b') AS tb_tokenize, event_crypto.tokenize('b-2', 'tk:b') IS NOT NULL AS b2 \gset
SELECT count(*) AS rows_of_b FROM event_crypto.token_vault v JOIN event_crypto.keys k ON k.handle = v.key_handle AND k.version = 1 WHERE k.key_id = 'tk:b';
SELECT event_crypto.shred_key('tk:b');
SELECT event_crypto.detokenize(:'tb_tokenize') IS NULL AS after_shred, event_crypto.detokenize(:'resolved') IS NULL AS resolved_after_shred;
SELECT event_crypto.tokenize('b-1', 'tk:b');                                             -- 42704
SELECT detail FROM event_crypto.run_maintenance() WHERE action = 'token_purge';
SELECT count(*) AS rows_left FROM event_crypto.token_vault v
WHERE NOT EXISTS (SELECT FROM event_crypto.keys k WHERE k.handle = v.key_handle AND k.status <> 'shredded');
SELECT detail FROM event_crypto.run_maintenance() WHERE action = 'token_purge';
SELECT event_crypto.maintenance_action('token_purge') AS again;
SELECT event_crypto.detokenize(:'tb_tokenize') IS NULL AS after_purge, event_crypto.detokenize(:'t1') AS other_key_id_kept;
-- a version destroyed by a forced retirement: its vault rows read as NULL and are purged
SELECT event_crypto.retire_key_version('tk:a', 1, force => true)->'destroyed' AS destroyed;
SELECT event_crypto.detokenize(:'t1') IS NULL AS destroyed_version;
SELECT (event_crypto.maintenance_action('token_purge')->>'purged')::int > 0 AS purged;
-- (the token stays what it was: it depends on the key id's token key only)
SELECT event_crypto.tokenize('v-1', 'tk:a') = :'t1' AS same_token_under_v2, event_crypto.detokenize(event_crypto.tokenize('v-1', 'tk:a')) AS value;

-- forget_subject purges the subject's tokens at once; export_subject lists them with their values
CREATE TABLE tk_events (id serial PRIMARY KEY, subject text, payload jsonb);
SELECT count(*) FROM event_crypto.protect('tk_events', 'payload', fields => ARRAY['email'], key_column => 'subject', key_prefix => 'tks:');
INSERT INTO tk_events (subject, payload) VALUES ('carol', '{"email": "carol@x.io"}'), ('dave', '{"email": "dave@x.io"}');
SELECT event_crypto.tokenize('carol@x.io', 'tks:carol', 'email') AS carol_token \gset
SELECT event_crypto.tokenize('4111111111111111', 'tks:carol', 'card') AS carol_card \gset
SELECT event_crypto.tokenize('dave@x.io', 'tks:dave', 'email') AS dave_token \gset
SELECT t->>'key_id' AS key_id, t->>'format' AS format, t->>'value' AS value, t->>'token' = :'carol_token' AS is_token
FROM jsonb_array_elements(event_crypto.export_subject('carol', key_prefix => 'tks:')->'tokens') t ORDER BY 2;
SELECT details->'tokens' AS audited_token_count FROM event_crypto.audit_log WHERE action = 'export_subject' ORDER BY id DESC LIMIT 1;
SELECT r->'tokens_purged' AS tokens_purged, r->'versions_destroyed' AS versions_destroyed
FROM event_crypto.forget_subject('carol', key_prefix => 'tks:') r;
SELECT event_crypto.detokenize(:'carol_token') IS NULL AS carol_email, event_crypto.detokenize(:'carol_card') IS NULL AS carol_card,
       event_crypto.detokenize(:'dave_token') AS dave;
SELECT count(*) FROM event_crypto.token_vault WHERE token IN (:'carol_token', :'carol_card');
SELECT jsonb_array_length(event_crypto.export_subject('carol', key_prefix => 'tks:')->'tokens') AS carol_tokens_after;
SELECT event_crypto.forget_subject('carol', key_prefix => 'tks:')->'tokens_purged' AS again;

-- no message contains a value: a bad card number, a bad e-mail address and a bad format are not echoed
DO $$
DECLARE
    v text;
    m text; d text; h text;
    bad text[] := ARRAY['4111 1111 1111 111x', 'secret-mail-at-x.io', repeat('s', 9000)];
    fmt text[] := ARRAY['card', 'email', 'opaque'];
BEGIN
    FOR i IN 1 .. 3 LOOP
        BEGIN
            PERFORM event_crypto.tokenize(bad[i], 'tk:a', fmt[i]);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
            IF strpos(coalesce(m, '') || coalesce(d, '') || coalesce(h, ''), left(bad[i], 12)) > 0 THEN
                RAISE EXCEPTION 'message % contains the value', i;
            END IF;
        END;
    END LOOP;
    BEGIN
        PERFORM event_crypto.tokenize('x', 'tk:a', 'secret-format-value');
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
        IF strpos(coalesce(m, '') || coalesce(d, '') || coalesce(h, ''), 'secret-format') > 0 THEN
            RAISE EXCEPTION 'the format is echoed';
        END IF;
    END;
    RAISE NOTICE 'no message contains a value';
END
$$;
ROLLBACK;
