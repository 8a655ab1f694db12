-- Partitioned tables (issue 13): a partition tree is protected at its root. LIST, HASH and sub-partitions; inserts
-- through the parent, straight into a partition and by COPY; UPDATEs that move a row to another partition; blind
-- indexes; protect() on a partition refused; ATTACH PARTITION refused for a table holding configured fields in
-- plaintext, envelopes not bound to their rows, or with its own protection; DETACH PARTITION keeps the detached
-- table protected; unprotect(); retention.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
CREATE SCHEMA pr;
SET search_path = pr, public;
CREATE TABLE ev (id bigserial, subject text, archived bool NOT NULL DEFAULT false,
                 payload jsonb, email_idx text) PARTITION BY LIST (archived);
CREATE TABLE ev_live PARTITION OF ev FOR VALUES IN (false) PARTITION BY HASH (subject);
CREATE TABLE ev_live_0 PARTITION OF ev_live FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE ev_live_1 PARTITION OF ev_live FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE ev_archive PARTITION OF ev FOR VALUES IN (true);
SELECT count(*) FROM event_crypto.protect('ev', 'payload', fields => '{email}', key_column => 'subject', key_prefix => 'pr:');
SELECT event_crypto.create_key('pr-index') > 0 AS index_key;
SELECT count(*) FROM event_crypto.add_blind_index('ev', 'payload', 'email', 'email_idx', 'pr-index');

-- protect(), unprotect(), add_blind_index(), drop_blind_index() on a partition: refused, naming the root
SELECT count(*) FROM event_crypto.protect('ev_live_0', 'payload', fields => '{email}', key_id => 'pr-index'); -- 42809
\set VERBOSITY default
SELECT count(*) FROM event_crypto.protect('ev_live_0', 'payload', fields => '{email}', key_id => 'pr-index');
\set VERBOSITY sqlstate
SELECT event_crypto.unprotect('ev_archive', 'payload');                                                  -- 42809
SELECT count(*) FROM event_crypto.add_blind_index('ev_live', 'payload', 'email', 'email_idx', 'pr-index'); -- 42809
SELECT event_crypto.drop_blind_index('ev_live_1', 'email_idx');                                           -- 42809

-- inserts through the parent, into a partition, by COPY: every row encrypted, every blind index filled
INSERT INTO ev (subject, payload) VALUES ('alice', '{"email":"alice@x.io","n":1}'), ('bob', '{"email":"bob@x.io","n":2}');
INSERT INTO ev_live_0 (subject, payload)
SELECT s, jsonb_build_object('email', s || '@y.io', 'n', 3) FROM (VALUES ('alice'), ('bob'), ('carol'), ('dave')) v(s)
WHERE satisfies_hash_partition('pr.ev_live'::regclass, 2, 0, s);
COPY ev (subject, archived, payload) FROM stdin;
carol	true	{"email": "carol@old.io", "n": 4}
dave	false	{"email": "dave@x.io", "n": 5}
\.
SELECT tableoid::regclass AS part, count(*) AS rows, bool_and(payload->>'email' LIKE '$ec2$%') AS encrypted,
       bool_and(email_idx = event_crypto.blind_index(event_crypto.decrypt_fields(payload)->>'email', 'pr-index')) AS indexed
FROM ev GROUP BY 1 ORDER BY 1;
-- an UPDATE that moves a row to another partition (archiving): it stays encrypted, bound to its subject
UPDATE ev SET archived = true WHERE subject = 'alice' AND (payload->>'n')::int = 1;
UPDATE ev SET archived = true, payload = payload || '{"email":"bob@new.io"}' WHERE subject = 'bob' AND (payload->>'n')::int = 2;
SELECT tableoid::regclass AS part, subject, payload->>'email' LIKE '$ec2$%' AS encrypted,
       event_crypto.decrypt_fields(payload)->>'email' AS email
FROM ev WHERE archived ORDER BY id;
SELECT count(*) AS found FROM ev WHERE email_idx = event_crypto.blind_index('bob@new.io', 'pr-index');
-- moving a row's ciphertext to another subject is refused in the partition it lands in too
UPDATE ev SET subject = 'mallory' WHERE subject = 'alice' AND archived;                                   -- 0A000

-- ATTACH PARTITION
CREATE TABLE ev_2025 (id bigint NOT NULL, subject text, archived bool NOT NULL DEFAULT false, payload jsonb, email_idx text)
    PARTITION BY HASH (subject);
