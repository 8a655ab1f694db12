-- event_crypto.citus_create_key(table, column, key_id, inserter) (issue 13): the coordinator's side of a Citus
-- shard trigger's request for a key it needs (a new subject's). It creates only what the column's protect trigger
-- would create on first use for a row the inserting role may write, audited as an automatic creation for that
-- role; nobody but the catalog's owner may call it. Checked here on one server (without Citus); the Citus tests
-- (crates/event_crypto_it/tests/citus.rs) send the requests from the workers.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
CREATE ROLE tk_app;
CREATE ROLE tk_reader;
CREATE TABLE tk_events (id serial PRIMARY KEY, subject text, payload jsonb, email_idx text);
CREATE TABLE tk_plain (id serial PRIMARY KEY, subject text, payload jsonb);
GRANT INSERT ON tk_events TO tk_app;
GRANT SELECT ON tk_events TO tk_reader;
SELECT count(*) FROM event_crypto.protect('tk_events', 'payload', fields => '{email}', key_column => 'subject',
                                          key_prefix => 'tk:', on_forgotten => 'new_key');
SELECT event_crypto.create_key('tk-index') > 0 AS index_key;
SELECT count(*) FROM event_crypto.add_blind_index('tk_events', 'payload', 'email', 'email_idx', 'tk-index');

-- a subject's first key: created once, for the inserting role
SELECT event_crypto.citus_create_key('tk_events', 'payload', event_crypto.subject_key_id('tk:', 'alice', 1), 'tk_app') AS created;
SELECT event_crypto.citus_create_key('tk_events', 'payload', event_crypto.subject_key_id('tk:', 'alice', 1), 'tk_app') AS created_again;
SELECT key_id, version, status, created_by FROM event_crypto.keys WHERE key_id LIKE 'tk:%' ORDER BY key_id;
-- the blind index key exists already: nothing to create
SELECT event_crypto.citus_create_key('tk_events', 'payload', 'tk-index', 'tk_app') AS created;
-- a subject id with characters that are escaped in key ids
SELECT event_crypto.citus_create_key('tk_events', 'payload', event_crypto.subject_key_id('tk:', 'o''brien#%', 1), 'tk_app') AS created;

-- refused (42501): a key id the column does not create, another prefix, a later generation while the first is live,
-- a role that may not write the column, a role that does not exist
SELECT event_crypto.citus_create_key('tk_events', 'payload', 'someone-elses-key', 'tk_app');
SELECT event_crypto.citus_create_key('tk_events', 'payload', 'other:alice', 'tk_app');
SELECT event_crypto.citus_create_key('tk_events', 'payload', event_crypto.subject_key_id('tk:', 'alice', 2), 'tk_app');
SELECT event_crypto.citus_create_key('tk_events', 'payload', event_crypto.subject_key_id('tk:', 'bob', 1), 'tk_reader');
SELECT event_crypto.citus_create_key('tk_events', 'payload', event_crypto.subject_key_id('tk:', 'bob', 1), 'tk_nobody');
-- once the first generation is shredded, the second may be created (on_forgotten => 'new_key')
SELECT event_crypto.forget_subject('alice', 'tk:')->'versions_destroyed' AS shredded;
-- (automatic creations are written to the audit log at commit, or before the next audit row: forget_subject's)
SELECT action, named_keys(key_ids, 'tk:alice', 'tk:o''brien%23%25') AS key_ids, actor, details->>'inserter' AS inserter, details->>'automatic' AS automatic
FROM event_crypto.audit_log WHERE event_crypto.key_id_digest('tk:alice') = ANY (key_ids) ORDER BY id;
SELECT event_crypto.citus_create_key('tk_events', 'payload', event_crypto.subject_key_id('tk:', 'alice', 2), 'tk_app') AS created;
SELECT event_crypto.citus_create_key('tk_events', 'payload', event_crypto.subject_key_id('tk:', 'alice', 3), 'tk_app');
-- not protected (55000), not a column, bad arguments
SELECT event_crypto.citus_create_key('tk_plain', 'payload', 'tk:x', 'tk_app');
SELECT event_crypto.citus_create_key('tk_events', 'subject', 'tk:x', 'tk_app');
SELECT event_crypto.citus_create_key('tk_events', 'payload', NULL, 'tk_app');
SELECT event_crypto.citus_create_key('tk_events', 'payload', '', 'tk_app');
SELECT event_crypto.citus_create_key('tk_events', 'payload', repeat('x', 100000), 'tk_app');
-- nobody but the catalog's owner may call it: not the application, not the admin role
SET ROLE tk_app;
SELECT event_crypto.citus_create_key('tk_events', 'payload', 'tk:carol', 'tk_app');
RESET ROLE;
SELECT has_function_privilege('event_crypto_admin', 'event_crypto.citus_create_key(regclass, name, text, text)', 'EXECUTE') AS admin_may_call;
SELECT count(*) AS keys FROM event_crypto.keys WHERE key_id LIKE 'tk:%' OR key_id = event_crypto.key_id_digest('tk:alice');
ROLLBACK;
