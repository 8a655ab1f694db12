-- Consumers outside the database (issue 16): registration, who may fetch which keys, what a fetch returns for
-- live, rotated, disabled, shredded, forgotten, unknown and withheld keys, the limits, revocation and the audit
-- rows. (That a grant opens to the right key is checked by the pg_test consumer_grants_open_to_the_data_key and
-- end to end by tests/consumers.sh.)
\set VERBOSITY sqlstate
BEGIN;
CREATE ROLE c_app IN ROLE event_crypto_consumer;
CREATE ROLE c_other IN ROLE event_crypto_consumer;
CREATE ROLE c_admin IN ROLE event_crypto_admin;
SELECT event_crypto.create_key('c:alice');
SELECT event_crypto.create_key('c:bob');
SELECT event_crypto.create_key('other:carol');
SELECT event_crypto.rotate_key('c:alice');
SET ROLE c_admin;
SELECT event_crypto.create_consumer('analytics', 'ecpk1:hUVCOQoK2vS0x5jsd9bR6rGKTsXLR9b8xgT35aMVcRE=',
                                    key_pattern => 'c:%', ttl => '2 minutes', role => 'c_app');
SELECT event_crypto.create_consumer('everything', 'ecpk1:pVtAGf/kCa8UtNk8BtmJvyirPo3UX0Mi+zjNibb6VmA=', role => 'c_other');
SELECT name, role, public_key, key_pattern, ttl, created_by, revoked_at FROM event_crypto.consumers ORDER BY name;
RESET ROLE;

-- bad registrations
SAVEPOINT s;
SELECT event_crypto.create_consumer('analytics', 'ecpk1:hUVCOQoK2vS0x5jsd9bR6rGKTsXLR9b8xgT35aMVcRE=');
ROLLBACK TO s;
SELECT event_crypto.create_consumer('x', 'hUVCOQoK2vS0x5jsd9bR6rGKTsXLR9b8xgT35aMVcRE=');
ROLLBACK TO s;
SELECT event_crypto.create_consumer('x', 'ecpk1:AAAA');
ROLLBACK TO s;
SELECT event_crypto.create_consumer('x', 'ecpk1:hUVCOQoK2vS0x5jsd9bR6rGKTsXLR9b8xgT35aMVcRE=', ttl => '0 seconds');
ROLLBACK TO s;
SELECT event_crypto.create_consumer('x', 'ecpk1:hUVCOQoK2vS0x5jsd9bR6rGKTsXLR9b8xgT35aMVcRE=', ttl => '2 days');
ROLLBACK TO s;
SELECT event_crypto.create_consumer('x', 'ecpk1:hUVCOQoK2vS0x5jsd9bR6rGKTsXLR9b8xgT35aMVcRE=', key_pattern => '');
ROLLBACK TO s;
SELECT event_crypto.create_consumer('x', 'ecpk1:hUVCOQoK2vS0x5jsd9bR6rGKTsXLR9b8xgT35aMVcRE=', role => 'no_such_role');
ROLLBACK TO s;
SELECT event_crypto.create_consumer(E'x\ny', 'ecpk1:hUVCOQoK2vS0x5jsd9bR6rGKTsXLR9b8xgT35aMVcRE=');
ROLLBACK TO s;
SELECT event_crypto.create_consumer(repeat('x', 64), 'ecpk1:hUVCOQoK2vS0x5jsd9bR6rGKTsXLR9b8xgT35aMVcRE=');
ROLLBACK TO s;
SELECT event_crypto.create_consumer(NULL, 'ecpk1:hUVCOQoK2vS0x5jsd9bR6rGKTsXLR9b8xgT35aMVcRE=');
ROLLBACK TO s;
SELECT event_crypto.create_consumer('x', NULL);
ROLLBACK TO s;
-- only the admin registers consumers: a consumer cannot register one or widen its own pattern
SET ROLE c_app;
SELECT event_crypto.create_consumer('mine', 'ecpk1:hUVCOQoK2vS0x5jsd9bR6rGKTsXLR9b8xgT35aMVcRE=');
ROLLBACK TO s;
SET ROLE c_app;
UPDATE event_crypto.consumer_registry SET key_pattern = '%';
ROLLBACK TO s;
SET ROLE c_admin;
UPDATE event_crypto.consumer_registry SET key_pattern = '%';
ROLLBACK TO s;
RESET ROLE;