CREATE TABLE ev_2025_0 PARTITION OF ev_2025 FOR VALUES WITH (MODULUS 1, REMAINDER 0);
INSERT INTO ev_2025 (id, subject, archived, payload) VALUES (100, 'erin', true, '{"email":"erin@old.io"}');
ALTER TABLE ev_archive RENAME TO ev_archive_new;
ALTER TABLE ev DETACH PARTITION ev_archive_new;
-- a table (here itself partitioned) holding configured fields in plaintext: refused
ALTER TABLE ev ATTACH PARTITION ev_2025 FOR VALUES IN (true);                                              -- 23514
\set VERBOSITY default
ALTER TABLE ev ATTACH PARTITION ev_2025 FOR VALUES IN (true);
\set VERBOSITY sqlstate
-- encrypted first with the tree's settings (its blind index too), then unprotected (the ciphertext stays): attached
SELECT count(*) FROM event_crypto.protect('ev_2025', 'payload', fields => '{email}', key_column => 'subject', key_prefix => 'pr:');
SELECT count(*) FROM event_crypto.add_blind_index('ev_2025', 'payload', 'email', 'email_idx', 'pr-index');
SELECT rows_rewritten, finished FROM event_crypto.reencrypt_batch('ev_2025_0', 'payload', 100);
-- still protected on its own: refused (by PostgreSQL itself here: the partition's trigger has the name the tree's has)
ALTER TABLE ev ATTACH PARTITION ev_2025 FOR VALUES IN (true);                                              -- 42710
SELECT event_crypto.unprotect('ev_2025', 'payload');
ALTER TABLE ev ATTACH PARTITION ev_2025 FOR VALUES IN (true);
SELECT subject, payload->>'email' LIKE '$ec2$%' AS encrypted, email_idx = event_crypto.blind_index('erin@old.io', 'pr-index') AS indexed
FROM ev WHERE subject = 'erin';
-- a table holding an envelope copied from another subject's row (no trigger checked it there): refused (23514)
CREATE TABLE fz (subject text NOT NULL, payload jsonb) PARTITION BY LIST (subject);
SELECT count(*) FROM event_crypto.protect('fz', 'payload', fields => '{email}', key_column => 'subject', key_prefix => 'pr:');
CREATE TABLE fz_m (LIKE fz);
INSERT INTO fz_m SELECT 'mallory', payload FROM ev WHERE subject = 'bob' LIMIT 1;
ALTER TABLE fz ATTACH PARTITION fz_m FOR VALUES IN ('mallory');                                            -- 23514
\set VERBOSITY default
ALTER TABLE fz ATTACH PARTITION fz_m FOR VALUES IN ('mallory');
\set VERBOSITY sqlstate
DELETE FROM fz_m;
ALTER TABLE fz ATTACH PARTITION fz_m FOR VALUES IN ('mallory');
-- DETACH PARTITION, and an empty table attached in its place: protected from then on
ALTER TABLE ev_live DETACH PARTITION ev_live_1;
CREATE TABLE ev_empty (LIKE ev);
ALTER TABLE ev_live ATTACH PARTITION ev_empty FOR VALUES WITH (MODULUS 2, REMAINDER 1);
INSERT INTO ev (subject, payload) SELECT s, '{"email":"late@x.io"}' FROM (VALUES ('alice'), ('bob'), ('carol'), ('dave')) v(s);
SELECT tableoid::regclass AS part, count(*) AS rows, bool_and(payload->>'email' LIKE '$ec2$%') AS encrypted
FROM ev WHERE payload->>'n' IS NULL AND NOT archived GROUP BY 1 ORDER BY 1;

