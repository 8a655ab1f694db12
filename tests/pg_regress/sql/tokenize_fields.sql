-- Issue 17, protect(..., tokenize_fields): string values at the given paths are replaced by their tokens under the
-- row's key (the subject's key, or the fixed key id), so they stay usable as identifiers in plain SQL (joins,
-- group-bys); the values are in the token vault, which forget_subject purges. Bad configurations, non-string
-- values, an inserter without any event_crypto role, and no value in any message.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
CREATE TABLE tf_events (id serial PRIMARY KEY, subject text, payload jsonb);
SELECT fields, tokenize_fields
FROM event_crypto.protect('tf_events', 'payload', fields => ARRAY['address'], key_column => 'subject', key_prefix => 'tfs:',
                          tokenize_fields => ARRAY['email:email', 'customer_id', 'card:card', 'tags[*]', 'ref:opaque']);
INSERT INTO tf_events (subject, payload) VALUES
    ('alice', '{"email": "alice@example.com", "customer_id": "C-1", "card": "4111 1111 1111 1111", "address": "1 Main St", "n": 1, "tags": ["vip", "new"]}'),
    ('alice', '{"email": "alice@example.com", "customer_id": "C-1", "n": 2, "ref": null}'),
    ('bob', '{"email": "alice@example.com", "customer_id": "C-1", "n": 3}'),
    ('bob', '{"email": "bob@example.org", "customer_id": "C-2", "n": 4, "other": "C-2"}');
-- the shapes of the tokens; the encrypted field is an envelope; other values are kept
SELECT id, payload->>'email' ~ '^t[a-z2-7]{15}@example\.(com|org)$' AS email_token,
       payload->>'customer_id' ~ '^tok_[A-Za-z0-9_-]{22}$' AS opaque_token,
       payload->>'card' ~ '^[0-9]{12}1111$' AS card_token, payload->>'address' LIKE '$ec2$%' AS address_encrypted,
       payload->'tags'->>0 ~ '^tok_' AND payload->'tags'->>1 ~ '^tok_' AS tags_tokens,
       payload->'n' AS n, payload->'ref' AS ref, payload->>'other' AS other
FROM tf_events ORDER BY id;
-- deterministic within a subject, different across subjects; the token tokenize() gives under the subject's key id
SELECT (SELECT payload->>'email' FROM tf_events WHERE id = 1) = (SELECT payload->>'email' FROM tf_events WHERE id = 2) AS same_subject_same_token,
       (SELECT payload->>'email' FROM tf_events WHERE id = 1) <> (SELECT payload->>'email' FROM tf_events WHERE id = 3) AS other_subject_other_token,
       (SELECT payload->>'email' FROM tf_events WHERE id = 1) = event_crypto.tokenize('alice@example.com', 'tfs:alice', 'email') AS as_tokenize,
       (SELECT payload->>'customer_id' FROM tf_events WHERE id = 4) = event_crypto.tokenize('C-2', 'tfs:bob') AS as_tokenize_opaque;
-- plain SQL on the tokens: GROUP BY and a self-join
SELECT subject, count(*) AS events, count(DISTINCT payload->>'email') AS emails
FROM tf_events GROUP BY subject, payload->>'customer_id' ORDER BY subject, events;
SELECT a.id, b.id FROM tf_events a JOIN tf_events b ON a.payload->>'customer_id' = b.payload->>'customer_id' AND a.id < b.id ORDER BY 1, 2;
-- detokenize() gives the values back (the decryptor role: the superuser here)
SELECT id, event_crypto.detokenize(payload->>'email') AS email, event_crypto.detokenize(payload->>'customer_id') AS customer_id,
       event_crypto.detokenize(payload->>'card') AS card, event_crypto.detokenize(payload->'tags'->>1) AS tag1
