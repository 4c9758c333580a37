-- Queries about what is installed.

-- name: schema_installed
-- True once migration 0002 has created the sync functions.
SELECT to_regprocedure('mpesa_sync.fix_bars_v1(uuid[])') IS NOT NULL;

-- name: host_tables_present
SELECT to_regclass('public.bars') IS NOT NULL AS bars,
       to_regclass('public.mpesa_credentials') IS NOT NULL AS credentials;

-- name: take_migrate_lock
-- A session lock held for the whole migrate run, so that a second
-- `mpesa-sync migrate` waits for the first instead of failing on yoyo's lock
-- table. 1835100535 is 'mpmw' in ASCII; the sync code uses another key.
SELECT pg_advisory_lock(1835100535);

-- name: release_migrate_lock
SELECT pg_advisory_unlock(1835100535);

-- name: alerts_since
-- Alerts raised after the given id, for reporting what a migrate left behind.
SELECT id, kind, bar_id, detail
FROM mpesa_sync.alerts
WHERE id > %(after)s
ORDER BY id;

-- name: last_alert_id
SELECT coalesce(max(id), 0) FROM mpesa_sync.alerts;

-- name: set_lock_timeout
-- SET LOCAL with a parameter (SET itself takes no bind parameters); see
-- mpesa_sync.db.set_lock_timeout.
SELECT set_config('lock_timeout', %(lock_timeout)s, true);
