-- The audit log: every key lifecycle action recorded, append-only, hash-chained; tampering is detected.
-- The files before it roll back all they do, so the log starts empty. Rows are sealed when their transaction
-- commits (in its pre-commit callback, so nothing a session does earlier holds the chain): the actions below commit
-- one by one, and the checks that change the log run in a transaction that rolls back.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
SELECT * FROM event_crypto.verify_audit_log();              -- empty log: ok, no head yet
SELECT event_crypto.create_key('audit:a');
SELECT event_crypto.create_key('audit:b', 'chacha20-poly1305');
SELECT event_crypto.rotate_key('audit:a');
SELECT event_crypto.shred_key('audit:b');
SELECT event_crypto.shred_key('audit:b');                   -- destroys nothing: not recorded
SELECT * FROM event_crypto.rewrap_keys_batch();             -- nothing to rewrap: not recorded
-- (key ids by digest: issue 15)
SELECT seq, action, named_keys(key_ids, 'audit:a', 'audit:b') AS key_ids, details - 'master_key_id' AS details,
       details->>'master_key_id' IS NOT DISTINCT FROM
           CASE WHEN action IN ('create_key', 'rotate_key') THEN event_crypto.master_key_id() END AS master_recorded,
       actor = current_user AS actor_ok, session_actor = session_user AS session_ok,
       octet_length(prev_hash) AS prev_len, octet_length(row_hash) AS hash_len
FROM event_crypto.audit_log ORDER BY seq;
-- each row chains to the one before
SELECT a.seq, a.prev_hash = b.row_hash AS chained
FROM event_crypto.audit_log a JOIN event_crypto.audit_log b ON b.seq = a.seq - 1 ORDER BY a.seq;
SELECT ok, rows_checked, first_bad_seq, problem, head_seq, length(head_hash) FROM event_crypto.verify_audit_log();
-- one head per sealing commit; the newest is the chain's head
SELECT seq, length(row_hash) FROM event_crypto.audit_head ORDER BY seq;

-- Nothing a session does before its commit seals its rows or takes the chain's lock (issue 11, item 8: with the
-- seal a deferred constraint trigger, SET CONSTRAINTS ALL IMMEDIATE sealed at once and held the chain until
-- commit, stalling every writer; tests/isolation/specs/audit-seal-no-stall.spec shows the other session).
BEGIN;
SET CONSTRAINTS ALL IMMEDIATE;
SELECT event_crypto.create_key('audit:c');
SELECT seq IS NULL AS unsealed_until_commit FROM event_crypto.audit_log WHERE key_ids = ARRAY[event_crypto.key_id_digest('audit:c')];
SELECT count(*) AS chain_locks FROM pg_locks
WHERE pid = pg_backend_pid() AND relation = 'event_crypto.audit_head'::regclass AND mode <> 'AccessShareLock';
COMMIT;
SELECT seq IS NOT NULL AS sealed_at_commit FROM event_crypto.audit_log WHERE key_ids = ARRAY[event_crypto.key_id_digest('audit:c')];
-- a REPEATABLE READ transaction seals after others have (it reads the chain head with the newest snapshot)
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(*) > 0 AS snapshot_taken FROM event_crypto.audit_log;
\setenv PGDATABASE :DBNAME
\! psql -X -q -c "SELECT event_crypto.create_key('audit:other-session')" > /dev/null
SELECT event_crypto.create_key('audit:d');
COMMIT;
SELECT ok, rows_checked FROM event_crypto.verify_audit_log();
-- a transaction that wrote audit rows cannot be prepared (it would hold the chain until COMMIT PREPARED)
BEGIN;
SELECT event_crypto.create_key('audit:e');
PREPARE TRANSACTION 'audit_e';                               -- 0A000
SELECT count(*) AS audit_e_rows FROM event_crypto.audit_log WHERE key_ids = ARRAY[event_crypto.key_id_digest('audit:e')];

-- Keys a protect trigger creates for new subjects are recorded in create_key rows of up to 10,000 key ids each,
-- written when the transaction records its next audit row or commits (issue 12, item 6: one row per key made an
-- insert of 40,000 new subjects seal 40,000 rows under the chain's lock, and other sessions' commits waited).
CREATE TABLE audit_bulk (id serial PRIMARY KEY, subject text, payload jsonb);
SELECT count(*) FROM event_crypto.protect('audit_bulk', 'payload', fields => ARRAY['email'], key_column => 'subject', key_prefix => 'bulk:');
SELECT max(seq) AS head_before FROM event_crypto.audit_head \gset
INSERT INTO audit_bulk (subject, payload) SELECT 's' || g, '{"email": "x@y.io"}' FROM generate_series(1, 12000) g;
SELECT max(seq) - :head_before AS rows_sealed_by_the_insert FROM event_crypto.audit_head;
SELECT seq - :head_before AS seq, action, cardinality(key_ids) AS keys, named_key(key_ids[1], 'bulk:s1', 'bulk:s10001') AS first_key,
       named_key(key_ids[cardinality(key_ids)], 'bulk:s10000', 'bulk:s12000') AS last_key, details - 'master_key_id' AS details, actor = current_user AS actor_ok
