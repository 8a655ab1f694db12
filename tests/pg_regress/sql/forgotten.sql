-- Issue 15: no identifier of a forgotten subject stays in event_crypto's own tables. After forget_subject of an
-- e-mail address, no table of schema event_crypto (every one, found in pg_class; every column, as text) holds the
-- subject id or its key ids: the key catalog keeps the shredded key ids' rows under keyed digests (tombstones), the
-- audit log names every key id and subject by digest, usage counts and the last maintenance result follow. A
-- returning subject is refused or gets the next key generation as before; the receipt verifies with the subject id
-- and with no other one; the audit chain verifies. Run in a database of its own (its rows are committed: sealed
-- audit rows, flushed usage counts, the maintenance record).
\set VERBOSITY sqlstate
CREATE DATABASE ec_forgotten;
\c ec_forgotten
SET client_min_messages = warning;
CREATE EXTENSION event_crypto;
RESET client_min_messages;

-- Every column of every table of schema event_crypto, as text, that contains `needle`.
CREATE FUNCTION mentions(needle text) RETURNS TABLE (table_name text, column_name name, rows bigint)
    LANGUAGE plpgsql
AS $$
DECLARE
    c record;
    n bigint;
BEGIN
    FOR c IN SELECT k.oid::regclass AS t, a.attname FROM pg_class k
             JOIN pg_namespace s ON s.oid = k.relnamespace
             JOIN pg_attribute a ON a.attrelid = k.oid AND a.attnum > 0 AND NOT a.attisdropped
             WHERE s.nspname = 'event_crypto' AND k.relkind IN ('r', 'p') ORDER BY 1, a.attnum LOOP
        EXECUTE format('SELECT count(*) FROM %s t WHERE strpos(t.%I::text, $1) > 0', c.t, c.attname) INTO n USING needle;
        IF n > 0 THEN
            table_name := c.t::text; column_name := c.attname; rows := n;
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;
SELECT count(*) AS tables, sum(columns) AS columns_searched
FROM (SELECT count(*) AS columns FROM pg_class k JOIN pg_namespace s ON s.oid = k.relnamespace
      JOIN pg_attribute a ON a.attrelid = k.oid AND a.attnum > 0 AND NOT a.attisdropped
      WHERE s.nspname = 'event_crypto' AND k.relkind IN ('r', 'p') GROUP BY k.oid) c;

-- Two kinds of subjects keyed by e-mail address: events refuse a forgotten subject, orders give it a new key.
CREATE TABLE f_events (id serial PRIMARY KEY, subject text, payload jsonb, email_idx text);
SELECT count(*) FROM event_crypto.protect('f_events', 'payload', fields => ARRAY['email'], key_column => 'subject');
SELECT count(*) FROM event_crypto.add_blind_index('f_events', 'payload', 'email', 'email_idx', 'f:index', 'lower');
CREATE TABLE f_orders (id serial PRIMARY KEY, customer text, payload jsonb);
SELECT count(*) FROM event_crypto.protect('f_orders', 'payload', fields => ARRAY['card'], key_column => 'customer',
                                          key_prefix => 'cust:', on_forgotten => 'new_key');
INSERT INTO f_events (subject, payload) VALUES ('alice@example.com', '{"email": "alice@example.com", "n": 1}'),
                                               ('bob@example.com', '{"email": "bob@example.com", "n": 2}');
INSERT INTO f_orders (customer, payload) VALUES ('alice@example.com', '{"card": "4111"}'), ('bob@example.com', '{"card": "5500"}');
-- alice's key ids are in use everywhere event_crypto keeps them: versions, usage counts, decryption audit rows,
-- an export, a forced retirement, a rotation that could not be done (the last maintenance result names the key)
SELECT event_crypto.rotate_key('subject:alice@example.com');
SELECT event_crypto.retire_key_version('subject:alice@example.com', 1, force => true)->'destroyed' AS destroyed;
SET event_crypto.audit_decrypt = on;
SELECT subject, payload FROM f_events_decrypted ORDER BY id;
SELECT (event_crypto.flush_usage())->'encryptions' AS flushed;
RESET event_crypto.audit_decrypt;
SELECT jsonb_array_length(event_crypto.export_subject('alice@example.com', key_prefix => 'cust:')->'tables') AS exported;
SELECT key_pattern FROM event_crypto.set_rotation('cust:%', '1 day');
UPDATE event_crypto.keys SET created_at = now() - interval '2 days' WHERE key_id LIKE 'cust:%';
UPDATE event_crypto.keys SET wrapped_index_key = wrapped_key WHERE key_id = 'cust:alice@example.com';  -- damaged
SELECT action, ok, detail - 'skipped_keys' AS detail, detail->'skipped_keys' ? 'cust:alice@example.com' AS names_alice
FROM event_crypto.run_maintenance() WHERE action = 'scheduled_rotation';
-- a consumer outside the database fetched her key (by key id and by handle)
SELECT event_crypto.create_consumer('f-consumer', 'ecpk1:hUVCOQoK2vS0x5jsd9bR6rGKTsXLR9b8xgT35aMVcRE=', 'subject:%');
SELECT pg_catalog.string_agg(r.status, ',' ORDER BY r.ordinality) AS fetched
FROM event_crypto.consumer_keys('f-consumer', (SELECT jsonb_build_array(
         jsonb_build_object('key_id', 'subject:alice@example.com', 'version', 2),
         jsonb_build_object('handle', lpad(to_hex(handle), 16, '0'), 'version', 2))
     FROM event_crypto.keys WHERE key_id = 'subject:alice@example.com' AND version = 1)) WITH ORDINALITY r;
