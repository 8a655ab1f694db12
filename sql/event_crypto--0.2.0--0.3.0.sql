-- event_crypto 0.2.0 -> 0.3.0. Every object ends as a fresh 0.3.0 install makes it (tests/upgrade.sh compares them
-- for an upgrade from every release); every row of earlier releases stays and decrypts. Changes to SQL objects
-- after 0.2.0 go here, in the order they are made.
\echo Use "ALTER EXTENSION event_crypto UPDATE TO '0.3.0'" to load this file. \quit

-- ---------------------------------------------------------------------------------------------------------------
-- Envelope format 2 (issue 15): key handles
-- ---------------------------------------------------------------------------------------------------------------

-- keys.handle: what envelopes of format 2 name a key id by. Every existing key id, shredded ones (tombstones)
-- included, gets a random handle, the same in each of its version rows. The handles come from gen_random_uuid()
-- (PostgreSQL's strong random source, as every key event_crypto makes comes from the operating system's): 32
-- random bits of each of two UUIDs (bytes 0-3 of a version 4 UUID are random), never anything derived from the key
-- id. A key id that draws a handle another one drew (about n^2 / 2^65 for n key ids) or 0 draws again.
ALTER TABLE event_crypto.keys ADD COLUMN handle bigint CONSTRAINT keys_handle_check CHECK (handle <> 0);
DO $handles$
DECLARE
    ids text[];
    handles bigint[];
BEGIN
    LOOP
        -- the key ids without a handle, and those whose handle another key id drew too: a random one each (0, which
        -- is never a handle, stays NULL and draws again)
        SELECT pg_catalog.array_agg(d.key_id),
               pg_catalog.array_agg(NULLIF(('x' OPERATOR(pg_catalog.||) pg_catalog.encode(
                   pg_catalog.substr(pg_catalog.uuid_send(pg_catalog.gen_random_uuid()), 1, 4)
                   OPERATOR(pg_catalog.||) pg_catalog.substr(pg_catalog.uuid_send(pg_catalog.gen_random_uuid()), 1, 4),
                   'hex'))::pg_catalog.bit(64)::pg_catalog.int8, 0))
          INTO ids, handles
          FROM (SELECT DISTINCT x.key_id FROM event_crypto.keys x
                 WHERE x.handle IS NULL
                    OR x.handle OPERATOR(pg_catalog.=) ANY (ARRAY(
                           SELECT y.handle FROM event_crypto.keys y WHERE y.handle IS NOT NULL GROUP BY y.handle
                           HAVING pg_catalog.count(DISTINCT y.key_id) OPERATOR(pg_catalog.>) 1))) d;
        EXIT WHEN ids IS NULL;
        -- (the values are parameters of the UPDATE, not volatile calls in it: the same on every placement of a
        -- Citus reference table)
        UPDATE event_crypto.keys k SET handle = u.handle
          FROM ROWS FROM (pg_catalog.unnest(ids), pg_catalog.unnest(handles)) AS u(key_id, handle)
         WHERE k.key_id OPERATOR(pg_catalog.=) u.key_id;
    END LOOP;
END
$handles$;
ALTER TABLE event_crypto.keys ALTER COLUMN handle SET NOT NULL;
CREATE UNIQUE INDEX keys_handle ON event_crypto.keys (handle) WHERE version = 1;
COMMENT ON TABLE event_crypto.keys IS
    'Data keys, wrapped (AES-256-GCM) by the master key. Shredding overwrites the wrapped bytes with NULL; '
    'autovacuum is set to remove the dead row versions that still hold them promptly. '
    'handle: the random number envelopes of format 2 name the key id by (unique among key ids, never changed).';

CREATE FUNCTION event_crypto."keys_handle"() RETURNS TRIGGER
LANGUAGE c
AS 'MODULE_PATHNAME', 'keys_handle_wrapper';
REVOKE ALL ON FUNCTION event_crypto.keys_handle() FROM PUBLIC;
CREATE TRIGGER keys_handle BEFORE INSERT OR UPDATE OF handle ON event_crypto.keys
    FOR EACH ROW EXECUTE FUNCTION event_crypto.keys_handle();
ALTER TABLE event_crypto.keys ENABLE ALWAYS TRIGGER keys_handle;

-- uses_key_version() reads the key catalog now (the handle of the key id): STABLE, like every function that does.
ALTER FUNCTION event_crypto.uses_key_version(jsonb, text, integer) STABLE;
