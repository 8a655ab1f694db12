\echo '--- event_crypto demo'
\set ECHO queries
CREATE EXTENSION event_crypto;

-- Keys: one per tenant (AES-256-GCM by default), one per subject.
SELECT event_crypto.create_key('tenant-42');
SELECT event_crypto.create_key('subject:alice', 'chacha20-poly1305');
SELECT event_crypto.create_key('subject:bob');

CREATE TABLE events (id bigserial PRIMARY KEY, subject text, payload jsonb, email_idx text);

-- Encrypt the sensitive fields of each event under its subject's key; index the email for lookups.
INSERT INTO events (subject, payload, email_idx)
SELECT s, event_crypto.encrypt_fields(p, ARRAY['email', 'address.street', 'cards[*].number'], 'subject:' || s),
       event_crypto.blind_index(p->>'email', 'tenant-42', 'lower')
FROM (VALUES
  ('alice', '{"type":"CustomerCreated","email":"Alice@Example.io","address":{"street":"1 Main","city":"Springfield"},"amount":12.5}'::jsonb),
  ('bob',   '{"type":"CustomerCreated","email":"bob@example.io","address":{"street":"2 Elm","city":"Shelbyville"},"cards":[{"number":"4111111111111111","exp":"12/29"}]}'::jsonb)
) AS v(s, p);

\echo '--- stored: sensitive fields are envelopes, the rest is untouched'
SELECT id, subject, jsonb_pretty(payload) AS stored FROM events;

\echo '--- decrypted: the original documents, types preserved'
SELECT id, event_crypto.decrypt_fields(payload) AS decrypted FROM events;

\echo '--- equality lookup on the encrypted email through the blind index'
SELECT id, subject FROM events WHERE email_idx = event_crypto.blind_index('alice@example.io', 'tenant-42', 'lower');

\echo '--- rotation: new encryptions use v2, v1 still decrypts'
SELECT event_crypto.rotate_key('subject:bob');
SELECT event_crypto.decrypt_fields(payload) -> 'cards' AS bob_cards FROM events WHERE subject = 'bob';

\echo '--- forget alice: shred her key'
SELECT event_crypto.shred_key('subject:alice');
SELECT id, subject, event_crypto.decrypt_fields(payload) AS after_shred FROM events;
-- (a key id shredded whole is kept under its keyed digest: its tombstone, which no key id can be)
SELECT CASE WHEN key_id = event_crypto.key_id_digest('subject:alice') THEN 'digest of subject:alice' ELSE key_id END AS key_id,
       version, algorithm, status, has_key_material FROM event_crypto.key_info ORDER BY key_id, version;

\echo '--- a forgotten subject cannot silently get new data (error expected)'
\set ON_ERROR_STOP 0
SELECT event_crypto.encrypt_fields('{"email":"again@example.io"}', ARRAY['email'], 'subject:alice');
\set ON_ERROR_STOP 1

\echo '--- protecting an event table: fields are encrypted on insert, whatever inserts them'
CREATE TABLE stream_events (id bigserial PRIMARY KEY, stream_id uuid, subject_id text, type text,
                            payload jsonb, email_idx text, created_at timestamptz DEFAULT now());
SELECT decrypted_view FROM event_crypto.protect('stream_events', 'payload',
         fields => ARRAY['email', 'phone', 'address.street', 'cards[*].number'],
         key_column => 'subject_id', context_column => 'stream_id');
SELECT target_column FROM event_crypto.add_blind_index('stream_events', 'payload', 'email', 'email_idx', 'tenant-42', 'lower');
CREATE INDEX ON stream_events (email_idx);
INSERT INTO stream_events (stream_id, subject_id, type, payload) VALUES
  ('7d1e4a1c-0000-4000-8000-000000000001', 'carol', 'CustomerCreated', '{"email":"Carol@Example.io","phone":"+1 555 0100","address":{"street":"3 Oak","city":"Ogdenville"}}'),
  ('7d1e4a1c-0000-4000-8000-000000000002', 'dave',  'CustomerCreated', '{"email":"dave@example.io","cards":[{"number":"5500000000000004"}]}');
SELECT id, subject_id, payload->>'email' AS stored_email, email_idx IS NOT NULL AS indexed FROM stream_events;
SELECT key_id FROM event_crypto.key_info WHERE key_id IN ('subject:carol', 'subject:dave');
SELECT id, subject_id, payload FROM stream_events_decrypted;
SELECT id FROM stream_events WHERE email_idx = event_crypto.blind_index('carol@example.io', 'tenant-42', 'lower');

\echo '--- forget carol: key shredded, index values cleared, audited (by digest: no table of event_crypto names her now)'
SELECT event_crypto.forget_subject('carol') AS receipt \gset
SELECT jsonb_pretty(:'receipt');
SELECT id, subject_id, payload, email_idx FROM stream_events_decrypted;
SELECT action, subject = event_crypto.key_id_digest('subject:carol') AS about_carol, cardinality(key_ids) AS key_ids
FROM event_crypto.audit_log ORDER BY id;
SELECT event_crypto.verify_forget_receipt('carol', :'receipt') AS receipt_verifies, event_crypto.was_forgotten('carol') AS carol_forgotten;
