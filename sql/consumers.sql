-- Consumers outside the database (issue 16, docs/consumers.md): programs that decrypt published events with data
-- keys event_crypto.consumer_keys() hands them, each sealed (HPKE, RFC 9180) to the consumer's X25519 public key.
-- A consumer belongs to one role (the role that may fetch its keys), may fetch only the key ids its LIKE pattern
-- matches, and keeps each key for at most its ttl: how long a shred takes to reach a cooperating consumer.
-- Written only by create_consumer() and revoke_consumer() (as the catalog owner); a revoked consumer's row stays,
-- and its name is never registered again.
CREATE TABLE event_crypto.consumer_registry (
    name        text        PRIMARY KEY
                            CONSTRAINT consumer_registry_name_check
                            CHECK (pg_catalog.octet_length(name) BETWEEN 1 AND 63 AND name OPERATOR(pg_catalog.!~) '[[:cntrl:]]'),
    role        regrole     NOT NULL,
    public_key  bytea       NOT NULL CONSTRAINT consumer_registry_public_key_check CHECK (pg_catalog.octet_length(public_key) = 32),
    key_pattern text        NOT NULL CONSTRAINT consumer_registry_key_pattern_check CHECK (pg_catalog.octet_length(key_pattern) BETWEEN 1 AND 255),
    ttl         interval    NOT NULL
                            CONSTRAINT consumer_registry_ttl_check
                            CHECK (ttl OPERATOR(pg_catalog.>=) '1 second'::pg_catalog.interval AND ttl OPERATOR(pg_catalog.<=) '1 day'::pg_catalog.interval),
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by  name        NOT NULL DEFAULT CURRENT_USER,
    revoked_at  timestamptz,
    revoked_by  name,
    CONSTRAINT consumer_registry_revoked CHECK ((revoked_at IS NULL) = (revoked_by IS NULL))
);

COMMENT ON TABLE event_crypto.consumer_registry IS
    'Consumers that decrypt outside the database with data keys sealed to their X25519 public key '
    '(event_crypto.consumer_keys). Written by create_consumer() and revoke_consumer() only.';

SELECT pg_catalog.pg_extension_config_dump('event_crypto.consumer_registry', '');

CREATE VIEW event_crypto.consumers AS
    SELECT c.name, c.role, 'ecpk1:' OPERATOR(pg_catalog.||) pg_catalog.encode(c.public_key, 'base64') AS public_key,
           c.key_pattern, c.ttl, c.created_at, c.created_by, c.revoked_at, c.revoked_by
      FROM event_crypto.consumer_registry c;

COMMENT ON VIEW event_crypto.consumers IS
    'Registered consumers; public_key in the text form create_consumer() takes and event-crypto keygen prints.';
