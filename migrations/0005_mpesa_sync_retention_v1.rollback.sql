-- Undo 0005: remove the event log's identity and the prune function. Events
-- and alerts already pruned stay pruned; a relay or client then meets a new
-- generation when 0005 is applied again, and is reset.
DROP FUNCTION mpesa_sync.prune_v1(interval, integer, boolean);
DROP VIEW mpesa_sync.event_log_v1;
DROP TABLE mpesa_sync.event_log;
