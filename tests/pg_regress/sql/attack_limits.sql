-- Issue 11, item 3: work driven by an encryptor's input is bounded and cancellable. Field paths that interleave
-- [*] and [N] used to double the compiled selection at every level (d = 22: 2.7 s past a 500 ms statement timeout;
-- d = 26: an allocation failure that aborted the backend and restarted every session). Now the selection has a
-- node limit (54000, at once), and long walks honour statement_timeout and cancellation.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
SELECT event_crypto.create_key('lim');
SET LOCAL statement_timeout = '2s';
CREATE TEMP TABLE bombs AS
SELECT d, ARRAY(SELECT 'a' || repeat('[*]', j) || '[0]' || repeat('[*]', d - j - 1) FROM generate_series(0, d - 1) j) AS fields
FROM unnest(ARRAY[10, 22, 26, 40]) d;
SELECT d, event_crypto.validate_fields(fields) FROM bombs WHERE d = 10;
SELECT d, event_crypto.validate_fields(fields) FROM bombs WHERE d = 22;                           -- 54000
SELECT event_crypto.encrypt_fields('{"a": [[1]]}', fields, 'lim') FROM bombs WHERE d = 26;        -- 54000
SELECT event_crypto.needs_reencryption('{"a": [[1]]}', fields) FROM bombs WHERE d = 40;          -- 54000
CREATE TABLE lim_t (id serial, subject text, payload jsonb);
SELECT event_crypto.protect('lim_t', 'payload', fields => (SELECT fields FROM bombs WHERE d = 26), key_column => 'subject');  -- 54000
SELECT event_crypto.protect('lim_t', 'payload', fields => ARRAY['x'], key_column => 'subject',
                            type_column => 'subject', fields_by_type => jsonb_build_object('T', (SELECT to_jsonb(fields) FROM bombs WHERE d = 26)));  -- 54000
-- the backend is still there
SELECT 1 AS alive;
ROLLBACK;

-- statement_timeout stops a long walk over a big document (3,000,000 array elements, each encrypted)
BEGIN;
SELECT event_crypto.create_key('lim2');
CREATE TEMP TABLE big AS SELECT jsonb_build_object('a', (SELECT jsonb_agg(i) FROM generate_series(1, 3000000) i)) AS doc;
SET LOCAL statement_timeout = '300ms';
SELECT jsonb_array_length(event_crypto.encrypt_fields(doc, '{a[*]}', 'lim2')->'a') FROM big;     -- 57014
ROLLBACK;