FROM tf_events ORDER BY id;
-- the decrypted view decrypts the encrypted fields and shows the tokens as stored (detokenize() is explicit)
SELECT v.id, v.payload->>'address' AS address, v.payload->>'email' = t.payload->>'email' AS token_as_stored
FROM tf_events_decrypted v JOIN tf_events t USING (id) ORDER BY v.id;
-- a value that already is a token of the row's key is kept (replays, restores, updates)
INSERT INTO tf_events (subject, payload) SELECT subject, payload FROM tf_events WHERE id = 1
RETURNING id, payload->>'email' = (SELECT payload->>'email' FROM tf_events WHERE id = 1) AS email_kept,
          payload->'tags' = (SELECT payload->'tags' FROM tf_events WHERE id = 1) AS tags_kept;
UPDATE tf_events SET payload = payload || '{"n": 20}' WHERE id = 2
RETURNING payload->>'customer_id' = (SELECT payload->>'customer_id' FROM tf_events WHERE id = 1) AS kept, payload->'n' AS n;
-- a token of another subject is not one of this row's key: it is tokenized again (detokenize gives that token)
INSERT INTO tf_events (subject, payload)
SELECT 'bob', jsonb_build_object('customer_id', payload->>'customer_id') FROM tf_events WHERE id = 1
RETURNING payload->>'customer_id' <> (SELECT payload->>'customer_id' FROM tf_events WHERE id = 1) AS retokenized,
          event_crypto.detokenize(payload->>'customer_id') = (SELECT payload->>'customer_id' FROM tf_events WHERE id = 1) AS stands_for_that_token;
-- values that cannot be tokenized refuse the row: non-strings (23514, the path named), bad cards and e-mails (22023)
INSERT INTO tf_events (subject, payload) VALUES ('alice', '{"customer_id": 42}');                      -- 23514
INSERT INTO tf_events (subject, payload) VALUES ('alice', '{"customer_id": {"id": "C-1"}}');           -- 23514
INSERT INTO tf_events (subject, payload) VALUES ('alice', '{"tags": ["ok", true]}');                   -- 23514
INSERT INTO tf_events (subject, payload) VALUES ('alice', '{"tags": {"a": "b"}}');                     -- 23514
INSERT INTO tf_events (subject, payload) VALUES ('alice', '{"card": "4111"}');                         -- 22023
INSERT INTO tf_events (subject, payload) VALUES ('alice', '{"email": "no-at-sign"}');                  -- 22023
INSERT INTO tf_events (subject, payload) VALUES (NULL, '{"customer_id": "C-1"}');                      -- 22004
\set VERBOSITY default
INSERT INTO tf_events (subject, payload) VALUES ('alice', '{"tags": ["ok", 7]}');
INSERT INTO tf_events (subject, payload) VALUES ('alice', '{"card": "4111 1111 1111 111x"}');
\set VERBOSITY sqlstate
DO $$
DECLARE
    m text; d text; h text;
    bad jsonb[] := ARRAY['{"card": "secret-card-1111"}', '{"email": "secret-mail-at-x.io"}', '{"customer_id": 31337424242}',
                         jsonb_build_object('ref', repeat('secret-long', 1000))];
BEGIN
    FOR i IN 1 .. 4 LOOP
        BEGIN
            INSERT INTO tf_events (subject, payload) VALUES ('alice', bad[i]);
            RAISE EXCEPTION 'row % was accepted', i;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
            IF strpos(coalesce(m, '') || coalesce(d, '') || coalesce(h, ''), 'secret') > 0
               OR strpos(coalesce(m, '') || coalesce(d, '') || coalesce(h, ''), '31337') > 0 THEN
                RAISE EXCEPTION 'message % contains the value', i;
            END IF;
        END;
    END LOOP;
    RAISE NOTICE 'no message contains a value';
END
$$;

-- bad configurations
SELECT event_crypto.protect('tf_events', 'payload', fields => ARRAY['address'], key_column => 'subject', key_prefix => 'tfs:',
                            tokenize_fields => ARRAY['address']);                                     -- 22023
SELECT event_crypto.protect('tf_events', 'payload', fields => ARRAY['address'], key_column => 'subject', key_prefix => 'tfs:',
                            tokenize_fields => ARRAY['address.street']);                              -- 22023
SELECT event_crypto.protect('tf_events', 'payload', fields => ARRAY['items[*].card'], key_column => 'subject', key_prefix => 'tfs:',
                            tokenize_fields => ARRAY['items[0]:card']);                               -- 22023
