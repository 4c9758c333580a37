-- Optional, never applied by `mpesa-sync migrate`: Broadcast from the database
-- for Supabase Realtime. `mpesa-sync realtime enable [--public]` runs this file
-- in one transaction, as the role that ran the migrations, after checking that
-- the database has Realtime's realtime.send and that the role may use it
-- (docs/supabase.md#live-status-in-the-customer-app). Running it again replaces everything it made.
--
-- To run it by hand instead: psql --single-transaction -v ON_ERROR_STOP=1
-- -f realtime_enable.sql (set mpesa_sync.realtime_topics to 'public' first for
-- public topics). `mpesa-sync realtime disable` (realtime_disable.sql) undoes it.
--
-- What it makes:
--   mpesa_sync.realtime_sink_v1               one row: failed sends, and the open alert about them
--   mpesa_sync.realtime_send_failed_v1(...)   counts a failed send and raises the alert
--   mpesa_sync.broadcast_status_events_v1()   the sink: sends each committed status event
--   trigger mpesa_sync_broadcast_v1           on mpesa_sync.status_events
--   policies mpesa_sync_status_receive_v1 and mpesa_sync_status_send_v1 on realtime.messages
--   schema mpesa_sync_live                    holds nothing but log_position_v1
--   mpesa_sync_live.log_position_v1()         the event log's generation and newest event id
--   public.mpesa_status(uuid)                 the state call for the customer app
--
-- It grants anon and authenticated nothing on schema mpesa_sync (migration
-- 0006 closed it to them): the state call reaches the log's position through
-- mpesa_sync_live, a schema of its own that the Supabase API must never serve
-- (docs/supabase.md#live-status-in-the-customer-app).

-- The sink's own state ----------------------------------------------------------------

CREATE TABLE IF NOT EXISTS mpesa_sync.realtime_sink_v1 (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    failures bigint NOT NULL DEFAULT 0,     -- statements whose sends failed
    events_lost bigint NOT NULL DEFAULT 0,  -- events those statements did not send
    last_sqlstate text,
    last_error text,
    last_failed_at timestamptz,
    alert_id bigint                         -- the alert raised for the current run of failures
);

INSERT INTO mpesa_sync.realtime_sink_v1 DEFAULT VALUES ON CONFLICT DO NOTHING;

-- A send failed: count it, and raise an alert unless the one raised for an
-- earlier failure is still open (one alert per run of failures, not one per
-- commit). Never raises itself: it runs in the commit of a staff member's
-- write, which a broken sink must not fail. Called with the sink's error.
CREATE OR REPLACE FUNCTION mpesa_sync.realtime_send_failed_v1(
    p_sqlstate text,
    p_error text,
    p_events bigint
)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_alert_id bigint;
BEGIN
    UPDATE mpesa_sync.realtime_sink_v1
    SET failures = failures + 1,
        events_lost = events_lost + p_events,
        last_sqlstate = p_sqlstate,
        last_error = p_error,
        last_failed_at = now()
    RETURNING alert_id INTO v_alert_id;

    IF v_alert_id IS NULL OR NOT EXISTS (
        SELECT 1 FROM mpesa_sync.alerts AS a
        WHERE a.id = v_alert_id
          AND a.acknowledged_at IS NULL
    ) THEN
        v_alert_id := mpesa_sync.raise_alert_v1(
            'realtime_send_failed',
            NULL,
            jsonb_build_object('sqlstate', p_sqlstate, 'error', p_error, 'events', p_events)
        );
        UPDATE mpesa_sync.realtime_sink_v1 SET alert_id = v_alert_id;
    END IF;
    RAISE WARNING 'mpesa_sync: realtime broadcast of % event(s) failed: % (SQLSTATE %)',
        p_events, p_error, p_sqlstate;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'mpesa_sync: realtime broadcast failed (%), and so did counting it: %',
        p_error, SQLERRM;
END
$$;

-- The sink ------------------------------------------------------------------------------

-- AFTER INSERT ... FOR EACH STATEMENT on mpesa_sync.status_events. The only
-- statement that inserts there is publish_status_events_v3, which runs as its
-- transaction commits, under the lock that orders commits by event id; so
-- this sends only events that commit (a rolled-back transaction never gets
-- here), and sends them in event id order. TG_ARGV[0]: 'private' or 'public'.
--
-- realtime.send is Supabase's; it is called by name, looked up when it runs.
-- Whatever goes wrong in here (no realtime schema, a changed send, a send
-- that raises) is caught: the statement's messages are dropped, the failure
-- counted and raised as an alert, and the write commits as it would have
-- without the sink. The payload has no field of mpesa_credentials.
CREATE OR REPLACE FUNCTION mpesa_sync.broadcast_status_events_v1()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- It runs inside publish_status_events_v3, which plans with enable_seqscan
-- off; here the one-row event_log is read with a scan, which that setting
-- prices so high that PostgreSQL 15 to 17 JIT-compiled it on every commit
-- (30 ms a toggle). Normal planning here.
SET enable_seqscan = on
AS $$
DECLARE
    v_private boolean := TG_ARGV[0] IS DISTINCT FROM 'public';
    v_generation uuid;
    v_event record;
    v_events bigint;
    v_sqlstate text;
    v_error text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_events) THEN
        RETURN NULL;  -- no net change in the transaction: nothing to send, no subtransaction
    END IF;
    BEGIN
        SELECT l.generation INTO v_generation FROM mpesa_sync.event_log_v1 AS l;
        FOR v_event IN
            SELECT e.event_id, e.bar_id, e.mpesa_enabled, e.at
            FROM new_events AS e
            ORDER BY e.event_id
        LOOP
            PERFORM realtime.send(
                jsonb_build_object(
                    'bar_id', v_event.bar_id,
                    'mpesa_enabled', v_event.mpesa_enabled,
                    'event_id', v_event.event_id,
                    'generation', v_generation,
                    'at', v_event.at
                ),
                'status',
                'mpesa_status:' || v_event.bar_id,
                v_private
            );
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_sqlstate = RETURNED_SQLSTATE, v_error = MESSAGE_TEXT;
        SELECT count(*) INTO v_events FROM new_events;
        PERFORM mpesa_sync.realtime_send_failed_v1(v_sqlstate, v_error, v_events);
    END;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS mpesa_sync_broadcast_v1 ON mpesa_sync.status_events;

DO $$
BEGIN
    EXECUTE format(
        'CREATE TRIGGER mpesa_sync_broadcast_v1'
        ' AFTER INSERT ON mpesa_sync.status_events'
        ' REFERENCING NEW TABLE AS new_events'
        ' FOR EACH STATEMENT EXECUTE FUNCTION mpesa_sync.broadcast_status_events_v1(%L)',
        CASE WHEN current_setting('mpesa_sync.realtime_topics', true) = 'public'
             THEN 'public' ELSE 'private' END
    );
END
$$;

-- Who may receive, and who may send --------------------------------------------------

-- Realtime authorises a subscriber to a private channel by selecting, as the
-- subscriber's role with realtime.topic set to the channel's topic, a row it
-- has written with that topic. anon and authenticated may receive broadcasts
-- on topics that begin with exactly 'mpesa_status:' (starts_with, not LIKE,
-- whose _ matches any character), and read nothing else through this policy.
-- No INSERT policy is given to them: they may not send on these topics.
DROP POLICY IF EXISTS mpesa_sync_status_receive_v1 ON realtime.messages;
CREATE POLICY mpesa_sync_status_receive_v1 ON realtime.messages
    AS PERMISSIVE
    FOR SELECT
    TO anon, authenticated
    USING (
        extension = 'broadcast'
        AND starts_with(topic, 'mpesa_status:')
        AND topic = (SELECT realtime.topic())
    );

-- The sink inserts through realtime.send as this role (the owner of the
-- trigger function). A role with BYPASSRLS does not need this; one without
-- it may insert broadcasts on our topics, and only those.
DROP POLICY IF EXISTS mpesa_sync_status_send_v1 ON realtime.messages;
CREATE POLICY mpesa_sync_status_send_v1 ON realtime.messages
    AS PERMISSIVE
    FOR INSERT
    TO CURRENT_USER
    WITH CHECK (
        extension = 'broadcast'
        AND starts_with(topic, 'mpesa_status:')
    );

-- The state call ------------------------------------------------------------------------

-- The event log's generation and its newest event id, read in the caller's
-- snapshot (STABLE). Event ids are handed out at commit in commit order, so
-- every event up to that id is visible in the same snapshot, and whatever
-- else the caller reads in it reflects them all. SECURITY DEFINER, so that
-- the customer roles learn those two numbers about the whole log and nothing
-- else of schema mpesa_sync, which they may not use. It lives in a schema of
-- its own, mpesa_sync_live, holding no table and nothing else: a schema the
-- Supabase API does not serve, so no linter finding (0028/0029 flag a
-- SECURITY DEFINER function that anon or authenticated may call in an exposed
-- schema), and one that opening mpesa_sync to the API (docs/supabase.md) does
-- not expose either. Never add mpesa_sync_live to the exposed schemas.
CREATE SCHEMA IF NOT EXISTS mpesa_sync_live;
DO $$
BEGIN
    -- made by another role, it is not ours to put a SECURITY DEFINER function in
    IF NOT pg_catalog.pg_has_role(
        (SELECT n.nspowner FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'mpesa_sync_live'),
        'USAGE'
    ) THEN
        RAISE EXCEPTION 'schema mpesa_sync_live exists and belongs to another role'
            USING ERRCODE = 'duplicate_schema';
    END IF;
END
$$;
REVOKE ALL ON SCHEMA mpesa_sync_live FROM PUBLIC;

CREATE OR REPLACE FUNCTION mpesa_sync_live.log_position_v1()
RETURNS TABLE (generation uuid, event_id bigint)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT l.generation, l.newest_event_id
    FROM mpesa_sync.event_log_v1 AS l
$$;

-- What the customer app reads when it (re)subscribes:
--   supabase.rpc('mpesa_status', { p_bar_id })
-- A bar's mpesa_enabled, card_enabled and cash_enabled, with the log's
-- generation and an event id such that every event up to it is reflected
-- (at least the bar's newest event): a broadcast is newer exactly when its
-- event_id is greater. SQL NULL for a bar the caller cannot see or that does
-- not exist. SECURITY INVOKER: the bar is read with the caller's own rights,
-- so the host's grants and RLS on bars decide what it sees, and nothing of
-- mpesa_credentials is read at all. No Supabase linter finding (a SECURITY
-- DEFINER function in public executable by anon would be lint 0028/0029).
CREATE OR REPLACE FUNCTION public.mpesa_status(p_bar_id uuid)
RETURNS jsonb
LANGUAGE sql
STABLE
SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object(
        'bar_id', b.id,
        'mpesa_enabled', b.mpesa_enabled IS TRUE,
        'card_enabled', b.card_enabled,
        'cash_enabled', b.cash_enabled,
        'generation', p.generation,
        'event_id', p.event_id
    )
    FROM public.bars AS b
    CROSS JOIN mpesa_sync_live.log_position_v1() AS p
    WHERE b.id = p_bar_id
$$;

-- Privileges -----------------------------------------------------------------------------

-- Everything here is the owner's, but the state call and the log position
-- for the customer roles where they exist (Supabase's default privileges
-- would grant more: revoked first, by name). Nothing on schema mpesa_sync.
REVOKE ALL ON TABLE mpesa_sync.realtime_sink_v1 FROM PUBLIC;
REVOKE ALL ON FUNCTION mpesa_sync.realtime_send_failed_v1(text, text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpesa_sync.broadcast_status_events_v1() FROM PUBLIC;
REVOKE ALL ON FUNCTION mpesa_sync_live.log_position_v1() FROM PUBLIC;
REVOKE ALL ON FUNCTION public.mpesa_status(uuid) FROM PUBLIC;

DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
            EXECUTE format(
                'REVOKE ALL ON TABLE mpesa_sync.realtime_sink_v1 FROM %I', v_role
            );
            EXECUTE format(
                'REVOKE ALL ON FUNCTION mpesa_sync.realtime_send_failed_v1(text, text, bigint),'
                ' mpesa_sync.broadcast_status_events_v1() FROM %I',
                v_role
            );
            -- the state call reaches log_position_v1 in schema mpesa_sync_live
            EXECUTE format('GRANT USAGE ON SCHEMA mpesa_sync_live TO %I', v_role);
            EXECUTE format(
                'GRANT EXECUTE ON FUNCTION mpesa_sync_live.log_position_v1(),'
                ' public.mpesa_status(uuid) TO %I',
                v_role
            );
        END IF;
    END LOOP;
END
$$;
