-- yoyo's record of the install: its tables live in schema mpesa_sync_yoyo,
-- where no API role has any right (Supabase grants every table that the owner
-- creates in public to anon and authenticated). Releases before 0006 left
-- them in public, which `migrate` and `rollback` move from (history_*).
-- yoyo finds them there because mpesa_sync.migrations.yoyo_url() names the
-- schema (yoyo sets its search_path to it).

-- name: create_history_schema
-- Created by `migrate` under its lock, before yoyo connects. No grant: only
-- the owner, who runs the migrations, reads yoyo's tables.
CREATE SCHEMA IF NOT EXISTS mpesa_sync_yoyo;

-- name: history_state
-- Where the history is, and whether the install's schema is there.
SELECT to_regnamespace('mpesa_sync') IS NOT NULL AS schema,
       to_regclass('mpesa_sync_yoyo._yoyo_migration') IS NOT NULL AS history,
       to_regclass('public._yoyo_migration') IS NOT NULL AS public_history,
       to_regclass('public._yoyo_log') IS NOT NULL AS public_log,
       to_regclass('public.yoyo_lock') IS NOT NULL AS public_lock;

-- name: applied_migrations
-- What yoyo recorded as applied; asked only once history_state saw the table.
SELECT m.migration_id
FROM mpesa_sync_yoyo._yoyo_migration AS m
ORDER BY m.applied_at_utc, m.migration_id;

-- name: applied_migrations_in_public
-- Our migrations in a release's history left in public (before 0006), and
-- none of a host's own yoyo migrations that may share that table.
SELECT m.migration_id
FROM public._yoyo_migration AS m
WHERE m.migration_id = ANY (%(ours)s)
ORDER BY m.applied_at_utc, m.migration_id;

-- name: move_history_from_public
WITH moved AS (
    DELETE FROM public._yoyo_migration AS m
    WHERE m.migration_id = ANY (%(ours)s)
    RETURNING m.migration_hash, m.migration_id, m.applied_at_utc
)
INSERT INTO mpesa_sync_yoyo._yoyo_migration (migration_hash, migration_id, applied_at_utc)
SELECT migration_hash, migration_id, applied_at_utc FROM moved
ON CONFLICT DO NOTHING;

-- name: move_log_from_public
WITH moved AS (
    DELETE FROM public._yoyo_log AS l
    WHERE l.migration_id = ANY (%(ours)s)
    RETURNING l.id, l.migration_hash, l.migration_id, l.operation, l.username,
              l.hostname, l.comment, l.created_at_utc
)
INSERT INTO mpesa_sync_yoyo._yoyo_log
    (id, migration_hash, migration_id, operation, username, hostname, comment, created_at_utc)
SELECT id, migration_hash, migration_id, operation, username, hostname, comment, created_at_utc
FROM moved
ON CONFLICT DO NOTHING;

-- name: public_history_rows
-- What is left in public's yoyo tables once ours moved: a host's own yoyo
-- migrations, or a run of `yoyo` holding its lock. Asked only when
-- history_state saw all three tables.
SELECT (SELECT count(*) FROM public._yoyo_migration)
     + (SELECT count(*) FROM public._yoyo_log)
     + (SELECT count(*) FROM public.yoyo_lock);

-- name: drop_public_history
-- yoyo's tables in public held only our history, now moved: they go.
DROP TABLE IF EXISTS public._yoyo_migration, public._yoyo_log,
    public._yoyo_version, public.yoyo_lock;

-- name: leftover_install
-- A half-finished install (schema mpesa_sync with no yoyo record of it): which
-- of the tables that matter it has. Each is read below only when it is there.
SELECT to_regclass('mpesa_sync.status_events') IS NOT NULL AS events,
       to_regclass('mpesa_sync.alerts') IS NOT NULL AS alerts,
       to_regclass('mpesa_sync.installed_host_objects') IS NOT NULL AS host_objects;

-- name: leftover_has_events
SELECT EXISTS (SELECT 1 FROM mpesa_sync.status_events);

-- name: leftover_has_alerts
SELECT EXISTS (SELECT 1 FROM mpesa_sync.alerts);

-- name: leftover_host_objects
-- What it recorded as created on the host (0001), for the new install to
-- record again, so that a rollback still removes it.
SELECT coalesce(array_agg(o.object), '{}') FROM mpesa_sync.installed_host_objects AS o;

-- name: restore_host_objects
INSERT INTO mpesa_sync.installed_host_objects (object)
SELECT unnest(%(objects)s::text[])
ON CONFLICT DO NOTHING;

-- name: drop_leftover_schema
-- A half-finished install, with no yoyo record and no event or alert: its
-- functions go, and with them the triggers it had put on the host's tables.
DROP SCHEMA mpesa_sync CASCADE;
