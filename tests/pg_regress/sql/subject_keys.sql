-- Subjects' keys in the protect trigger, across tables and a forget: two tables keyed by the same prefix, one refusing
-- a forgotten subject and one giving it a new key generation, share each subject's first key; once the subject is
-- forgotten, one refuses its rows and the other writes them under the second generation, whichever wrote last (what a
-- session knows of a subject's key never outlives a change to the key catalog, nor crosses from one policy to the
-- other).
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
CREATE TABLE sk_refuse (id serial PRIMARY KEY, subject text, payload jsonb);
CREATE TABLE sk_new (id serial PRIMARY KEY, subject text, payload jsonb);
SELECT count(*) FROM event_crypto.protect('sk_refuse', 'payload', fields => '{email}', key_column => 'subject',
                                          key_prefix => 'sk:');
SELECT count(*) FROM event_crypto.protect('sk_new', 'payload', fields => '{email}', key_column => 'subject',
                                          key_prefix => 'sk:', on_forgotten => 'new_key');
-- many rows of few subjects, in both tables: one key per subject, shared by the tables
INSERT INTO sk_refuse (subject, payload) SELECT 's' || (i % 3), jsonb_build_object('email', 'r' || i) FROM generate_series(1, 30) i;
INSERT INTO sk_new (subject, payload) SELECT 's' || (i % 3), jsonb_build_object('email', 'n' || i) FROM generate_series(1, 30) i;
SELECT key_id, version, status FROM event_crypto.keys WHERE key_id LIKE 'sk:%' ORDER BY key_id;
-- each row under its own subject's key (the first generation)
SELECT count(*) AS rows, bool_and(event_crypto.uses_key_version(payload, 'sk:' || subject, 1)) AS own_key
FROM (SELECT subject, payload FROM sk_refuse UNION ALL SELECT subject, payload FROM sk_new) r;

-- s1 forgotten: the new-key table writes under a second generation, the refusing table refuses, before and after
SELECT (event_crypto.forget_subject('s1', 'sk:'))->'versions_destroyed' AS destroyed;
INSERT INTO sk_refuse (subject, payload) VALUES ('s1', '{"email": "r-after-1"}');      -- 23514
INSERT INTO sk_new (subject, payload) VALUES ('s1', '{"email": "n-after"}'), ('s1', '{"email": "n-after-2"}');
INSERT INTO sk_refuse (subject, payload) VALUES ('s1', '{"email": "r-after-2"}');      -- 23514
INSERT INTO sk_new (subject, payload) VALUES ('s1', '{"email": "n-after-3"}');
-- the other subjects are untouched
INSERT INTO sk_refuse (subject, payload) VALUES ('s0', '{"email": "r-after"}'), ('s2', '{"email": "r-after"}');
SELECT key_id, version, status FROM event_crypto.keys WHERE key_id LIKE 'sk:%' ORDER BY key_id;
-- the rows written after the forget, by the key generation they are under
SELECT t, subject, CASE WHEN event_crypto.uses_key_version(payload, 'sk:' || subject, 1) THEN 'first'
                        WHEN event_crypto.uses_key_version(payload, 'sk:' || subject || '#2', 1) THEN 'second' END AS generation,
       count(*)
FROM (SELECT 'refuse' AS t, id, subject, payload FROM sk_refuse UNION ALL SELECT 'new', id, subject, payload FROM sk_new) r
WHERE id > 30 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;
ROLLBACK;