FROM event_crypto.audit_log WHERE seq > :head_before ORDER BY seq;
SELECT count(DISTINCT k) AS keys_recorded, (SELECT count(*) FROM event_crypto.keys WHERE key_id LIKE 'bulk:%') AS keys_made
FROM event_crypto.audit_log, unnest(key_ids) AS k WHERE seq > :head_before;
-- a key made in a subtransaction that rolls back is not recorded; one made before a subtransaction that wrote its
-- row and then rolled back still is; the creations are recorded before the audit rows written after them
BEGIN;
INSERT INTO audit_bulk (subject, payload) VALUES ('t1', '{"email": "x@y.io"}');
SAVEPOINT a;
INSERT INTO audit_bulk (subject, payload) VALUES ('t2', '{"email": "x@y.io"}');
ROLLBACK TO a;
SAVEPOINT b;
SELECT event_crypto.create_key('audit:in-savepoint');
ROLLBACK TO b;
INSERT INTO audit_bulk (subject, payload) VALUES ('t3', '{"email": "x@y.io"}');
SELECT count(*) AS not_written_yet FROM event_crypto.audit_log WHERE event_crypto.key_id_digest('bulk:t3') = ANY (key_ids);
SELECT event_crypto.shred_key('bulk:t3');
COMMIT;
SELECT seq - :head_before AS seq, action, named_keys(key_ids, 'bulk:t1', 'bulk:t2', 'bulk:t3') AS key_ids
FROM event_crypto.audit_log WHERE seq > :head_before + 2 ORDER BY seq;
-- (bulk:t3, shredded, is kept as its tombstone: issue 15)
SELECT named_key(key_id, 'bulk:t3') AS key_id FROM event_crypto.keys
WHERE key_id IN ('bulk:t1', 'bulk:t2', 'bulk:t3', 'audit:in-savepoint', event_crypto.key_id_digest('bulk:t3')) ORDER BY 1;
-- a transaction that created keys automatically cannot be prepared either
BEGIN;
INSERT INTO audit_bulk (subject, payload) VALUES ('t4', '{"email": "x@y.io"}');
PREPARE TRANSACTION 'audit_bulk';                            -- 0A000
SELECT ok, rows_checked - :head_before AS rows_checked_since FROM event_crypto.verify_audit_log();
SELECT event_crypto.unprotect('audit_bulk', 'payload');
DROP TABLE audit_bulk;

BEGIN;
-- a key created by a protect trigger for a new subject is recorded as automatic
CREATE TABLE audit_events (id serial PRIMARY KEY, subject text, payload jsonb);
SELECT count(*) FROM event_crypto.protect('audit_events', 'payload', fields => ARRAY['email'], key_column => 'subject');
INSERT INTO audit_events (subject, payload) VALUES ('zed', '{"email": "z@x.io"}');
-- forget_subject records its own row besides the shred of each key (the automatic creation is written before them)
SELECT (event_crypto.forget_subject('zed'))->>'subject' AS forgotten;
SELECT action, named_keys(key_ids, 'subject:zed') AS key_ids, named_key(subject, 'subject:zed') AS subject, details->'automatic' AS automatic
FROM event_crypto.audit_log ORDER BY id DESC LIMIT 3;
SELECT ok, rows_checked FROM event_crypto.verify_audit_log();
-- the acting role and the session role are recorded, also under SET ROLE (issue 11, item 10)
CREATE ROLE audit_actor IN ROLE event_crypto_admin;
SET ROLE audit_actor;
SELECT event_crypto.create_key('audit:by-role');
RESET ROLE;
SELECT actor, session_actor = session_user AS session_ok FROM event_crypto.audit_log WHERE key_ids = ARRAY[event_crypto.key_id_digest('audit:by-role')];
SELECT created_by FROM event_crypto.key_info WHERE key_id = 'audit:by-role';