-- a consumer's fetch: in request order, one row each
SELECT (event_crypto.retire_key_version('c:alice', 1)) IS NOT NULL AS retired;
SELECT event_crypto.create_key('c:gone');
SELECT event_crypto.shred_key('c:gone');
SELECT event_crypto.create_key('c:forgotten');
SET ROLE c_app;
SELECT r.key_id, r.version, r.purpose, r.status, r.algorithm, length(r.grant_data) AS grant_length,
       r.expires_at - r.issued_at AS lifetime, r.issued_at <= now() + interval '1 minute' AS issued_now
FROM event_crypto.consumer_keys('analytics', '[
    {"key_id": "c:alice", "version": 2},
    {"key_id": "c:alice", "version": 1},
    {"key_id": "c:alice", "version": 3},
    {"key_id": "c:bob", "version": 1},
    {"key_id": "c:bob", "purpose": "blind_index"},
    {"key_id": "c:gone", "version": 1},
    {"key_id": "c:nobody", "version": 1}
]') WITH ORDINALITY r ORDER BY r.ordinality;
RESET ROLE;
-- by handle, as a format 2 envelope names the key: a key outside the pattern is withheld, its key id not shown
SELECT lpad(to_hex(handle), 16, '0') AS bob_handle FROM event_crypto.keys WHERE key_id = 'c:bob' AND version = 1 \gset
SELECT lpad(to_hex(handle), 16, '0') AS carol_handle FROM event_crypto.keys WHERE key_id = 'other:carol' AND version = 1 \gset
SET ROLE c_app;
SELECT r.key_id, r.handle = :'bob_handle' AS bob, r.handle = :'carol_handle' AS carol, r.status, length(r.grant_data)
FROM event_crypto.consumer_keys('analytics', format('[{"handle": "%s", "version": 1}, {"handle": "%s", "version": 1},
    {"handle": "0000000000000001", "version": 1}]', :'bob_handle', :'carol_handle')::jsonb) WITH ORDINALITY r
ORDER BY r.ordinality;
-- a key id asked for by name outside the pattern fails the whole call
SAVEPOINT s;
SELECT count(*) FROM event_crypto.consumer_keys('analytics', '[{"key_id": "c:bob", "version": 1}, {"key_id": "other:carol", "version": 1}]');
ROLLBACK TO s;
-- another role's consumer, an unknown consumer
SELECT count(*) FROM event_crypto.consumer_keys('everything', '[]');
ROLLBACK TO s;
SELECT count(*) FROM event_crypto.consumer_keys('nobody', '[]');
ROLLBACK TO s;
-- malformed requests
SELECT count(*) FROM event_crypto.consumer_keys('analytics', '{"key_id": "c:bob"}');
ROLLBACK TO s;
SELECT count(*) FROM event_crypto.consumer_keys('analytics', '[{"key_id": "c:bob"}]');
ROLLBACK TO s;
SELECT count(*) FROM event_crypto.consumer_keys('analytics', '[{"key_id": "c:bob", "version": 0}]');
ROLLBACK TO s;
SELECT count(*) FROM event_crypto.consumer_keys('analytics', '[{"key_id": "c:bob", "version": 1.5}]');
ROLLBACK TO s;
SELECT count(*) FROM event_crypto.consumer_keys('analytics', '[{"key_id": "c:bob", "handle": "0000000000000001", "version": 1}]');
ROLLBACK TO s;
SELECT count(*) FROM event_crypto.consumer_keys('analytics', '[{"handle": "00000000000000000", "version": 1}]');
ROLLBACK TO s;
SELECT count(*) FROM event_crypto.consumer_keys('analytics', '[{"handle": "0000000000000000", "version": 1}]');
ROLLBACK TO s;
SELECT count(*) FROM event_crypto.consumer_keys('analytics', '[{"handle": "ABCDEF0000000000", "version": 1}]');
ROLLBACK TO s;
SELECT count(*) FROM event_crypto.consumer_keys('analytics', '[{"key_id": "c:bob", "version": 1, "purpose": "all"}]');
ROLLBACK TO s;
SELECT count(*) FROM event_crypto.consumer_keys('analytics', '[{"key_id": "c:bob", "version": 1, "extra": 1}]');
ROLLBACK TO s;
SELECT count(*) FROM event_crypto.consumer_keys('analytics', '[{"key_id": "", "version": 1}]');
ROLLBACK TO s;
SELECT count(*) FROM event_crypto.consumer_keys('analytics', '[1]');
ROLLBACK TO s;
SELECT count(*) FROM event_crypto.consumer_keys('analytics', NULL);
ROLLBACK TO s;
SELECT count(*) FROM event_crypto.consumer_keys(NULL, '[]');
ROLLBACK TO s;
-- at most 10,000 keys a call
SELECT count(*) FROM event_crypto.consumer_keys('analytics',
    (SELECT jsonb_agg(jsonb_build_object('key_id', 'c:bob', 'version', 1)) FROM generate_series(1, 10001)));
ROLLBACK TO s;
SELECT count(*), count(DISTINCT grant_data) FROM event_crypto.consumer_keys('analytics',
    (SELECT jsonb_agg(jsonb_build_object('key_id', 'c:bob', 'version', 1)) FROM generate_series(1, 200)));
RESET ROLE;
-- other roles may not call it at all
SET ROLE c_admin;
SELECT count(*) FROM event_crypto.consumer_keys('analytics', '[]');
ROLLBACK TO s;
RESET ROLE;

-- a forgotten subject's key reads as shredded from then on; so does a whole shredded key asked for by handle
SELECT lpad(to_hex(handle), 16, '0') AS forgotten_handle FROM event_crypto.keys WHERE key_id = 'c:forgotten' AND version = 1 \gset
SELECT event_crypto.shred_key('c:forgotten');
SET ROLE c_app;
SELECT r.key_id, r.status, r.grant_data IS NULL AS no_grant
FROM event_crypto.consumer_keys('analytics', format('[{"key_id": "c:forgotten", "version": 1}, {"handle": "%s", "version": 1}]',
     :'forgotten_handle')::jsonb) WITH ORDINALITY r ORDER BY r.ordinality;
RESET ROLE;

-- revocation: refused from then on, for good; revoking again says false
SET ROLE c_admin;
SELECT event_crypto.revoke_consumer('analytics');
SELECT event_crypto.revoke_consumer('analytics');
SELECT name, revoked_by, revoked_at IS NOT NULL AS revoked FROM event_crypto.consumers ORDER BY name;
SAVEPOINT s;
SELECT event_crypto.revoke_consumer('nobody');
ROLLBACK TO s;
SELECT event_crypto.create_consumer('analytics', 'ecpk1:hUVCOQoK2vS0x5jsd9bR6rGKTsXLR9b8xgT35aMVcRE=', role => 'c_app');
ROLLBACK TO s;
RESET ROLE;
SET ROLE c_app;
SELECT count(*) FROM event_crypto.consumer_keys('analytics', '[{"key_id": "c:bob", "version": 1}]');
ROLLBACK TO s;
RESET ROLE;

-- the audit log: every call, its counts, never a key id
SELECT action, actor, details - 'role' AS details, key_ids
FROM event_crypto.audit_log WHERE action IN ('create_consumer', 'consumer_keys', 'revoke_consumer') ORDER BY id;
ROLLBACK;
