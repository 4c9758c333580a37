-- Optional: undoes realtime_enable.sql. `mpesa-sync realtime disable` runs it in
-- one transaction, and so does `mpesa-sync rollback` before it takes out a
-- migration the sink reads. Running it when nothing is enabled changes nothing;
-- so does running it on a database without a realtime schema (only its policies
-- live there).

DROP TRIGGER IF EXISTS mpesa_sync_broadcast_v1 ON mpesa_sync.status_events;
DROP FUNCTION IF EXISTS mpesa_sync.broadcast_status_events_v1();
DROP FUNCTION IF EXISTS mpesa_sync.realtime_send_failed_v1(text, text, bigint);
DROP FUNCTION IF EXISTS public.mpesa_status(uuid);
DROP FUNCTION IF EXISTS mpesa_sync.log_position_v1();
DROP TABLE IF EXISTS mpesa_sync.realtime_sink_v1;

DO $$
BEGIN
    IF to_regclass('realtime.messages') IS NOT NULL THEN
        DROP POLICY IF EXISTS mpesa_sync_status_receive_v1 ON realtime.messages;
        DROP POLICY IF EXISTS mpesa_sync_status_send_v1 ON realtime.messages;
    END IF;
END
$$;