-- Append-only: a role with event_crypto_admin can read the log but not change it, and even a granted UPDATE or
-- DELETE is refused by the trigger.
CREATE ROLE audit_admin;
GRANT event_crypto_admin TO audit_admin;
SET ROLE audit_admin;
SELECT count(*) > 0 AS can_read FROM event_crypto.audit_log;
UPDATE event_crypto.audit_log SET actor = 'someone' WHERE seq = 1;      -- 42501 no grant
DELETE FROM event_crypto.audit_log;                                     -- 42501
TRUNCATE event_crypto.audit_log;                                        -- 42501
INSERT INTO event_crypto.audit_log (actor, session_actor, action) VALUES ('x', 'x', 'forged');  -- 42501
RESET ROLE;
GRANT UPDATE, DELETE, TRUNCATE ON event_crypto.audit_log, event_crypto.audit_head TO audit_admin;
SET ROLE audit_admin;
\set VERBOSITY default
UPDATE event_crypto.audit_log SET actor = 'someone' WHERE seq = 1;      -- 42501 refused by the trigger
\set VERBOSITY sqlstate
DELETE FROM event_crypto.audit_log WHERE seq = 1;                       -- 42501
TRUNCATE event_crypto.audit_log;                                        -- 42501
UPDATE event_crypto.audit_head SET seq = 0;                             -- 42501
RESET ROLE;

-- A superuser can change it, and verify_audit_log() says where and how.
SAVEPOINT s;
UPDATE event_crypto.audit_log SET details = details || '{"versions": 9}' WHERE seq = 4;
SELECT ok, first_bad_seq, regexp_replace(problem, '\(id [0-9]+\)', '(id n)') AS problem FROM event_crypto.verify_audit_log();
ROLLBACK TO s;
UPDATE event_crypto.audit_log SET at = at + interval '1 second' WHERE seq = 2;
SELECT ok, first_bad_seq, regexp_replace(problem, '\(id [0-9]+\)', '(id n)') AS problem FROM event_crypto.verify_audit_log();
ROLLBACK TO s;
DELETE FROM event_crypto.audit_log WHERE seq = 3;
SELECT ok, first_bad_seq, regexp_replace(problem, '\(id [0-9]+\)', '(id n)') AS problem FROM event_crypto.verify_audit_log();
ROLLBACK TO s;
-- renumbering after a deletion does not help: the next row no longer chains
DELETE FROM event_crypto.audit_log WHERE seq = 3;
UPDATE event_crypto.audit_log SET seq = seq - 1 WHERE seq > 3;
SELECT ok, first_bad_seq, regexp_replace(problem, '\(id [0-9]+\)', '(id n)') AS problem FROM event_crypto.verify_audit_log();
ROLLBACK TO s;
-- removing the newest rows is caught by the chain head
DELETE FROM event_crypto.audit_log WHERE seq >= (SELECT max(seq) - 1 FROM event_crypto.audit_log);
SELECT ok, first_bad_seq, regexp_replace(problem, '\(id [0-9]+\)', '(id n)') AS problem FROM event_crypto.verify_audit_log();
ROLLBACK TO s;
DELETE FROM event_crypto.audit_head;
SELECT ok, problem FROM event_crypto.verify_audit_log();
ROLLBACK TO s;
-- a row slipped in with triggers disabled is never sealed (verify_audit_log() reports it once its transaction has
-- committed: see the integration tests)
SET session_replication_role = replica;
INSERT INTO event_crypto.audit_log (actor, session_actor, action) VALUES ('x', 'x', 'forged');
RESET session_replication_role;
SELECT action, seq IS NULL AS unsealed FROM event_crypto.audit_log WHERE action = 'forged';
ROLLBACK TO s;
SELECT ok FROM event_crypto.verify_audit_log();
-- no SQL function writes an audit row its caller describes (issue 11, item 13: record_maintenance() let an admin
-- write a valid-looking 'enforce_retention' row naming keys that were never shredded)
SELECT count(*) AS audit_writers FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'event_crypto' AND p.proname IN ('record_maintenance', 'rotate_keys');
ROLLBACK;

-- The log and its head are dumped with the extension's configuration.
SELECT c.relname FROM pg_extension e, unnest(e.extconfig) AS t(oid) JOIN pg_class c ON c.oid = t.oid
WHERE e.extname = 'event_crypto' AND c.relname LIKE 'audit%' ORDER BY 1;

-- (the keys this file committed go again, so that later files start from the keys they make; their audit rows
-- stay, as audit rows do)
DELETE FROM event_crypto.keys WHERE key_id LIKE 'audit:%' OR key_id LIKE 'bulk:%'
                              OR key_id IN (event_crypto.key_id_digest('audit:b'), event_crypto.key_id_digest('bulk:t3'));
