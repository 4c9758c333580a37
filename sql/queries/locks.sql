-- Locks Python takes: the advisory locks and the lock timeout.
--
-- Every advisory lock key of mpesa-sync, in one list (each is some letters
-- in ASCII, so that pg_locks shows where a key comes from):
--
--   1835100535  'mpmw'   take_migrate_lock, below: a whole `mpesa-sync migrate`
--   1836085859  'mprc'   take_reconcile_lock, below: one reconcile batch; and
--                        hold_reconcile_lock: a whole migrate, so that the
--                        bars it reports fixed are its own
--   470037132129 'mpesa' mpesa_sync.publish_status_events_v2 (sql/schema.sql):
--                        hands out event ids in commit order, at commit
--
-- The third lives in the function body, where it must stay; a test
-- (tests/units/test_queries.py) checks that the keys in sql/ and migrations/ are these
-- and that no two uses share one by accident.

-- name: take_migrate_lock
-- A session lock held for the whole migrate run, so that a second
-- `mpesa-sync migrate` waits for the first instead of failing on yoyo's lock
-- table.
SELECT pg_advisory_lock(1835100535);

-- name: release_migrate_lock
SELECT pg_advisory_unlock(1835100535);

-- name: take_reconcile_lock
-- Held by each reconcile batch until it commits, so two reconciles run at
-- once take turns batch by batch instead of waiting on each other's row locks
-- (which could deadlock and turn into spurious alerts). Taken before the lock
-- timeout is set: waiting one batch for the other reconcile is expected.
SELECT pg_advisory_xact_lock(1836085859);

-- name: set_lock_timeout
-- SET LOCAL with a parameter (SET itself takes no bind parameters); see
-- mpesa_sync.db.set_lock_timeout.
SELECT set_config('lock_timeout', %(lock_timeout)s, true);

-- name: hold_reconcile_lock
-- The reconcile lock for a whole `mpesa-sync migrate` (a session lock): a
-- reconcile batch waits until the install is done, so the 'reconcile' events
-- written meanwhile are all the install's own fixes.
SELECT pg_advisory_lock(1836085859);

-- name: release_reconcile_lock
SELECT pg_advisory_unlock(1836085859);
