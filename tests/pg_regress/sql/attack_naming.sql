-- Issue 11, item 9: the key ids of subjects are an injective naming. Generations used to be "<prefix><subject>#<n>",
-- so subject "dave#2" and the second generation of "dave" shared a key id, and forgetting dave destroyed the other's
-- data. Now '%' and '#' of subject ids are escaped (%25, %23): '#' after the prefix only ever separates a generation.
-- Item 14: what an encryptor learns from the functions it may call.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
CREATE TABLE names (id serial PRIMARY KEY, subject text, payload jsonb);
SELECT count(*) FROM event_crypto.protect('names', 'payload', fields => ARRAY['email'], key_column => 'subject',
                                          on_forgotten => 'new_key');
CREATE TEMP TABLE adversarial (subject) AS
VALUES ('dave'), ('dave#2'), ('dave%232'), ('dave#'), ('dave#02'), ('#'), ('%'), ('%23'), ('a#1#2'), ('subject:x'),
       ('dave 2'), ('ünï#ß'), ('dave%');
INSERT INTO names (subject, payload) SELECT subject, jsonb_build_object('email', subject || '@x.io') FROM adversarial;
-- every subject has its own key id, and the naming reads back
SELECT a.subject, k.key_id, (SELECT s.subject FROM event_crypto.subject_of_key_id('subject:', k.key_id) s) = a.subject AS reads_back
FROM adversarial a CROSS JOIN LATERAL (SELECT event_crypto.subject_key_id('subject:', a.subject) AS key_id) k ORDER BY k.key_id;
SELECT count(DISTINCT key_id) = (SELECT count(*) FROM adversarial) AS all_distinct
FROM event_crypto.keys WHERE key_id LIKE 'subject:%';
-- forgetting dave forgets dave only
SELECT (event_crypto.forget_subject('dave'))->'key_ids' AS dave_keys;
SELECT subject, payload->>'email' AS email FROM names_decrypted ORDER BY id;
-- dave comes back under a new generation: 'subject:dave#2', which is not subject "dave#2"'s key
INSERT INTO names (subject, payload) VALUES ('dave', '{"email": "dave-again@x.io"}');
-- (dave's first key, shredded, is kept as its tombstone: issue 15)
SELECT named_key(key_id, 'subject:dave') AS key_id, status FROM event_crypto.key_info
WHERE key_id LIKE 'subject:dave%' OR key_id = event_crypto.key_id_digest('subject:dave') ORDER BY key_info.key_id, version;
-- forgetting "dave#2" does not touch dave's second generation, and forgetting dave again takes both of his
SELECT (event_crypto.forget_subject('dave#2'))->'key_ids' AS dave_2_keys;
SELECT (event_crypto.forget_subject('dave'))->'key_ids' AS dave_keys_again;
SELECT subject, payload->>'email' AS email FROM names_decrypted WHERE subject LIKE 'dave%' ORDER BY id;
-- bad arguments
SELECT event_crypto.subject_key_id('subject:', '');                      -- 22023
SELECT event_crypto.subject_key_id('subject:', 'a' || chr(10) || 'b');   -- 22023
SELECT event_crypto.subject_key_id('', 'a');                             -- 22023
SELECT event_crypto.subject_key_id('subject:', repeat('#', 100));        -- 22023 too long once escaped
SELECT event_crypto.subject_key_id('subject:', 'a', 0);                  -- 22023
SELECT event_crypto.subject_key_id(NULL, 'a');                           -- 22004
SELECT count(*) FROM event_crypto.subject_of_key_id('subject:', 'subject:a#1');   -- not a key id of the naming: 0
-- prefixes that begin with one another could name one key id twice: refused
CREATE TABLE names2 (id serial, tenant text, payload jsonb);
SELECT event_crypto.protect('names2', 'payload', fields => ARRAY['email'], key_column => 'tenant', key_prefix => 'subject:x');  -- 22023
SELECT event_crypto.protect('names2', 'payload', fields => ARRAY['email'], key_column => 'tenant', key_prefix => 'sub');        -- 22023
SELECT event_crypto.protect('names2', 'payload', fields => ARRAY['email'], key_column => 'tenant', key_prefix => '');           -- 22023
SELECT count(*) FROM event_crypto.protect('names2', 'payload', fields => ARRAY['email'], key_column => 'tenant', key_prefix => 'tenant:');
ROLLBACK;

-- Item 14: a role that may encrypt cannot tell a forgotten subject from one that never existed: the same error
-- for an unknown and a shredded key id, from blind_index, encrypt_fields and encrypt_value. (Live key ids are in
-- every envelope anyway; an inserter into a table that refuses forgotten subjects learns it from the refusal, by
-- design; see docs/security.md.)
BEGIN;
CREATE ROLE nm_writer IN ROLE event_crypto_encryptor;
SELECT event_crypto.create_key('subject:gone');
SELECT event_crypto.shred_key('subject:gone');
SET ROLE nm_writer;
\set VERBOSITY default
SELECT event_crypto.blind_index('x', 'subject:gone');
SELECT event_crypto.blind_index('x', 'subject:never');
\set VERBOSITY sqlstate
SELECT event_crypto.encrypt_fields('{"a": 1}', '{a}', 'subject:gone');   -- 42704
SELECT event_crypto.encrypt_fields('{"a": 1}', '{a}', 'subject:never');  -- 42704
SELECT event_crypto.encrypt_value('1', 'subject:gone');                  -- 42704
SELECT event_crypto.encrypt_value('1', 'subject:never');                 -- 42704
SELECT * FROM event_crypto.key_info;                                     -- 42501
RESET ROLE;
ROLLBACK;
