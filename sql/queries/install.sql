-- Queries about what is installed, and what `mpesa-sync migrate` left behind.

-- name: schema_installed
-- What is installed: the rule and the event log, which verify and the relay
-- read, the same in every version of the sync core (0002 and later); and
-- whether 0005 has given the event log its identity (what the relay, prune
-- and status need).
SELECT to_regclass('mpesa_sync.bar_status_v1') IS NOT NULL
       AND to_regclass('mpesa_sync.status_events') IS NOT NULL AS core,
       to_regclass('mpesa_sync.event_log_v1') IS NOT NULL AS event_log;

-- name: sync_core_v2_installed
-- True once 0004 has installed the v2 sync core, which reconcile calls.
SELECT to_regprocedure('mpesa_sync.fix_bars_v2(uuid[])') IS NOT NULL;

-- name: host_tables_present
SELECT to_regclass('public.bars') IS NOT NULL AS bars,
       to_regclass('public.mpesa_credentials') IS NOT NULL AS credentials;

-- name: alerts_since
-- Alerts raised after the given id, for reporting what a migrate left behind.
SELECT id, kind, bar_id, detail
FROM mpesa_sync.alerts
WHERE id > %(after)s
ORDER BY id;

-- name: last_alert_id
SELECT coalesce(max(id), 0) FROM mpesa_sync.alerts;

-- name: host_columns
-- Every column of the host's tables that mpesa-sync reads or writes, with the
-- types it accepts (docs/install.md, "Host requirements"): whether its table
-- exists, whether the column exists, and whether it has one of those types.
-- `migrate` refuses a host that lacks one; `status` reports them.
SELECT r.table_name,
       r.column_name,
       r.types[1] AS data_type,
       c.oid IS NOT NULL AS table_present,
       a.attnum IS NOT NULL AS column_present,
       coalesce(format_type(a.atttypid, NULL) = ANY (r.types), false) AS present
FROM (VALUES
    (1, 'bars', 'id', ARRAY['uuid']),
    (2, 'bars', 'mpesa_enabled', ARRAY['boolean']),
    (3, 'mpesa_credentials', 'id', ARRAY['uuid']),
    (4, 'mpesa_credentials', 'tenant_id', ARRAY['uuid']),
    (5, 'mpesa_credentials', 'environment', ARRAY['text', 'character varying']),
    (6, 'mpesa_credentials', 'business_shortcode', ARRAY['text', 'character varying']),
    (7, 'mpesa_credentials', 'consumer_key_enc', ARRAY['bytea']),
    (8, 'mpesa_credentials', 'consumer_secret_enc', ARRAY['bytea']),
    (9, 'mpesa_credentials', 'passkey_enc', ARRAY['bytea']),
    (10, 'mpesa_credentials', 'is_active', ARRAY['boolean'])
) AS r (n, table_name, column_name, types)
LEFT JOIN pg_catalog.pg_class AS c
    ON c.oid = to_regclass('public.' || quote_ident(r.table_name))
LEFT JOIN pg_catalog.pg_attribute AS a
    ON a.attrelid = c.oid
   AND a.attname = r.column_name
   AND a.attnum > 0
   AND NOT a.attisdropped
ORDER BY r.n;

-- name: event_log_status
-- The event log for `status`: mpesa_sync.event_log_v1 and a count of the
-- events kept (a scan of the table).
SELECT s.generation, s.pruned_through, s.oldest_event_id, s.newest_event_id,
       (SELECT count(*) FROM mpesa_sync.status_events) AS events
FROM mpesa_sync.event_log_v1 AS s;

-- name: reconcile_events_after
-- How many bars an install fixed: its fix_all_v1 writes one 'reconcile'
-- event per bar, and migrate holds the reconcile lock (locks.sql) so that no
-- `mpesa-sync reconcile` adds any meanwhile.
SELECT count(*)
FROM mpesa_sync.status_events AS e
WHERE e.event_id > %(after)s
  AND e.source = 'reconcile';