-- DETACH PARTITION: the detached table keeps its ciphertext and its own copy of the protection
SELECT table_name, column_name, fields, key_column, key_prefix, decrypted_view
FROM event_crypto.protected_columns WHERE table_name::text IN ('ev_live_1', 'ev_archive_new') ORDER BY 1;
SELECT table_name, target_column, key_id FROM event_crypto.blind_indexes WHERE table_name::text IN ('ev_live_1', 'ev_archive_new') ORDER BY 1;
INSERT INTO ev_live_1 (subject, payload) VALUES ('hank', '{"email":"hank@x.io"}');
SELECT subject, payload->>'email' LIKE '$ec2$%' AS encrypted, email_idx IS NOT NULL AS indexed FROM ev_live_1 WHERE subject = 'hank';
-- forget_subject reaches the detached tables too (their blind index columns are cleared)
SELECT r->>'complete' AS complete FROM event_crypto.forget_subject('carol', key_prefix => 'pr:') r;
SELECT tableoid::regclass AS part, email_idx IS NULL AS index_cleared, event_crypto.decrypt_fields(payload)->>'email' AS email
FROM (SELECT tableoid, * FROM ev UNION ALL SELECT tableoid, * FROM ev_live_1 UNION ALL SELECT tableoid, * FROM ev_archive_new) x
WHERE subject = 'carol' ORDER BY 1;
-- a detached table, protected on its own, cannot be attached back until unprotected
ALTER TABLE ev_live DETACH PARTITION ev_empty;
ALTER TABLE ev_live ATTACH PARTITION ev_live_1 FOR VALUES WITH (MODULUS 2, REMAINDER 1);                  -- 42710
SELECT event_crypto.unprotect('ev_live_1', 'payload');
ALTER TABLE ev_live ATTACH PARTITION ev_live_1 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
-- a table with its own protection attached under an unprotected partitioned table: refused (a partition is
-- protected through its tree only)
SELECT count(*) FROM event_crypto.protect('ev_empty', 'payload', fields => '{email}', key_column => 'subject', key_prefix => 'pr:');
CREATE TABLE ev2 (LIKE ev) PARTITION BY LIST (archived);
ALTER TABLE ev2 ATTACH PARTITION ev_empty FOR VALUES IN (false);                                         -- 55000
-- a partition with its own protection (made by 0.1.0, where partitions were protected one by one): protect() on
-- its partitioned table is refused until it is unprotected
SET session_replication_role = replica;  -- event triggers off: how a table of 0.1.0 got here
ALTER TABLE ev2 ATTACH PARTITION ev_empty FOR VALUES IN (false);
RESET session_replication_role;
SELECT count(*) FROM event_crypto.protect('ev2', 'payload', fields => '{email}', key_column => 'subject', key_prefix => 'pr:'); -- 55000
\set VERBOSITY default
SELECT count(*) FROM event_crypto.protect('ev2', 'payload', fields => '{email}', key_column => 'subject', key_prefix => 'pr:');
\set VERBOSITY sqlstate
SELECT event_crypto.unprotect('ev_empty', 'payload');
SELECT count(*) FROM event_crypto.protect('ev2', 'payload', fields => '{email}', key_column => 'subject', key_prefix => 'pr:');
-- unprotect() on the root removes the trigger from every partition; the rows keep their ciphertext
SELECT event_crypto.unprotect('ev', 'payload');
SELECT count(*) AS triggers_left FROM pg_partition_tree('ev') p JOIN pg_trigger t ON t.tgrelid = p.relid WHERE NOT t.tgisinternal;
SELECT bool_and(payload->>'email' LIKE '$ec2$%') AS still_encrypted FROM ev WHERE payload ? 'email';

-- retention on a partitioned table reads every partition: a subject with an old event in one partition and a new
-- one in another is kept; a policy on a partition is refused (42809)
CREATE TABLE tev (id bigserial, subject text, created_at timestamptz NOT NULL, payload jsonb) PARTITION BY RANGE (created_at);
CREATE TABLE tev_old PARTITION OF tev FOR VALUES FROM ('2020-01-01') TO ('2026-01-01');
CREATE TABLE tev_new PARTITION OF tev FOR VALUES FROM ('2026-01-01') TO ('2100-01-01');
SELECT count(*) FROM event_crypto.protect('tev', 'payload', fields => '{email}', key_column => 'subject', key_prefix => 'rt:');
INSERT INTO tev (subject, created_at, payload) VALUES ('old', '2021-01-01', '{"email":"o@x.io"}'),
    ('new', now(), '{"email":"n@x.io"}'), ('both', '2021-01-01', '{"email":"b1@x.io"}'), ('both', now(), '{"email":"b2@x.io"}');
SELECT id AS policy FROM event_crypto.set_retention("table" => 'tev', inactive_for => '1 year', time_column => 'created_at') \gset
SELECT count(*) FROM event_crypto.set_retention("table" => 'tev_old', inactive_for => '1 year', time_column => 'created_at'); -- 42809
SELECT key_id, subject, shredded FROM event_crypto.enforce_retention(dry_run => false) WHERE policy_id = :policy;
SELECT subject, payload->>'email' AS email FROM tev_decrypted ORDER BY id;
ROLLBACK;
