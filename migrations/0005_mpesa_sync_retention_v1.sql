-- mpesa_sync retention v1: the event log's identity, and pruning old events
-- and acknowledged alerts in short batches.
-- depends: 0004_mpesa_sync_v2

SET LOCAL lock_timeout = '5s';

-- The event log ------------------------------------------------------------------

-- One row about mpesa_sync.status_events as a whole.
--   install_id      written here, once per install: a new install is a new log
--   pruned_through  prune_v1 has deleted every event up to this id (0: none);
--                   it only grows, and a position before it cannot be honoured
CREATE TABLE mpesa_sync.event_log (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    install_id uuid NOT NULL DEFAULT gen_random_uuid(),
    pruned_through bigint NOT NULL DEFAULT 0 CHECK (pruned_through >= 0),
    installed_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO mpesa_sync.event_log DEFAULT VALUES;

-- The log as a reader sees it. A reader's position is (generation, event id),
-- and it is honoured exactly when the generation is this one and the id lies
-- between pruned_through and newest_event_id; any other position gets a reset.
--
-- generation names one log. It folds the install's id together with the oid
-- of the events table, so it changes whenever the log is replaced, without
-- anything having to write it: by a new install (a new install_id and a new
-- table) and by a restore from a dump (which creates the table anew, so the
-- restored log, though it holds the same ids, is another log). pg_upgrade
-- keeps table oids, and with them the generation.
--
-- newest_event_id is at least pruned_through, so that a log pruned empty
-- still knows where it stands. Both scans start after pruned_through: after a
-- large prune the index still holds the deleted entries until VACUUM.
CREATE VIEW mpesa_sync.event_log_v1 AS
SELECT
    md5(l.install_id::text || ':' || 'mpesa_sync.status_events'::regclass::oid::text)::uuid
        AS generation,
    l.pruned_through,
    (
        SELECT e.event_id
        FROM mpesa_sync.status_events AS e
        WHERE e.event_id > l.pruned_through
        ORDER BY e.event_id
        LIMIT 1
    ) AS oldest_event_id,
    greatest(
        l.pruned_through,
        (SELECT max(e.event_id) FROM mpesa_sync.status_events AS e)
    ) AS newest_event_id
FROM mpesa_sync.event_log AS l;

-- Retention ----------------------------------------------------------------------

-- Prune one batch: at most p_batch_size events and p_batch_size alerts, in the
-- caller's transaction, and say whether another call may find more ("more").
--
-- One batch per call, not a loop, on purpose: a function runs inside one
-- transaction, so a function that drained a year of backlog would hold its
-- locks and its dead rows until the end. A PROCEDURE could COMMIT between
-- batches, but not when it is called inside a transaction block (which is how
-- PostgREST, the Supabase client and many drivers call everything), nor from a
-- pg_cron job of more than one statement or in its background-worker mode. A
-- bounded batch works from every one of them; the loop lives with the caller:
-- `mpesa-sync prune` calls it until "more" is false, each call its own
-- transaction, and a pg_cron schedule calls it again every few minutes.
--
-- Events leave oldest first, as a prefix of the log: an event goes once it and
-- every event before it are older than the horizon (event_id order is commit
-- order; an event's "at" is taken just before its commit). So the log never
-- has a hole, and pruned_through says exactly which positions are gone.
-- Alerts go once acknowledged before the horizon; an open alert never goes.
--
-- Safe beside writers and relays: no writer touches an event once it has
-- committed, and no event can commit later with an id at or below one that
-- is already visible (commit order), so a batch can never take an event a
-- reader has not yet been able to see. The row lock on event_log makes two
-- prunes take turns. A reader whose position falls behind pruned_through is
-- reset, never silently moved on (see event_log_v1).
--
-- p_dry_run counts everything a full prune would delete now, in all its
-- batches, and deletes nothing; oldest_event_id is then the oldest event that
-- would remain.
CREATE FUNCTION mpesa_sync.prune_v1(
    p_older_than interval,
    p_batch_size integer DEFAULT 10000,
    p_dry_run boolean DEFAULT false
)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_horizon timestamptz;
    v_pruned bigint;
    v_cutoff bigint;
    v_events bigint := 0;
    v_alerts bigint := 0;
    v_oldest bigint;
BEGIN
    IF p_older_than IS NULL OR p_older_than <= interval '0' THEN
        RAISE EXCEPTION 'invalid p_older_than: must be a positive interval'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_batch_size IS NULL OR p_batch_size < 1 THEN
        RAISE EXCEPTION 'invalid p_batch_size: must be at least 1'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_horizon := now() - p_older_than;

    IF coalesce(p_dry_run, false) THEN
        SELECT l.pruned_through INTO v_pruned FROM mpesa_sync.event_log AS l;
        SELECT min(e.event_id) INTO v_oldest
        FROM mpesa_sync.status_events AS e
        WHERE e.event_id > v_pruned
          AND e.at >= v_horizon;
        SELECT count(*) INTO v_events
        FROM mpesa_sync.status_events AS e
        WHERE e.event_id > v_pruned
          AND (v_oldest IS NULL OR e.event_id < v_oldest);
        SELECT count(*) INTO v_alerts
        FROM mpesa_sync.alerts AS a
        WHERE a.acknowledged_at < v_horizon;
        RETURN jsonb_build_object(
            'events_deleted', v_events,
            'alerts_deleted', v_alerts,
            'oldest_event_id', v_oldest,
            'more', false
        );
    END IF;

    SELECT l.pruned_through INTO v_pruned FROM mpesa_sync.event_log AS l FOR UPDATE;

    -- The batch: the oldest events, in id order, up to the first one that is
    -- not yet older than the horizon.
    SELECT max(h.event_id) INTO v_cutoff
    FROM (
        SELECT b.event_id, bool_and(b.at < v_horizon) OVER (ORDER BY b.event_id) AS old
        FROM (
            SELECT e.event_id, e.at
            FROM mpesa_sync.status_events AS e
            WHERE e.event_id > v_pruned
            ORDER BY e.event_id
            LIMIT p_batch_size
        ) AS b
    ) AS h
    WHERE h.old;

    IF v_cutoff IS NOT NULL THEN
        DELETE FROM mpesa_sync.status_events AS e
        WHERE e.event_id > v_pruned
          AND e.event_id <= v_cutoff;
        GET DIAGNOSTICS v_events = ROW_COUNT;
        UPDATE mpesa_sync.event_log SET pruned_through = v_cutoff;
    END IF;

    DELETE FROM mpesa_sync.alerts AS a
    WHERE a.id IN (
        SELECT o.id
        FROM mpesa_sync.alerts AS o
        WHERE o.acknowledged_at < v_horizon
        ORDER BY o.id
        LIMIT p_batch_size
    );
    GET DIAGNOSTICS v_alerts = ROW_COUNT;

    SELECT s.oldest_event_id INTO v_oldest FROM mpesa_sync.event_log_v1 AS s;
    RETURN jsonb_build_object(
        'events_deleted', v_events,
        'alerts_deleted', v_alerts,
        'oldest_event_id', v_oldest,
        'more', v_events = p_batch_size OR v_alerts = p_batch_size
    );
END
$$;

-- Privileges ---------------------------------------------------------------------

-- The owner's, like everything else here but payment_options and save_settings.
REVOKE ALL ON mpesa_sync.event_log, mpesa_sync.event_log_v1 FROM PUBLIC;
REVOKE ALL ON FUNCTION mpesa_sync.prune_v1(interval, integer, boolean) FROM PUBLIC;
