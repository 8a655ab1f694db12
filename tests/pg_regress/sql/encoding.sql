-- A database whose encoding is not UTF8. Field values become JSON text inside envelopes, which is UTF-8: every
-- function that reads or writes a document there is refused (22023) rather than writing envelopes that could not be
-- read back, the protect trigger too, and the refusal stands for the whole session (it is checked once and
-- remembered). Nothing here can run in a transaction block (CREATE DATABASE).
\set VERBOSITY sqlstate
\set origdb :DBNAME
CREATE DATABASE ec_latin1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
\c ec_latin1
\set VERBOSITY sqlstate
CREATE EXTENSION event_crypto;
SELECT event_crypto.create_key('enc-k') > 0 AS created;
SELECT event_crypto.encrypt_fields('{"a": "x"}', '{a}', 'enc-k');
SELECT event_crypto.encrypt_fields('{"a": "x"}', '{a}', 'enc-k');
SELECT event_crypto.decrypt_fields('{"a": "x"}');
CREATE TABLE enc_t (id serial PRIMARY KEY, payload jsonb);
SELECT count(*) FROM event_crypto.protect('enc_t', 'payload', fields => '{a}', key_id => 'enc-k');
INSERT INTO enc_t (payload) VALUES ('{"a": "x"}');
SELECT count(*) AS stored FROM enc_t;
\c :origdb
DROP DATABASE ec_latin1;
