-- Queries of `mpesa-sync verify` and `mpesa-sync reconcile`.
--
-- Both read drift only through mpesa_sync.bar_status_v1, and reconcile fixes
-- it only through mpesa_sync.fix_bars_v1, the mechanism the install uses too
-- (through fix_all_v1): there is no second copy of the rule or of the fix.

-- name: drift_summary
-- One pass over every bar: how many were checked and how many drifted.
SELECT
    count(*) AS checked,
    count(*) FILTER (WHERE s.mpesa_enabled IS DISTINCT FROM s.expected) AS drifted
FROM mpesa_sync.bar_status_v1 AS s;

-- name: drifted_bars
-- The first %(limit)s drifted bars in id order; every one when limit is NULL.
-- Walking the primary key lets a small limit stop early instead of sorting.
SELECT s.bar_id, s.mpesa_enabled, s.expected
FROM mpesa_sync.bar_status_v1 AS s
WHERE s.mpesa_enabled IS DISTINCT FROM s.expected
ORDER BY s.bar_id
LIMIT %(limit)s;

-- name: open_alerts
SELECT count(*)
FROM mpesa_sync.alerts AS a
WHERE a.acknowledged_at IS NULL;

-- name: drifted_bar_ids
-- Reconcile's detection, set-based and in one pass: the bars checked, and the
-- id of every drifted bar in id order (the order the sync triggers lock in).
SELECT
    count(*) AS checked,
    coalesce(
        array_agg(s.bar_id ORDER BY s.bar_id)
            FILTER (WHERE s.mpesa_enabled IS DISTINCT FROM s.expected),
        '{}'
    ) AS drifted
FROM mpesa_sync.bar_status_v1 AS s;

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