-- her e-mail address was tokenized under her key (issue 17): the vault holds the token and the value encrypted,
-- named by the key's handle, never the address or the key id
SELECT event_crypto.tokenize('alice@example.com', 'subject:alice@example.com', 'email') AS alice_token,
       event_crypto.tokenize('alice@example.com', 'subject:alice@example.com') AS alice_opaque \gset
SELECT event_crypto.detokenize(:'alice_token') AS detokenized;
SELECT table_name, column_name FROM mentions('alice@example.com') ORDER BY 1, 2;

-- Forgotten, as both kinds of subject.
SELECT event_crypto.forget_subject('alice@example.com', 'subject:') AS receipt \gset
SELECT event_crypto.forget_subject('alice@example.com', 'cust:') AS cust_receipt \gset
SELECT :'receipt'::jsonb - 'audit_id' AS receipt;
SELECT event_crypto.detokenize(:'alice_token') IS NULL AS email_token_gone, event_crypto.detokenize(:'alice_opaque') IS NULL AS opaque_token_gone;
SELECT :'cust_receipt'::jsonb - 'audit_id' - 'tables' AS receipt;
-- nothing of event_crypto's names alice any more, in any table or column (bob, who was not forgotten, is found:
-- the search works)
SELECT table_name, column_name FROM mentions('alice@example.com') ORDER BY 1, 2;
SELECT table_name, column_name FROM mentions('alice') ORDER BY 1, 2;
SELECT table_name, column_name FROM mentions('bob@example.com') ORDER BY 1, 2;
-- what is kept instead: the rows of her key ids under their digests (shredded, no key material), her usage counts
-- under the same digests, audit rows naming her by digest
SELECT CASE key_id WHEN event_crypto.key_id_digest('subject:alice@example.com') THEN 'digest(subject:alice@example.com)'
                   WHEN event_crypto.key_id_digest('cust:alice@example.com') THEN 'digest(cust:alice@example.com)'
                   ELSE key_id END AS key_id, version, status, wrapped_key IS NULL AS no_material
FROM event_crypto.keys WHERE key_id NOT LIKE '%bob%' AND key_id <> 'f:index' ORDER BY 1, 2;
SELECT length(key_id) AS digest_length, left(key_id, 5) = E'\x1Akd1:' AS marked, count(*) AS usage_rows
FROM event_crypto.key_usage WHERE key_id = event_crypto.key_id_digest('subject:alice@example.com') GROUP BY 1, 2;
SELECT action, count(*) FROM event_crypto.audit_log
WHERE subject = event_crypto.key_id_digest('subject:alice@example.com')
   OR key_ids && ARRAY[event_crypto.key_id_digest('subject:alice@example.com'), event_crypto.key_id_digest('cust:alice@example.com')]
GROUP BY 1 ORDER BY 1;
SELECT runs, last_result::text LIKE '%alice%' AS names_alice, jsonb_path_exists(last_result, '$[*].detail.skipped_keys.*') AS lists_skipped
FROM event_crypto.stats_maintenance;
-- a digest is never a key id: nothing can be created, rotated or shredded under one
SELECT event_crypto.create_key(event_crypto.key_id_digest('subject:alice@example.com'));       -- 22023
SELECT event_crypto.shred_key(event_crypto.key_id_digest('subject:alice@example.com'));        -- 22023

