-- Drift: the queries of `mpesa-sync verify` and `mpesa-sync reconcile`.
--
-- Both find drift with one set-based pass (drift_scan), and reconcile fixes it
-- only through mpesa_sync.fix_bars_v2: an UPDATE of the drifted bars from the
-- rule's view, whose correction trigger recomputes each value under the row
-- lock, as for every direct write to bars.

-- name: set_work_mem
-- For drift_scan: with this much memory the active-credential set of a few
-- million bars fits in one hash; with less the planner falls back to an index
-- probe per bar (correct, about twice as slow).
SELECT set_config('work_mem', '64MB', true);

-- name: drift_scan
-- One set-based pass over every bar: how many were checked, how many drifted,
-- and the ids of up to `limit` drifted bars (all of them when it is NULL),
-- in no particular order. The rule comes from mpesa_sync.bar_status_v1, which
-- the planner inlines.
--
-- OFFSET 0 keeps the view from being flattened into the aggregate, where the
-- planner would cost its EXISTS for one execution and so never hash it.
SELECT
    count(*) AS checked,
    count(*) FILTER (WHERE s.drifted) AS drifted,
    coalesce(
        (array_agg(s.bar_id) FILTER (WHERE s.drifted))
            [:coalesce(%(limit)s::integer, 2147483647)],
        '{}'
    ) AS sample
FROM (
    SELECT v.bar_id, v.mpesa_enabled IS DISTINCT FROM v.expected AS drifted
    FROM mpesa_sync.bar_status_v1 AS v
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

-- name: fix_bars
-- The shared fix: tries the batch in one statement, retries it bar by bar when
-- a bar refuses, records an alert for each bar that still refuses and returns
-- those bars with the database's own error.
SELECT f.bar_id, f.error, f.error_sqlstate, f.error_constraint
FROM mpesa_sync.fix_bars_v2(%(bar_ids)s::uuid[]) AS f;

-- name: reconcile_changes_in_transaction
-- How many bars this batch's transaction changed: its status changes wait in
-- pending_changes until it commits (publish_status_events_v3 turns them into
-- events then), each tagged with the source of the function that made it.
-- A bar switched and switched back counts as no change, as in the events.
SELECT count(*)
FROM mpesa_sync.pending_changes AS p
WHERE p.xid = pg_current_xact_id()
  AND p.source = 'reconcile'
  AND p.mpesa_enabled IS DISTINCT FROM p.was_enabled;
