-- Queries the live relay runs (mpesa_sync/relay/).
--
-- The relay never trusts notifications alone: after every (re)connect it
-- LISTENs first and then reads status_events after the last id it delivered.
-- event_id order is commit order (see publish_status_events_v3), so
-- "event_id > last delivered" misses nothing and repeats nothing, as long as
-- the position belongs to this log and was not pruned: every read returns the
-- log's state with it (mpesa_sync.event_log_v1), and a position the log
-- cannot honour is reset, never silently moved on.

-- name: relay_listen
LISTEN mpesa_status;

-- name: newest_event_id
-- Where a migrate starts counting the events its install fix made. 0 on an
-- empty table. (A relay starts from relay_log_state, which also knows where
-- a pruned log stands.)
SELECT coalesce(max(e.event_id), 0) FROM mpesa_sync.status_events AS e;

-- name: relay_log_state
-- The log as a reader sees it (mpesa_sync.event_log_v1: generation, pruned
-- through, oldest, newest), and whether the bar exists (true when none is
-- given): where a relay starts, and what an SSE request's position and bar
-- are checked against.
SELECT s.generation, s.pruned_through, s.oldest_event_id, s.newest_event_id,
       (%(bar_id)s::uuid IS NULL
        OR EXISTS (SELECT 1 FROM public.bars AS b WHERE b.id = %(bar_id)s::uuid)) AS bar_exists
FROM mpesa_sync.event_log_v1 AS s;

-- name: relay_events_between
-- The log's state, and events in [after, upto], oldest first, a page at a
-- time. The state comes in the same snapshot as the events, with event
-- columns NULL when there is none, so a page is never read from a log that
-- was pruned past `after` without the reader knowing. `after` itself is
-- included: the event at the reader's position comes back when it is still
-- there, and the relay checks it is the event it handed on (a restore or a
-- failover can replace it). The relay's catch-up passes the largest bigint
-- as upto; an SSE replay passes the id the relay had delivered when the
-- client subscribed, so the replay and the live stream meet exactly.
SELECT s.generation, s.pruned_through, s.oldest_event_id, s.newest_event_id,
       e.event_id, e.bar_id, e.mpesa_enabled, e.source, e.at
FROM mpesa_sync.event_log_v1 AS s
LEFT JOIN LATERAL (
    SELECT e.event_id, e.bar_id, e.mpesa_enabled, e.source, e.at
    FROM mpesa_sync.status_events AS e
    WHERE e.event_id >= %(after)s
      AND e.event_id <= %(upto)s
    ORDER BY e.event_id
    LIMIT %(limit)s
) AS e ON true
ORDER BY e.event_id;

-- name: relay_bar_events_between
-- The same for one bar; served by status_events_bar_idx (bar_id, event_id).
SELECT s.generation, s.pruned_through, s.oldest_event_id, s.newest_event_id,
       e.event_id, e.bar_id, e.mpesa_enabled, e.source, e.at
FROM mpesa_sync.event_log_v1 AS s
LEFT JOIN LATERAL (
    SELECT e.event_id, e.bar_id, e.mpesa_enabled, e.source, e.at
    FROM mpesa_sync.status_events AS e
    WHERE e.bar_id = %(bar_id)s
      AND e.event_id >= %(after)s
      AND e.event_id <= %(upto)s
    ORDER BY e.event_id
    LIMIT %(limit)s
) AS e ON true
ORDER BY e.event_id;

-- name: relay_payment_options
-- What a customer's page shows; payment_options has no secret column.
SELECT p.bar_id, p.mpesa_available, p.environment, p.business_shortcode
FROM mpesa_sync.payment_options AS p
WHERE p.bar_id = %(bar_id)s;
