-- Queries about what is installed, and what `mpesa-sync migrate` left behind.

-- name: schema_installed
-- True once the rule and the event log exist (0002 and later): what verify
-- and the relay read, the same in every version of the sync core.
SELECT to_regclass('mpesa_sync.bar_status_v1') IS NOT NULL
   AND to_regclass('mpesa_sync.status_events') IS NOT NULL;

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
