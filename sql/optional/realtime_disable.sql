-- Optional: undoes realtime_enable.sql. `mpesa-sync realtime disable` runs it in
-- one transaction, and so does `mpesa-sync rollback` before it takes out a
-- migration the sink reads. Running it when nothing is enabled changes nothing;
-- so does running it on a database without a realtime schema (only its policies
-- live there). It drops schema mpesa_sync_live with the one function enable
-- put there, and with it the only grants enable gave anon and authenticated
-- (it gave them nothing on schema mpesa_sync, so there is nothing to revoke).

DROP TRIGGER IF EXISTS mpesa_sync_broadcast_v1 ON mpesa_sync.status_events;
DROP FUNCTION IF EXISTS mpesa_sync.broadcast_status_events_v1();
DROP FUNCTION IF EXISTS mpesa_sync.realtime_send_failed_v1(text, text, bigint);
DROP FUNCTION IF EXISTS public.mpesa_status(uuid);

-- Schema mpesa_sync_live and its function, when they are ours: enable refuses
-- a mpesa_sync_live another role made, and disable leaves such a one alone.
DO $$
BEGIN
    IF pg_catalog.pg_has_role(
        (SELECT n.nspowner FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'mpesa_sync_live'),
        'USAGE'
    ) THEN
        DROP FUNCTION IF EXISTS mpesa_sync_live.log_position_v1();
        DROP SCHEMA mpesa_sync_live;
    END IF;
END
$$;
DROP TABLE IF EXISTS mpesa_sync.realtime_sink_v1;

-- Looked up in the catalogs, which anyone may read: a role without USAGE on
-- schema realtime (where enable never ran) gets no error from a database that
-- holds none of our policies.
DO $$
DECLARE
    v_policy name;
BEGIN
    FOR v_policy IN
        SELECT p.polname
        FROM pg_catalog.pg_policy AS p
        JOIN pg_catalog.pg_class AS c ON c.oid = p.polrelid
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = 'realtime'
          AND c.relname = 'messages'
          AND p.polname IN ('mpesa_sync_status_receive_v1', 'mpesa_sync_status_send_v1')
    LOOP
        EXECUTE format('DROP POLICY %I ON realtime.messages', v_policy);
    END LOOP;
END
$$;