SELECT event_crypto.protect('tf_events', 'payload', fields => ARRAY['address'], key_column => 'subject', key_prefix => 'tfs:',
                            tokenize_fields => ARRAY['a', 'a.b']);                                    -- 22023
SELECT event_crypto.protect('tf_events', 'payload', fields => ARRAY['address'], key_column => 'subject', key_prefix => 'tfs:',
                            tokenize_fields => ARRAY['a:email', 'a:card']);                           -- 22023
SELECT event_crypto.protect('tf_events', 'payload', fields => ARRAY['address'], key_column => 'subject', key_prefix => 'tfs:',
                            tokenize_fields => ARRAY['email:secret-format']);                         -- 22023
SELECT event_crypto.protect('tf_events', 'payload', fields => ARRAY['address'], key_column => 'subject', key_prefix => 'tfs:',
                            tokenize_fields => ARRAY['a..b']);                                        -- 42601
SELECT event_crypto.protect('tf_events', 'payload', fields => ARRAY['address'], key_column => 'subject', key_prefix => 'tfs:',
                            tokenize_fields => ARRAY[':card']);                                       -- 42601
SELECT event_crypto.protect('tf_events', 'payload', fields => ARRAY['address'], key_column => 'subject', key_prefix => 'tfs:',
                            tokenize_fields => ARRAY['a', NULL]);                                     -- 22004
-- a type's field list counts too
SELECT event_crypto.protect('tf_events', 'payload', key_column => 'subject', key_prefix => 'tfs:', type_column => 'subject',
                            fields_by_type => '{"x": ["email"]}', tokenize_fields => ARRAY['email']);  -- 22023
-- and the catalog refuses a bad row written by hand
UPDATE event_crypto.protected_columns SET tokenize_fields = ARRAY['address'] WHERE table_name = 'tf_events'::regclass;  -- 22023
-- keys with a colon are quoted; the configuration is unchanged by the refused calls
SELECT tokenize_fields FROM event_crypto.protected_columns WHERE table_name = 'tf_events'::regclass;
CREATE TABLE tf_fixed (id int, payload jsonb);
SELECT tokenize_fields FROM event_crypto.protect('tf_fixed', 'payload', fields => ARRAY['secret'], key_id => 'tf:fixed',
                                                 tokenize_fields => ARRAY['"a:b"', '"c:d":card', '"e.f":email']);
SELECT event_crypto.create_key('tf:fixed');
INSERT INTO tf_fixed VALUES (1, '{"a:b": "x", "c:d": "5500-0000-0000-0004", "e.f": "u@h.example", "secret": "s"}'),
                            (2, '{"a:b": "x"}');
SELECT id, payload->>'a:b' = event_crypto.tokenize('x', 'tf:fixed') AS fixed_key_token,
       right(payload->>'c:d', 4) AS card_last4, split_part(payload->>'e.f', '@', 2) AS domain,
       payload->>'secret' LIKE '$ec2$%' AS encrypted
FROM tf_fixed ORDER BY id;
SELECT count(DISTINCT payload->>'a:b') AS one_token FROM tf_fixed;
-- the PII guard does not report the tokens at tokenized paths (they look like e-mail addresses and card numbers),
-- and still refuses personal data elsewhere
CREATE TABLE tf_guarded (gid int, who text, doc jsonb);
SELECT count(*) FROM event_crypto.protect('tf_guarded', 'doc', fields => ARRAY['name'], key_column => 'who',
                                          key_prefix => 'tfs:', unprotected_pii => 'error',
                                          tokenize_fields => ARRAY['email:email', 'card:card']);
INSERT INTO tf_guarded VALUES (1, 'alice', '{"name": "Alice", "email": "alice@example.com", "card": "4111 1111 1111 1111"}')
RETURNING gid, doc->>'email' LIKE '%@example.com' AS email_token, doc->>'card' ~ '^[0-9]{12}1111$' AS card_token;
INSERT INTO tf_guarded VALUES (2, 'alice', '{"email": "alice@example.com", "contact": "alice@example.com"}');  -- 23514

