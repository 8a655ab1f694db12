-- The audit log: every key lifecycle action recorded, append-only, hash-chained; tampering is detected.
-- Runs right after setup, so the log starts empty. Rows are sealed at commit; SET CONSTRAINTS ALL IMMEDIATE seals
-- them at the end of each statement instead, so the whole file can roll back.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
SET CONSTRAINTS ALL IMMEDIATE;
SELECT * FROM event_crypto.verify_audit_log();              -- empty log: ok, no head yet
SELECT event_crypto.create_key('audit:a');
SELECT event_crypto.create_key('audit:b', 'chacha20-poly1305');
SELECT event_crypto.rotate_key('audit:a');
SELECT event_crypto.shred_key('audit:b');
SELECT event_crypto.shred_key('audit:b');                   -- destroys nothing: not recorded
SELECT * FROM event_crypto.rewrap_keys_batch();             -- nothing to rewrap: not recorded
SELECT seq, action, key_ids, details - 'master_key_id' AS details,
       details->>'master_key_id' IS NOT DISTINCT FROM
           CASE WHEN action IN ('create_key', 'rotate_key') THEN event_crypto.master_key_id() END AS master_recorded,
       actor = current_user AS actor_ok, session_actor = session_user AS session_ok,
       xact_id = pg_current_xact_id() AS this_xact,
       octet_length(prev_hash) AS prev_len, octet_length(row_hash) AS hash_len
FROM event_crypto.audit_log ORDER BY seq;
-- each row chains to the one before
SELECT a.seq, a.prev_hash = b.row_hash AS chained
FROM event_crypto.audit_log a JOIN event_crypto.audit_log b ON b.seq = a.seq - 1 ORDER BY a.seq;
SELECT ok, rows_checked, first_bad_seq, problem, head_seq, length(head_hash) FROM event_crypto.verify_audit_log();

-- a key created by a protect trigger for a new subject is recorded as automatic
CREATE TABLE audit_events (id serial PRIMARY KEY, subject text, payload jsonb);
SELECT count(*) FROM event_crypto.protect('audit_events', 'payload', fields => ARRAY['email'], key_column => 'subject');
INSERT INTO audit_events (subject, payload) VALUES ('zed', '{"email": "z@x.io"}');
SELECT action, key_ids, details->'automatic' AS automatic FROM event_crypto.audit_log ORDER BY seq DESC LIMIT 1;
-- forget_subject records its own row besides the shred of each key
SELECT (event_crypto.forget_subject('zed'))->>'subject' AS forgotten;
SELECT action, key_ids, subject FROM event_crypto.audit_log ORDER BY seq DESC LIMIT 2;
SELECT ok, rows_checked FROM event_crypto.verify_audit_log();

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
SELECT ok, first_bad_seq, problem FROM event_crypto.verify_audit_log();
ROLLBACK TO s;
UPDATE event_crypto.audit_log SET at = at + interval '1 second' WHERE seq = 2;
SELECT ok, first_bad_seq, problem FROM event_crypto.verify_audit_log();
ROLLBACK TO s;
DELETE FROM event_crypto.audit_log WHERE seq = 3;
SELECT ok, first_bad_seq, problem FROM event_crypto.verify_audit_log();
ROLLBACK TO s;
-- renumbering after a deletion does not help: the next row no longer chains
DELETE FROM event_crypto.audit_log WHERE seq = 3;
UPDATE event_crypto.audit_log SET seq = seq - 1 WHERE seq > 3;
SELECT ok, first_bad_seq, problem FROM event_crypto.verify_audit_log();
ROLLBACK TO s;
-- removing the newest rows is caught by the chain head
DELETE FROM event_crypto.audit_log WHERE seq >= (SELECT max(seq) - 1 FROM event_crypto.audit_log);
SELECT ok, first_bad_seq, problem FROM event_crypto.verify_audit_log();
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
ROLLBACK;

-- The log and its head are dumped with the extension's configuration.
SELECT c.relname FROM pg_extension e, unnest(e.extconfig) AS t(oid) JOIN pg_class c ON c.oid = t.oid
WHERE e.extname = 'event_crypto' AND c.relname LIKE 'audit%' ORDER BY 1;
