-- Queries the live relay runs (mpesa_sync/relay/).
--
-- The relay never trusts notifications alone: after every (re)connect it
-- LISTENs first and then reads status_events after the last id it delivered.
-- event_id order is commit order (see publish_status_events_v2), so
-- "event_id > last delivered" misses nothing and repeats nothing.

-- name: relay_listen
LISTEN mpesa_status;

-- name: newest_event_id
-- Where a relay starts when it is not given --since. 0 on an empty table.
SELECT coalesce(max(e.event_id), 0) FROM mpesa_sync.status_events AS e;

-- name: relay_events_between
-- Events in (after, upto], oldest first, a page at a time. The relay's
-- catch-up passes the largest bigint as upto; an SSE replay passes the id the
-- relay had delivered when the client subscribed, so the replay and the live
-- stream meet exactly.
SELECT e.event_id, e.bar_id, e.mpesa_enabled, e.source, e.at
FROM mpesa_sync.status_events AS e
WHERE e.event_id > %(after)s
  AND e.event_id <= %(upto)s
ORDER BY e.event_id
LIMIT %(limit)s;

-- name: relay_bar_events_between
-- The same for one bar; served by status_events_bar_idx (bar_id, event_id).
SELECT e.event_id, e.bar_id, e.mpesa_enabled, e.source, e.at
FROM mpesa_sync.status_events AS e
WHERE e.bar_id = %(bar_id)s
  AND e.event_id > %(after)s
  AND e.event_id <= %(upto)s
ORDER BY e.event_id
LIMIT %(limit)s;

-- name: relay_payment_options
-- What a customer's page shows; payment_options has no secret column.
SELECT p.bar_id, p.mpesa_available, p.environment, p.business_shortcode
FROM mpesa_sync.payment_options AS p
WHERE p.bar_id = %(bar_id)s;
