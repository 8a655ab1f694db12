-- Everything the extension consists of, one line per detail, without oids: run in a database upgraded to the new
-- release and in one where the new release was installed fresh; the two outputs must be identical.
SET search_path = pg_catalog;
WITH ext AS (SELECT oid, extconfig, extcondition, extversion FROM pg_extension WHERE extname = 'event_crypto'),
members AS (
    SELECT d.classid, d.objid FROM pg_depend d, ext
    WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
),
rels AS (SELECT c.* FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid)
SELECT 'version ' || extversion FROM ext
UNION ALL
SELECT 'config ' || x.rel::regclass::text || ' ' || coalesce(x.cond, '')
FROM ext, unnest(ext.extconfig, ext.extcondition) AS x(rel, cond)
UNION ALL
SELECT 'function ' || p.oid::regprocedure::text
       || ' returns ' || pg_get_function_result(p.oid)
       || ' args ' || pg_get_function_arguments(p.oid)
       || ' language ' || l.lanname || ' volatility ' || p.provolatile::text || ' parallel ' || p.proparallel::text
       || ' strict ' || p.proisstrict || ' definer ' || p.prosecdef || ' kind ' || p.prokind::text
       || ' config ' || coalesce(p.proconfig::text, '')
       || ' source ' || CASE WHEN l.lanname = 'c' THEN p.prosrc ELSE md5(p.prosrc) END
       || ' acl ' || coalesce(p.proacl::text, '')
       || ' comment ' || coalesce(obj_description(p.oid, 'pg_proc'), '')
FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
JOIN pg_language l ON l.oid = p.prolang
UNION ALL
SELECT 'event trigger ' || e.evtname || ' on ' || e.evtevent || ' runs ' || e.evtfoid::regprocedure::text
       || ' enabled ' || e.evtenabled::text || ' tags ' || coalesce(e.evttags::text, '')
FROM pg_event_trigger e JOIN members m ON m.classid = 'pg_event_trigger'::regclass AND m.objid = e.oid
UNION ALL
SELECT 'relation ' || c.oid::regclass::text || ' kind ' || c.relkind::text
       || ' acl ' || coalesce(c.relacl::text, '') || ' options ' || coalesce(c.reloptions::text, '')
       || ' comment ' || coalesce(obj_description(c.oid, 'pg_class'), '')
FROM rels c
UNION ALL
SELECT 'column ' || c.oid::regclass::text || ' #' || row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum)
       || ' ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' not null ' || a.attnotnull
       || ' default ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
FROM rels c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
UNION ALL
SELECT 'constraint ' || r.conrelid::regclass::text || ' ' || r.conname || ' ' || pg_get_constraintdef(r.oid)
FROM pg_constraint r JOIN rels c ON c.oid = r.conrelid
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid)
FROM pg_index i JOIN rels c ON c.oid = i.indrelid
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled ' || t.tgenabled::text
FROM pg_trigger t JOIN rels c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal
UNION ALL
SELECT 'view ' || c.oid::regclass::text || ' ' || pg_get_viewdef(c.oid)
FROM rels c WHERE c.relkind = 'v'
UNION ALL
SELECT 'schema ' || n.nspname || ' acl ' || coalesce(n.nspacl::text, '')
FROM pg_namespace n WHERE n.nspname = 'event_crypto'
ORDER BY 1;
