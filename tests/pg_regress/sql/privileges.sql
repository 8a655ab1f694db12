-- Privileges: nothing for PUBLIC; admin, encryptor and decryptor roles each get their functions only.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
SELECT event_crypto.create_key('priv');
CREATE ROLE ec_nobody;
CREATE ROLE ec_admin IN ROLE event_crypto_admin;
CREATE ROLE ec_writer IN ROLE event_crypto_encryptor;
CREATE ROLE ec_reader IN ROLE event_crypto_decryptor;
CREATE TEMP TABLE sample AS SELECT event_crypto.encrypt_fields('{"s":"x"}', '{s}', 'priv') AS p;
GRANT SELECT ON sample TO ec_nobody, ec_admin, ec_writer, ec_reader;

SET ROLE ec_nobody;
SELECT event_crypto.encrypt_fields('{"s":"x"}', '{s}', 'priv');   -- 42501
SELECT event_crypto.decrypt_fields(p) FROM sample;                 -- 42501
SELECT event_crypto.blind_index('x', 'priv');                      -- 42501
SELECT event_crypto.create_key('mine');                            -- 42501
SELECT event_crypto.shred_key('priv');                             -- 42501
SELECT * FROM event_crypto.keys;                                   -- 42501
SELECT * FROM event_crypto.key_info;                               -- 42501
RESET ROLE;

SET ROLE ec_writer;
SELECT event_crypto.encrypt_fields('{"s":"x"}', '{s}', 'priv') IS NOT NULL AS can_encrypt;
SELECT event_crypto.blind_index('x', 'priv') IS NOT NULL AS can_index;
SELECT event_crypto.decrypt_fields(p) FROM sample;                 -- 42501
SELECT event_crypto.create_key('mine');                            -- 42501
SELECT wrapped_key FROM event_crypto.keys;                         -- 42501
RESET ROLE;

SET ROLE ec_reader;
SELECT event_crypto.decrypt_fields(p) AS can_decrypt FROM sample;
SELECT event_crypto.encrypt_fields('{"s":"x"}', '{s}', 'priv');   -- 42501
SELECT event_crypto.shred_key('priv');                             -- 42501
RESET ROLE;

SET ROLE ec_admin;
SELECT event_crypto.create_key('admin-made');
SELECT key_id, created_by FROM event_crypto.key_info WHERE key_id = 'admin-made';
SELECT event_crypto.rotate_key('admin-made');
SELECT event_crypto.shred_key('admin-made');
SELECT wrapped_key FROM event_crypto.keys;                         -- 42501 the view only
UPDATE event_crypto.keys SET status = 'active';                    -- 42501
SELECT event_crypto.decrypt_fields(p) FROM sample;                 -- 42501
RESET ROLE;

-- the master key GUCs are hidden from ordinary roles and cannot be set in a session
SET ROLE ec_reader;
SHOW event_crypto.master_key_command;                              -- 42501
RESET ROLE;
SET event_crypto.master_key_file = '/tmp/other.key';               -- 55P02
ROLLBACK;