-- Her envelopes read as shredded; she is refused, and the key id cannot be made again (the same errors as before)
SELECT subject, payload FROM f_events_decrypted ORDER BY id;
INSERT INTO f_events (subject, payload) VALUES ('alice@example.com', '{"email": "again@example.com"}');   -- 23514
\set VERBOSITY default
INSERT INTO f_events (subject, payload) VALUES ('alice@example.com', '{"email": "again@example.com"}');
\set VERBOSITY sqlstate
SELECT event_crypto.create_key('subject:alice@example.com');                  -- 55000
SELECT event_crypto.rotate_key('subject:alice@example.com');                  -- 55000
SELECT event_crypto.shred_key('subject:alice@example.com') AS shredded_now;   -- 0: nothing left
SELECT event_crypto.retire_key_version('subject:alice@example.com', 2)->'already_destroyed' AS already;
SELECT event_crypto.encrypt_value('1', 'subject:alice@example.com');          -- 42704, as for a key id never made
SELECT event_crypto.decrypt_fields(payload, on_shredded => 'error') FROM f_events WHERE subject = 'alice@example.com';  -- 55000
-- forgetting again is harmless; the receipt says so
SELECT r->'key_ids' AS key_ids, r->'already_forgotten' AS already, r->'tombstones' AS tombstones
FROM event_crypto.forget_subject('alice@example.com', 'subject:') r;
-- as a customer she comes back under the next key generation (its key id names her: she is back, with new data)
INSERT INTO f_orders (customer, payload) VALUES ('alice@example.com', '{"card": "4222"}');
SELECT key_id, version, status FROM event_crypto.key_info WHERE key_id LIKE 'cust:alice%' ORDER BY 1, 2;
SELECT customer, payload FROM f_orders_decrypted ORDER BY id;
SELECT event_crypto.forget_subject('alice@example.com', 'cust:')->'key_ids' AS both_generations;
-- (the new generation's encryption was counted in shared memory before the forget: the count goes to its digest)
SELECT (event_crypto.flush_usage())->'encryptions' AS flushed;
SELECT table_name, column_name FROM mentions('alice') ORDER BY 1, 2;
SELECT encryptions FROM event_crypto.key_usage WHERE key_id = event_crypto.key_id_digest('cust:alice@example.com#2');

-- The receipt: verified with the subject id it was given for, under its kind; not with another subject, another
-- kind, or an altered receipt. was_forgotten() recomputes the digest.
SELECT event_crypto.verify_forget_receipt('alice@example.com', :'receipt') AS alice,
       event_crypto.verify_forget_receipt('Alice@example.com', :'receipt') AS other_case,
       event_crypto.verify_forget_receipt('bob@example.com', :'receipt') AS bob,
       event_crypto.verify_forget_receipt('alice@example.com', jsonb_set(:'receipt', '{key_prefix}', '"cust:"')) AS other_kind,
       event_crypto.verify_forget_receipt('alice@example.com', jsonb_set(:'receipt', '{versions_destroyed}', '5')) AS altered,
       event_crypto.verify_forget_receipt('alice@example.com', jsonb_set(:'receipt', '{key_ids}', '["subject:bob@example.com"]')) AS other_keys,
       event_crypto.verify_forget_receipt('alice@example.com', :'cust_receipt') AS cust;
SELECT event_crypto.was_forgotten('alice@example.com', 'subject:') AS alice, event_crypto.was_forgotten('alice@example.com', 'cust:') AS customer,
       event_crypto.was_forgotten('bob@example.com', 'subject:') AS bob, event_crypto.was_forgotten('carol@example.com', 'subject:') AS never_seen;
-- an audit row changed after it was sealed makes its receipt fail
BEGIN;
UPDATE event_crypto.audit_log SET at = at + interval '1 second' WHERE id = (:'receipt'::jsonb->>'audit_id')::bigint;
SELECT event_crypto.verify_forget_receipt('alice@example.com', :'receipt') AS after_tampering;
ROLLBACK;
SELECT ok, problem FROM event_crypto.verify_audit_log();

-- A subject forgotten before its first event: a tombstone, under its digest, refuses it too.
SELECT (event_crypto.forget_subject('carol@example.com', 'subject:'))->'tombstones' AS tombstones;
INSERT INTO f_events (subject, payload) VALUES ('carol@example.com', '{"email": "c@example.com"}');   -- 23514
SELECT event_crypto.was_forgotten('carol@example.com', 'subject:') AS carol;
SELECT table_name, column_name FROM mentions('carol') ORDER BY 1, 2;

-- The digest secret: one per catalog, wrapped by the master key like a data key, dumped with the catalog; only the
-- superuser reads it, the admin role computes digests.
SELECT name, octet_length(wrapped_secret) AS wrapped_length, master_key_id = event_crypto.master_key_id() AS current_master
FROM event_crypto.catalog_secrets;
SELECT c.relname FROM pg_extension e, unnest(e.extconfig) AS t(oid) JOIN pg_class c ON c.oid = t.oid
WHERE e.extname = 'event_crypto' AND c.relname = 'catalog_secrets';
SELECT * FROM event_crypto.rewrap_keys_batch();          -- nothing to move: the secret is under the active key
SELECT key_id_digest = event_crypto.key_id_digest('subject:alice@example.com') AS stable
FROM (SELECT event_crypto.key_id_digest('subject:alice@example.com') AS key_id_digest) d;
SELECT event_crypto.key_id_digest(NULL);                 -- 22004
SELECT event_crypto.was_forgotten(NULL);                 -- 22004
SELECT event_crypto.was_forgotten('');                   -- 22023
CREATE ROLE f_admin IN ROLE event_crypto_admin;
SET ROLE f_admin;
SELECT event_crypto.key_id_digest('subject:alice@example.com') IS NOT NULL AS admin_computes;
SELECT count(*) FROM event_crypto.catalog_secrets;       -- 42501
RESET ROLE;
DROP ROLE f_admin;

\c event_crypto_regress
DROP DATABASE ec_forgotten;
