-- Partitioned event tables (the first step of issue 13, found while fixing issue 12): a partition's protect trigger
-- (cloned by PostgreSQL from the partitioned table) finds the partitioned table's configuration, so protect() on the
-- parent covers every partition, present and future, sub-partitions included; re-encryption passes over every
-- partition and never calls a partitioned table done having seen nothing. Not in a transaction: CALL
-- reencrypt_table commits.
\set VERBOSITY sqlstate
CREATE SCHEMA part;
SET search_path = part, public;
CREATE TABLE pev (id bigserial, subject text, created_at date, payload jsonb) PARTITION BY RANGE (created_at);
CREATE TABLE pev_2026 PARTITION OF pev FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE pev_2027 PARTITION OF pev FOR VALUES FROM ('2027-01-01') TO ('2028-01-01') PARTITION BY LIST (subject);
CREATE TABLE pev_2027_a PARTITION OF pev_2027 FOR VALUES IN ('a');
CREATE TABLE pev_2027_rest PARTITION OF pev_2027 DEFAULT;
-- rows written before protect(): plaintext, in three partitions
INSERT INTO pev (subject, created_at, payload)
VALUES ('a', '2026-05-01', '{"email":"a1@x.io"}'), ('a', '2027-05-01', '{"email":"a2@x.io"}'), ('b', '2027-05-01', '{"email":"b1@x.io"}');
SELECT count(*) FROM event_crypto.protect('pev', 'payload', fields => '{email}', key_column => 'subject', key_prefix => 'part:');
-- inserts through the parent, straight into a partition, into a partition made afterwards
INSERT INTO pev (subject, created_at, payload) VALUES ('a', '2026-06-01', '{"email":"a3@x.io"}');
INSERT INTO pev_2027_rest (subject, created_at, payload) VALUES ('c', '2027-06-01', '{"email":"c1@x.io"}');
CREATE TABLE pev_2028 PARTITION OF pev FOR VALUES FROM ('2028-01-01') TO ('2029-01-01');
INSERT INTO pev (subject, created_at, payload) VALUES ('b', '2028-01-02', '{"email":"b2@x.io"}');
SELECT tableoid::regclass AS part, subject, payload->>'email' LIKE '$ec2$%' AS encrypted FROM pev ORDER BY id;
-- re-encryption of the parent itself is refused (a pass over it would see nothing); the procedure passes over
-- every partition and encrypts the plaintext rows
SELECT * FROM event_crypto.reencrypt_batch('pev', 'payload', 100);                  -- 0A000
CALL event_crypto.reencrypt_table('pev', 'payload', 2);
SELECT tableoid::regclass AS part, subject, payload->>'email' LIKE '$ec2$%' AS encrypted FROM pev ORDER BY id;
SELECT subject, payload->>'email' AS email FROM pev_decrypted ORDER BY id;
-- a retirement counts the rows of every partition
SELECT event_crypto.rotate_key('part:a');
SELECT table_name, rows FROM event_crypto.key_version_usage('part:a', 1) ORDER BY 1;
SELECT event_crypto.retire_key_version('part:a', 1);                                 -- 55006
-- forgetting and exporting reach every partition
SELECT jsonb_array_length(event_crypto.export_subject('a', key_prefix => 'part:')->'tables'->0->'rows') AS a_rows;
SELECT r->>'complete' AS complete, r->'key_ids' AS key_ids FROM event_crypto.forget_subject('a', key_prefix => 'part:') r;
SELECT subject, payload->>'email' AS email FROM pev_decrypted ORDER BY id;
INSERT INTO pev (subject, created_at, payload) VALUES ('a', '2028-02-01', '{"email":"again@x.io"}');  -- 23514 forgotten
DROP SCHEMA part CASCADE;
