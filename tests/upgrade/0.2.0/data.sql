-- Data made with release 0.2.0: keys of both algorithms, rotated and shredded keys, a version disabled by
-- retirement, hand-encrypted rows, a partitioned protected table (per subject with a key prefix, context, blind
-- index, sub-partitions, a forgotten subject that came back), a json payload under one key, policies, a
-- re-encryption pass, a recorded maintenance run, usage counts, the audit chain.
\set ON_ERROR_STOP on
CREATE EXTENSION event_crypto VERSION '0.2.0';
SELECT event_crypto.create_key('u2:aes');
SELECT event_crypto.create_key('u2:chacha', 'chacha20-poly1305');
SELECT event_crypto.rotate_key('u2:aes');
SELECT event_crypto.create_key('u2:gone');
SELECT event_crypto.shred_key('u2:gone');
-- a version no row uses, disabled by retirement (destroyed by the maintenance run after retire_wait)
SELECT event_crypto.create_key('u2:retiring');
SELECT event_crypto.rotate_key('u2:retiring');
SELECT (event_crypto.retire_key_version('u2:retiring', 1))->>'disabled' IS NOT NULL AS disabled;

CREATE TABLE u2_manual (id serial PRIMARY KEY, ctx text, p jsonb);
INSERT INTO u2_manual (ctx, p) VALUES
    (NULL, event_crypto.encrypt_fields('{"a": "aes v2", "n": 1.50}', '{a}', 'u2:aes')),
    ('c1', event_crypto.encrypt_fields('{"a": {"deep": [1, "two"]}, "b": true}', '{a,b}', 'u2:chacha', 'c1')),
    (NULL, event_crypto.encrypt_fields('{"a": "retiring v2"}', '{a}', 'u2:retiring'));

CREATE TABLE u2_events (id bigserial, stream text, subject text, at date NOT NULL, payload jsonb, email_idx text)
    PARTITION BY RANGE (at);
CREATE TABLE u2_events_2026 PARTITION OF u2_events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE u2_events_2027 PARTITION OF u2_events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')
    PARTITION BY LIST (stream);
CREATE TABLE u2_events_2027_a PARTITION OF u2_events_2027 FOR VALUES IN ('a');
CREATE TABLE u2_events_2027_rest PARTITION OF u2_events_2027 DEFAULT;
-- a row written before protect(): re-encrypted by the pass below
INSERT INTO u2_events (stream, subject, at, payload) VALUES ('a', 'alice', '2027-03-01', '{"email": "early@x.io"}');
SELECT count(*) FROM event_crypto.protect('u2_events', 'payload', fields => '{email,card.number}',
                                          key_column => 'subject', context_column => 'stream',
                                          key_prefix => 'u2:user:', on_forgotten => 'new_key');
SELECT count(*) FROM event_crypto.add_blind_index('u2_events', 'payload', 'email', 'email_idx', 'u2:idx', 'lower');
INSERT INTO u2_events (stream, subject, at, payload) VALUES
    ('a', 'alice', '2026-05-01', '{"email": "Alice@x.io", "card": {"number": "4111"}}'),
    ('a', 'alice', '2027-05-01', '{"email": "alice@x.io", "n": 2}'),
    ('b', 'bob', '2027-06-01', '{"email": "bob@x.io"}'),
    ('c', 'x%y#2', '2026-07-01', '{"email": "odd@x.io"}'),
    ('d', 'dave', '2026-08-01', '{"email": "dave@x.io"}');
-- dave is forgotten and comes back under a new key generation
SELECT (event_crypto.forget_subject('dave', 'u2:user:'))->'key_ids' AS dave;
INSERT INTO u2_events (stream, subject, at, payload) VALUES ('d', 'dave', '2027-09-01', '{"email": "dave-again@x.io"}');
CALL event_crypto.reencrypt_table('u2_events', 'payload', 100);

CREATE TABLE u2_json (id serial PRIMARY KEY, payload json);
SELECT count(*) FROM event_crypto.protect('u2_json', 'payload', fields => '{secret}', key_id => 'u2:fixed');
INSERT INTO u2_json (payload) VALUES ('{"secret": "s3cr3t", "plain": 1}'), ('{"secret": [1, 2], "plain": 2}');

SELECT event_crypto.set_rotation('u2:%', '1 year');
SELECT count(*) FROM event_crypto.set_retention('u2:gone%', older_than => '10 years');
-- usage counted and flushed, and the run recorded
SELECT count(*) FROM u2_events_decrypted;
SELECT count(*) FILTER (WHERE ok) AS ok FROM event_crypto.run_maintenance();
