-- Blind index: deterministic per key id, normalised, stable across rotation, separate from the encryption key.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
SELECT event_crypto.create_key('bi');
SELECT event_crypto.create_key('bi2');
CREATE TEMP TABLE before_rotation AS SELECT event_crypto.blind_index('a@x.io', 'bi') AS d;
SELECT length(d) AS len, d ~ '^[A-Za-z0-9_-]{22}$' AS base64url FROM before_rotation;
SELECT event_crypto.blind_index('a@x.io', 'bi') = d AS deterministic,
       event_crypto.blind_index('a@x.io', 'bi2') <> d AS per_key_id,
       event_crypto.blind_index('A@X.io', 'bi') <> d AS case_sensitive_by_default,
       event_crypto.blind_index('A@X.io', 'bi', 'lower') = d AS lower,
       event_crypto.blind_index('  A@X.io ', 'bi', 'trim,lower') = d AS trim_lower,
       event_crypto.blind_index('  a@x.io ', 'bi', 'trim') = d AS trim,
       event_crypto.blind_index('a@x.io', 'bi', 'none') = d AS none
FROM before_rotation;
SELECT event_crypto.rotate_key('bi');
SELECT event_crypto.blind_index('a@x.io', 'bi') = d AS stable_across_rotation FROM before_rotation;
SELECT event_crypto.blind_index('', 'bi') IS NOT NULL AS empty_string_indexed, event_crypto.blind_index(NULL, 'bi') IS NULL AS null_in_null_out;
-- a lookup through an ordinary btree index
CREATE TEMP TABLE people (id int, email_idx text);
INSERT INTO people SELECT i, event_crypto.blind_index('user' || i || '@x.io', 'bi') FROM generate_series(1, 1000) i;
CREATE INDEX ON people (email_idx);
ANALYZE people;
SELECT id FROM people WHERE email_idx = event_crypto.blind_index('user77@x.io', 'bi');
-- errors
SELECT event_crypto.blind_index('x', NULL);              -- 22004
SELECT event_crypto.blind_index('x', 'nope');            -- 42704
SELECT event_crypto.blind_index('x', 'bi', 'upper');     -- 22023
SELECT event_crypto.shred_key('bi2');
SELECT event_crypto.blind_index('x', 'bi2');             -- 42704 shredded: index values of a forgotten key id stop being computable (the same error as a key id that never existed)
ROLLBACK;
