-- The security lints of Supabase's linter (supabase/splinter at 55db5b1, lints/00NN_*.sql)
-- that can concern what mpesa-sync creates, written out again for our tests
-- from their documented rules. One row per finding: (lint, level, object).
--
-- The exposed schemas come from pgrst.db_schemas, as splinter reads them (a
-- test sets it for the session). Schemas Supabase manages itself, and
-- objects that belong to an extension, are not linted, as in splinter.
-- Stricter than splinter in one place: 0026/0027 (what pg_graphql shows
-- anon and authenticated) are checked whether or not pg_graphql is
-- installed, since every Supabase project has it.

WITH exposed AS (
    SELECT trim(s) AS nspname
    FROM unnest(string_to_array(current_setting('pgrst.db_schemas', true), ',')) AS s
),
ours AS (  -- every schema a user's objects can be in
    SELECT n.oid, n.nspname, n.nspname IN (SELECT nspname FROM exposed) AS is_exposed
    FROM pg_catalog.pg_namespace AS n
    WHERE n.nspname NOT IN (
              'auth', 'cron', 'extensions', 'graphql', 'graphql_public', 'information_schema',
              'net', 'pgbouncer', 'pg_catalog', 'pg_toast', 'pgsodium', 'realtime', 'storage',
              'supabase_functions', 'supabase_migrations', 'vault')
      AND n.nspname NOT LIKE 'pg_temp%'
      AND n.nspname NOT LIKE 'pg_toast_temp%'
),
rels AS (
    SELECT c.oid, c.relname, c.relkind, c.relrowsecurity, c.reloptions, o.nspname, o.is_exposed,
           pg_catalog.has_table_privilege('anon', c.oid, 'SELECT') AS anon_reads,
           pg_catalog.has_table_privilege('authenticated', c.oid, 'SELECT') AS authenticated_reads
    FROM pg_catalog.pg_class AS c
    JOIN ours AS o ON o.oid = c.relnamespace
    WHERE NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_depend AS d WHERE d.objid = c.oid AND d.deptype = 'e'
    )
),
funcs AS (
    SELECT p.oid, p.proname, p.prosecdef, p.proconfig, o.nspname, o.is_exposed,
           pg_catalog.has_function_privilege('anon', p.oid, 'EXECUTE') AS anon_calls,
           pg_catalog.has_function_privilege('authenticated', p.oid, 'EXECUTE') AS authenticated_calls
    FROM pg_catalog.pg_proc AS p
    JOIN ours AS o ON o.oid = p.pronamespace
    WHERE NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_depend AS d WHERE d.objid = p.oid AND d.deptype = 'e'
    )
)
-- 0007: policies on a table whose RLS is off
SELECT '0007_policy_exists_rls_disabled' AS lint, 'ERROR' AS level, nspname || '.' || relname AS object
FROM rels
WHERE relkind = 'r' AND NOT relrowsecurity
  AND EXISTS (SELECT 1 FROM pg_catalog.pg_policy AS p WHERE p.polrelid = rels.oid)
UNION ALL
-- 0008: RLS on, no policy (INFO, but a SECURITY finding)
SELECT '0008_rls_enabled_no_policy', 'INFO', nspname || '.' || relname
FROM rels
WHERE relkind = 'r' AND relrowsecurity
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy AS p WHERE p.polrelid = rels.oid)
UNION ALL
-- 0010: a view that runs with its owner's rights, readable by the API roles, exposed
SELECT '0010_security_definer_view', 'ERROR', nspname || '.' || relname
FROM rels
WHERE relkind = 'v' AND is_exposed AND (anon_reads OR authenticated_reads)
  AND NOT coalesce(lower(reloptions::text)::text[], '{}') && ARRAY[
      'security_invoker=1', 'security_invoker=true', 'security_invoker=yes', 'security_invoker=on']
UNION ALL
-- 0011: a function without a pinned search_path
SELECT '0011_function_search_path_mutable', 'WARN', nspname || '.' || proname
FROM funcs
WHERE NOT EXISTS (SELECT 1 FROM unnest(coalesce(proconfig, '{}')) AS c WHERE c LIKE 'search_path=%')
UNION ALL
-- 0013: an exposed table the API roles can read, with RLS off
SELECT '0013_rls_disabled_in_public', 'ERROR', nspname || '.' || relname
FROM rels
WHERE relkind = 'r' AND is_exposed AND NOT relrowsecurity AND (anon_reads OR authenticated_reads)
UNION ALL
-- 0014: an extension in public
SELECT '0014_extension_in_public', 'WARN', e.extname
FROM pg_catalog.pg_extension AS e
WHERE e.extname <> 'plpgsql' AND e.extnamespace = 'public'::regnamespace
UNION ALL
-- 0016 and 0017: a materialized view or a foreign table the API serves
SELECT CASE relkind WHEN 'm' THEN '0016_materialized_view_in_api'
                    ELSE '0017_foreign_table_in_api' END,
       'WARN', nspname || '.' || relname
FROM rels
WHERE relkind IN ('m', 'f') AND is_exposed AND (anon_reads OR authenticated_reads)
UNION ALL
-- 0026 and 0027: what pg_graphql shows anyone with the anon key, or any user
SELECT CASE WHEN r.role = 'anon' THEN '0026_pg_graphql_anon_table_exposed'
            ELSE '0027_pg_graphql_authenticated_table_exposed' END,
       'WARN', rels.nspname || '.' || rels.relname
FROM rels
CROSS JOIN (VALUES ('anon'), ('authenticated')) AS r (role)
WHERE rels.relkind IN ('r', 'v', 'm', 'f')
  AND EXISTS (
      SELECT 1 FROM pg_catalog.pg_attribute AS a
      WHERE a.attrelid = rels.oid AND a.attnum > 0 AND NOT a.attisdropped
        AND pg_catalog.has_column_privilege(r.role, rels.oid, a.attnum, 'SELECT'))
UNION ALL
-- 0028 and 0029: a SECURITY DEFINER function in an exposed schema that
-- anon, or authenticated, may call
SELECT CASE WHEN r.role = 'anon' THEN '0028_anon_security_definer_function_executable'
            ELSE '0029_authenticated_security_definer_function_executable' END,
       'WARN', funcs.nspname || '.' || funcs.proname
FROM funcs
CROSS JOIN (VALUES ('anon'), ('authenticated')) AS r (role)
WHERE funcs.prosecdef AND funcs.is_exposed
  AND CASE WHEN r.role = 'anon' THEN funcs.anon_calls ELSE funcs.authenticated_calls END
ORDER BY 1, 3;
