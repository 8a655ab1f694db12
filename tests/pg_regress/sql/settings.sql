-- Settings and parameter names (issue 14).
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
-- rotate_after_encryptions is an integer setting: SHOW prints it exactly (it printed 2.14748e+09)
SHOW event_crypto.rotate_after_encryptions;
SELECT vartype, min_val, max_val, boot_val FROM pg_settings WHERE name = 'event_crypto.rotate_after_encryptions';
SET event_crypto.rotate_after_encryptions = 1000;       -- 55P02: set in postgresql.conf only (reload)
-- the prefix event_crypto. is reserved: a misspelt setting is named, not taken as a placeholder
SET event_crypto.master_key_flie = '/etc/key';           -- 42602
SET event_crypto.rotate_after_encryption = 10;           -- 42602
SELECT current_setting('event_crypto.no_such_setting', true) IS NULL AS unknown;
-- the normalisation parameter is "normalization" (NORMALIZE is an SQL keyword: `normalize => ...` did not parse)
SELECT event_crypto.create_key('settings-index') AS created;
SELECT event_crypto.blind_index('Alice@X.io', 'settings-index', normalization => 'lower')
     = event_crypto.blind_index('alice@x.io', 'settings-index') AS named_argument_normalises;
SELECT event_crypto.blind_index('Alice@X.io', 'settings-index', 'lower')
     = event_crypto.blind_index('alice@x.io', 'settings-index', 'none') AS positional_still_works;
SELECT event_crypto.validate_normalize(normalization => 'trim,lower') AS valid;
SELECT event_crypto.validate_normalize(normalization => 'upper');   -- 22023
CREATE TABLE st_events (id serial PRIMARY KEY, subject text, payload jsonb, email_idx text);
SELECT count(*) FROM event_crypto.protect('st_events', 'payload', fields => '{email}', key_column => 'subject', key_prefix => 'st:');
SELECT normalize FROM event_crypto.add_blind_index('st_events', 'payload', 'email', 'email_idx', 'settings-index',
                                                   normalization => 'trim,lower');
SELECT proname, proargnames FROM pg_proc WHERE pronamespace = 'event_crypto'::regnamespace
   AND 'normalization' = ANY (proargnames) ORDER BY 1;
SELECT count(*) AS left_named_normalize FROM pg_proc WHERE pronamespace = 'event_crypto'::regnamespace
   AND 'normalize' = ANY (proargnames);
ROLLBACK;
