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

-- A role that owns a protected table and may write events (encryptor) but lacks the decryptor role reads
-- ciphertext only, through every path: functions, the decrypted view, export, its own triggers and its own
-- SECURITY DEFINER functions (they run with its privileges).
BEGIN;
CREATE ROLE ec_owner IN ROLE event_crypto_encryptor;
GRANT CREATE ON SCHEMA public TO ec_owner;
SET ROLE ec_owner;
CREATE TABLE owned (id serial PRIMARY KEY, subject text, payload jsonb);
RESET ROLE;
SELECT count(*) FROM event_crypto.protect('owned', 'payload', fields => ARRAY['email'], key_column => 'subject');
GRANT SELECT ON owned_decrypted TO ec_owner;
SET ROLE ec_owner;
INSERT INTO owned (subject, payload) VALUES ('s1', '{"email": "secret@x.io"}');
SELECT payload->>'email' LIKE '$ec2$%' AS ciphertext_only FROM owned;
SELECT * FROM owned_decrypted;                                          -- 42501
SELECT event_crypto.decrypt_fields(payload) FROM owned;                 -- 42501
SELECT event_crypto.decrypt_value(payload->>'email') FROM owned;        -- 42501
SELECT event_crypto.export_subject('s1');                               -- 42501
SELECT event_crypto.reencrypt_fields(payload)->>'email' LIKE '$ec2$%' AS still_ciphertext FROM owned;
CREATE FUNCTION peek(p jsonb) RETURNS jsonb LANGUAGE sql SECURITY DEFINER AS 'SELECT event_crypto.decrypt_fields(p)';
SELECT peek(payload) FROM owned;                                        -- 42501
CREATE FUNCTION peek_trigger() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE NOTICE '%', event_crypto.decrypt_fields(NEW.payload); RETURN NEW; END $$;
CREATE TRIGGER peek AFTER INSERT ON owned FOR EACH ROW EXECUTE FUNCTION peek_trigger();
INSERT INTO owned (subject, payload) VALUES ('s1', '{"email": "second@x.io"}');   -- 42501
SELECT * FROM event_crypto.keys;                                        -- 42501 no wrapped keys either
SELECT current_setting('event_crypto.master_key_command');              -- 42501
SELECT count(*) AS settings_visible FROM pg_settings WHERE name LIKE 'event_crypto.master_key%';
RESET ROLE;
ROLLBACK;