-- suggest_protection does not list the tokens at tokenized paths, and its protect() call keeps tokenize_fields
INSERT INTO tf_events (subject, payload) VALUES ('bob', '{"email": "bob@example.org", "contact": "bob@example.org"}');
SELECT path, kind, rows, protect_call FROM event_crypto.suggest_protection('tf_events', 'payload');

-- an inserter without any event_crypto role: the trigger makes the subject's key and writes the vault as the
-- catalog owner; the inserter can neither tokenize, detokenize nor read the vault
CREATE ROLE tf_writer;
GRANT INSERT, SELECT ON tf_events TO tf_writer;
GRANT USAGE ON SEQUENCE tf_events_id_seq TO tf_writer;
SET ROLE tf_writer;
INSERT INTO tf_events (subject, payload) VALUES ('carol', '{"email": "carol@x.io", "customer_id": "C-3"}')
RETURNING subject, payload->>'customer_id' ~ '^tok_' AS tokenized, payload->>'email' LIKE '%@x.io' AS email_domain;
SELECT count(*) AS carol_rows FROM tf_events WHERE subject = 'carol';
SELECT event_crypto.tokenize('C-3', 'tfs:carol');                                                    -- 42501
SELECT event_crypto.detokenize(payload->>'customer_id') FROM tf_events WHERE subject = 'carol';      -- 42501
SELECT count(*) FROM event_crypto.token_vault;                                                       -- 42501
RESET ROLE;
SELECT event_crypto.detokenize(payload->>'customer_id') AS customer_id FROM tf_events WHERE subject = 'carol';

-- forget_subject purges the subject's vault rows: its tokens read as NULL, other subjects' still read
SELECT payload->>'email' AS alice_email, payload->>'card' AS alice_card FROM tf_events WHERE id = 1 \gset
SELECT payload->>'email' AS bob_email FROM tf_events WHERE id = 3 \gset
SELECT r->'tokens_purged' AS tokens_purged FROM event_crypto.forget_subject('alice', key_prefix => 'tfs:') r;
SELECT event_crypto.detokenize(:'alice_email') IS NULL AS alice_email, event_crypto.detokenize(:'alice_card') IS NULL AS alice_card,
       event_crypto.detokenize(:'bob_email') AS bob_email;
SELECT count(*) AS alice_vault_rows FROM event_crypto.token_vault WHERE token IN (:'alice_email', :'alice_card');
-- the stored tokens still group (the rows are kept; their values are gone)
SELECT count(*) AS alice_rows, count(DISTINCT payload->>'email') AS alice_email_tokens FROM tf_events WHERE subject = 'alice';
-- new rows of the forgotten subject are refused, replays of its rows too (their tokens are no tokens any more)
INSERT INTO tf_events (subject, payload) VALUES ('alice', '{"customer_id": "C-1"}');                  -- 23514
INSERT INTO tf_events (subject, payload) SELECT subject, payload FROM tf_events WHERE id = 1;           -- 23514
-- with on_forgotten => 'new_key' the replay is accepted: its tokens, no tokens of the new key generation, are
-- tokenized again as values (its encrypted field, an envelope under the shredded key, is kept)
SELECT count(*) FROM event_crypto.protect('tf_events', 'payload', fields => ARRAY['address'], key_column => 'subject',
                                          key_prefix => 'tfs:', on_forgotten => 'new_key',
                                          tokenize_fields => ARRAY['email:email', 'customer_id', 'card:card', 'tags[*]', 'ref:opaque']);
INSERT INTO tf_events (subject, payload) SELECT subject, payload FROM tf_events WHERE id = 1
RETURNING payload->>'customer_id' <> (SELECT payload->>'customer_id' FROM tf_events WHERE id = 1) AS retokenized,
          event_crypto.detokenize(payload->>'customer_id') = (SELECT payload->>'customer_id' FROM tf_events WHERE id = 1) AS stands_for_old_token,
          payload->>'address' = (SELECT payload->>'address' FROM tf_events WHERE id = 1) AS envelope_kept;
ROLLBACK;
