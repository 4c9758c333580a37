-- Queries about what is installed, and what `mpesa-sync migrate` left behind.

-- name: schema_installed
-- True once the migrations this package needs have created the sync
-- functions (fix_bars_v2 came with 0004).
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
