-- Data made with the previous release (0.1.0): keys of both algorithms, rotated and shredded keys, hand-encrypted
-- rows, a protected table (per subject, context, event types, blind index, new key generations), a table with one
-- key, policies, a re-encryption pass, the audit chain; subject ids that 0.1.0 named ambiguously.
\set ON_ERROR_STOP on
CREATE EXTENSION event_crypto VERSION '0.1.0';
SELECT event_crypto.create_key('up:aes');
SELECT event_crypto.create_key('up:chacha', 'chacha20-poly1305');
SELECT event_crypto.rotate_key('up:aes');
SELECT event_crypto.create_key('up:gone');
SELECT event_crypto.shred_key('up:gone');

CREATE TABLE up_manual (id serial PRIMARY KEY, ctx text, p jsonb);
INSERT INTO up_manual (ctx, p) VALUES
    (NULL, event_crypto.encrypt_fields('{"a": "aes v2", "n": 1.50}', '{a}', 'up:aes')),
    ('c1', event_crypto.encrypt_fields('{"a": {"deep": [1, "two"]}, "b": true}', '{a,b}', 'up:chacha', 'c1'));
INSERT INTO up_manual (ctx, p) SELECT NULL, event_crypto.encrypt_fields('{"a": "old version"}', '{a}', 'up:aes');

CREATE TABLE up_events (id serial PRIMARY KEY, stream text, subject text, type text, payload jsonb, email_idx text);
SELECT event_crypto.protect('up_events', 'payload', fields => ARRAY['email'], key_column => 'subject',
                            context_column => 'stream', type_column => 'type',
                            fields_by_type => '{"Card": ["card.number"]}', on_forgotten => 'new_key');
SELECT event_crypto.add_blind_index('up_events', 'payload', 'email', 'email_idx', 'up:tenant', 'lower');
INSERT INTO up_events (stream, subject, type, payload) VALUES
    ('s1', 'alice', 'Created', '{"email": "Alice@x.io", "n": 1}'),
    ('s1', 'alice', 'Card', '{"email": "alice@x.io", "card": {"number": "4111"}}'),
    ('s2', 'bob', 'Created', '{"email": "bob@x.io"}'),
    ('s3', 'carl#2', 'Created', '{"email": "carl2@x.io"}'),
    ('s4', '50%off', 'Created', '{"email": "fifty@x.io"}'),
    ('s5', 'eve', 'Created', '{"email": "eve@x.io"}'),
    ('s6', 'eve#2', 'Created', '{"email": "eve2@x.io"}'),
    ('s7', 'dave', 'Created', '{"email": "dave@x.io"}');
-- dave is forgotten and comes back: 0.1.0 gives him "subject:dave#2"
SELECT event_crypto.forget_subject('dave');
INSERT INTO up_events (stream, subject, type, payload) VALUES ('s7', 'dave', 'Created', '{"email": "dave-again@x.io"}');

CREATE TABLE up_fixed (id serial PRIMARY KEY, payload jsonb);
SELECT event_crypto.protect('up_fixed', 'payload', fields => ARRAY['secret'], key_id => 'up:fixed');
INSERT INTO up_fixed (payload) VALUES ('{"secret": "s3cr3t", "plain": 1}');
-- 0.1.0 let an admin write the configuration: a view name that is not this table's view
CREATE VIEW up_unrelated AS SELECT 1 AS one;
UPDATE event_crypto.protected_columns SET view_name = 'public.up_unrelated' WHERE table_name = 'up_fixed'::regclass;

SELECT event_crypto.set_rotation('up:%', '1 year');
SELECT event_crypto.set_retention('up:gone%', older_than => '10 years');
CALL event_crypto.reencrypt_table('up_manual', 'p', 10, 'ctx');
-- a version newer than the rows: the new release re-encrypts them
SELECT event_crypto.rotate_key('up:aes');
-- 0.1.0 kept the configuration of a dropped table (pointing at a dead oid): the upgrade removes it
CREATE TABLE up_gone (subject text, payload jsonb);
SELECT count(*) FROM event_crypto.protect('up_gone', 'payload', fields => ARRAY['x'], key_column => 'subject');
SET client_min_messages = warning;
DROP TABLE up_gone CASCADE;
RESET client_min_messages;
