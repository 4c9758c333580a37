-- Queries of `mpesa-sync verify` and `mpesa-sync reconcile`.
--
-- Both find drift with one set-based pass (drift_scan), and reconcile fixes it
-- only through mpesa_sync.fix_bars_v1, the mechanism the install uses too
-- (through fix_all_v1): there is no second copy of the fix.

-- name: set_work_mem
-- For drift_scan: with this much memory the active-credential set of a few
-- million bars fits in one hash; with less the planner falls back to an index
-- probe per bar (correct, about twice as slow).
SELECT set_config('work_mem', '64MB', true);

-- name: drift_scan
-- One set-based pass over every bar: how many were checked, how many drifted,
-- and the ids of up to `limit` drifted bars (all of them when it is NULL),
-- in no particular order.
--
-- This is the rule of mpesa_sync.has_active_credentials_v1 written as a set.
-- bar_status_v1 cannot serve a whole-table read: the function's body holds a
-- sublink, so the planner never inlines it and calls it once per bar (about
-- three times the cost of this query on a million bars). tests/test_verify.py
-- checks that both agree.
--
-- OFFSET 0 keeps the subquery from being flattened into the aggregate, where
-- the planner would cost the EXISTS for one execution and so never hash it.
SELECT
    count(*) AS checked,
    count(*) FILTER (WHERE s.drifted) AS drifted,
    coalesce(
        (array_agg(s.bar_id) FILTER (WHERE s.drifted))
            [:coalesce(%(limit)s::integer, 2147483647)],
        '{}'
    ) AS sample
FROM (
    SELECT
        b.id AS bar_id,
        b.mpesa_enabled IS DISTINCT FROM EXISTS (
            SELECT 1
            FROM public.mpesa_credentials AS c
            WHERE c.tenant_id = b.id
              AND c.is_active
        ) AS drifted
    FROM public.bars AS b
    OFFSET 0
) AS s;

-- name: bar_status
-- The given bars as bar_status_v1 sees them, in id order.
SELECT s.bar_id, s.mpesa_enabled, s.expected
FROM mpesa_sync.bar_status_v1 AS s
WHERE s.bar_id = ANY (%(bar_ids)s::uuid[])
ORDER BY s.bar_id;

-- name: open_alerts
SELECT count(*)
FROM mpesa_sync.alerts AS a
WHERE a.acknowledged_at IS NULL;

-- name: take_reconcile_lock
-- Held by each reconcile batch until it commits, so two reconciles run at
-- once take turns batch by batch instead of waiting on each other's row locks
-- (which could deadlock and turn into spurious alerts). Taken before the lock
-- timeout is set: waiting one batch for the other reconcile is expected.
-- 1836085859 is 'mprc' in ASCII; migrate and the event ids use other keys.
SELECT pg_advisory_xact_lock(1836085859);

-- name: set_lock_timeout
-- SET LOCAL with a parameter: SET itself takes no bind parameters.
SELECT set_config('lock_timeout', %(lock_timeout)s, true);

-- name: last_event_id
SELECT coalesce(max(e.event_id), 0)
FROM mpesa_sync.status_events AS e;

-- name: fix_bars
-- The shared fix: tries the batch in one statement, retries it bar by bar when
-- a bar refuses, records an alert for each bar that still refuses and returns
-- those bars with the database's own error.
SELECT f.bar_id, f.error, f.error_sqlstate, f.error_constraint
FROM mpesa_sync.fix_bars_v1(%(bar_ids)s::uuid[]) AS f;

-- name: reconcile_events_since
-- How many of the batch's bars this batch changed: fix_bars_v1 tags its
-- events with source 'reconcile', and take_reconcile_lock keeps any other
-- reconcile's batch out until this one commits.
SELECT count(*)
FROM mpesa_sync.status_events AS e
WHERE e.bar_id = ANY (%(bar_ids)s::uuid[])
  AND e.event_id > %(after)s
  AND e.source = 'reconcile';
