-- Runs first: installs the extension once for the whole regress database.
CREATE EXTENSION event_crypto;
SELECT extname, extrelocatable, nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE extname = 'event_crypto';
SELECT length(event_crypto.master_key_id()) AS master_key_id_length;
-- event_crypto keeps a key id that could outlive a shred (the catalog rows of a key id shredded whole, every key id
-- and subject in the audit log) as a keyed digest, which differs from database to database: the files show such a
-- value by the key id it stands for, 'digest(<key id>)', among the key ids they name.
CREATE FUNCTION public.named_key(k text, VARIADIC names text[]) RETURNS text
    LANGUAGE sql STABLE
AS $$ SELECT coalesce((SELECT 'digest(' || n || ')' FROM pg_catalog.unnest(names) n
                       WHERE event_crypto.key_id_digest(n) = k LIMIT 1), k) $$;
CREATE FUNCTION public.named_keys(ks text[], VARIADIC names text[]) RETURNS text[]
    LANGUAGE sql STABLE
AS $$ SELECT coalesce(pg_catalog.array_agg(public.named_key(u.k, VARIADIC names) ORDER BY u.o), '{}')
      FROM pg_catalog.unnest(ks) WITH ORDINALITY AS u(k, o) $$;
