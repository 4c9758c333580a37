-- Locks Python takes: the advisory locks and the lock timeout.
--
-- Every advisory lock key of mpesa-sync, in one list (each is some letters
-- in ASCII, so that pg_locks shows where a key comes from):
--
--   1835100535  'mpmw'   take_migrate_lock, below: a whole `mpesa-sync migrate`
--                        or `rollback`
--   1836085859  'mprc'   take_reconcile_lock, below: one reconcile batch, and
--                        a whole migrate, so that the bars it reports fixed
--                        are its own
--   470037132129 'mpesa' mpesa_sync.publish_status_events_v3 (sql/schema.sql):
--                        hands out event ids in commit order, at commit
--
-- The third lives in the function body, where it must stay; a test
-- (tests/units/test_queries.py) checks that the keys in sql/ and migrations/ are these
-- and that no two uses share one by accident.

-- name: try_migrate_lock
-- Every lock here is a transaction lock: `migrate` holds its locks in one
-- transaction open for the whole run, so that nothing it takes can outlive
-- it (a session lock stays on a pooled server connection after the client
-- has gone).
SELECT pg_try_advisory_xact_lock(1835100535);

-- name: take_migrate_lock
-- A second `mpesa-sync migrate` waits for the first instead of failing on
-- yoyo's lock table.
SELECT pg_advisory_xact_lock(1835100535);

-- name: migrate_lock_holders
-- Who holds the migrate lock, for the line that says what migrate waits for.
SELECT a.pid, a.state, a.application_name
FROM pg_catalog.pg_locks AS l
JOIN pg_catalog.pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'advisory'
  AND l.granted
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
  AND ((l.classid::bigint << 32) | l.objid::bigint) = 1835100535
ORDER BY a.pid;

-- name: take_reconcile_lock
-- Held by each reconcile batch until it commits, and by `migrate` to its
-- end. Two reconciles run at once take turns batch by batch instead of
-- waiting on each other's row locks (which could deadlock and turn into
-- spurious alerts). Taken before the lock
-- timeout is set: waiting one batch for the other reconcile is expected.
SELECT pg_advisory_xact_lock(1836085859);

-- name: set_lock_timeout
-- SET LOCAL with a parameter (SET itself takes no bind parameters); see
-- mpesa_sync.db.set_lock_timeout.
SELECT set_config('lock_timeout', %(lock_timeout)s, true);
