-- mpesa-sync: the schema the migrations produce.
--
-- This file is the readable statement of what an installed database holds in
-- schema mpesa_sync and on the host's tables. migrations/ holds how a live
-- database gets here; tests/test_migrations.py builds one database from this file
-- and one from the migrations and asserts their catalogs are identical.
--
-- The rule kept by everything below:
--   bars.mpesa_enabled is true exactly when the bar has at least one
--   mpesa_credentials row (tenant_id = bars.id) whose is_active is true.
--   NULL counts as false; a bar with no row is false.
--
-- Objects that carry behaviour carry a version (_v1, _v2, _v3). A behaviour change
-- adds the next version in a new migration, which drops the one it replaces.
--
-- Every function that touches host tables is SECURITY DEFINER with
-- search_path pinned to pg_catalog, pg_temp and fully qualified names, so a
-- writer who may change mpesa_credentials but not bars still syncs, and no
-- one can hijack a function through search_path.

CREATE SCHEMA mpesa_sync;

COMMENT ON SCHEMA mpesa_sync IS
    'mpesa-sync: keeps bars.mpesa_enabled in step with mpesa_credentials.is_active';

-- Tables ---------------------------------------------------------------------

-- Host objects the install created because they were missing, so that a
-- rollback removes exactly those and nothing the host owned before.
CREATE TABLE mpesa_sync.installed_host_objects (
    object text PRIMARY KEY  -- 'table:public.bars', 'column:public.bars.mpesa_enabled'
);

-- Things a person must look at: a bar that refused a fix, a save that failed
-- after its retries. Each new row is also announced on channel mpesa_alerts.
CREATE TABLE mpesa_sync.alerts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    kind text NOT NULL,
    bar_id uuid,
    detail jsonb NOT NULL DEFAULT '{}'::jsonb,
    acknowledged_at timestamptz
);

CREATE INDEX alerts_open_idx
    ON mpesa_sync.alerts (id)
    WHERE acknowledged_at IS NULL;

-- One row per real change of a bar's mpesa_enabled. event_id order is commit
-- order (see publish_status_events_v3), so a reader that remembers the last id
-- it delivered can resume without skipping or repeating an event.
CREATE TABLE mpesa_sync.status_events (
    event_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bar_id uuid NOT NULL,
    mpesa_enabled boolean NOT NULL,
    source text NOT NULL,  -- credentials | correction | reconcile
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX status_events_bar_idx
    ON mpesa_sync.status_events (bar_id, event_id);

-- Traces for transactions that read an older snapshot (REPEATABLE READ and
-- SERIALIZABLE). Such a transaction cannot see a credential change committed
-- after its snapshot, so before it syncs a bar it checks that none was: a
-- changed or deleted row shows when the transaction locks the rows it can see
-- (see credentials_changed_v3), but a row added to the bar after its snapshot is
-- invisible. Every statement that adds a row to a bar (an INSERT, or an
-- UPDATE that moves a row to another bar) therefore bumps the bar's token,
-- and so does every credential write of such a transaction: bumping a token
-- that a transaction committed after our snapshot has bumped is a
-- serialization failure (40001), which the caller retries. One row per bar;
-- writers of different bars touch different rows.
CREATE TABLE mpesa_sync.bar_write_tokens (
    bar_id uuid PRIMARY KEY,
    writes bigint NOT NULL DEFAULT 1
) WITH (fillfactor = 50);  -- room for HOT updates: a bump never touches the index

-- The status changes of transactions still in flight: one row per bar a
-- transaction changed, with the value the bar had before the transaction
-- first changed it and the value it has now. Written whenever a bar's
-- mpesa_enabled changes (by credentials_changed_v3 or record_status_changes_v3, within the statement
-- that changed it, so a rolled-back savepoint takes its rows with it), turned
-- into status events and deleted by the same transaction when it commits.
-- Rows of other transactions are never visible, so nothing here is shared.
-- UNLOGGED: rows live only inside one transaction, and a crash aborts every
-- transaction that could have written them.
CREATE UNLOGGED TABLE mpesa_sync.pending_changes (
    xid xid8 NOT NULL,
    bar_id uuid NOT NULL,
    was_enabled boolean,
    mpesa_enabled boolean NOT NULL,
    source text NOT NULL,
    -- True on the first row a transaction writes here: its insert queues the
    -- deferred trigger that publishes the transaction's changes at commit,
    -- so that trigger fires once per transaction, not once per change.
    opens_commit boolean NOT NULL,
    PRIMARY KEY (xid, bar_id)
);

-- One insert and one delete per change. Vacuum after a fixed number of dead
-- rows: a million-row flip makes the table briefly large, and a threshold
-- that grew with it (the default's 20%) would let the small transactions
-- after it fill the table with dead rows.
ALTER TABLE mpesa_sync.pending_changes SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000
);

-- The rule ---------------------------------------------------------------------

-- Every bar with its stored and its expected status. Verify, reconcile and
-- the credential triggers all read the rule through this view; correct_bar_v1
-- states it once more for a single row. The EXISTS is written out rather
-- than called as a function: PostgreSQL does not inline a SQL function whose
-- body holds a subquery, and a call per row costs ten times the probe.
CREATE VIEW mpesa_sync.bar_status_v1 AS
SELECT
    b.id AS bar_id,
    b.mpesa_enabled,
    EXISTS (
        SELECT 1
        FROM public.mpesa_credentials AS c
        WHERE c.tenant_id = b.id
          AND c.is_active
    ) AS expected
FROM public.bars AS b;

-- Alerts -----------------------------------------------------------------------

CREATE FUNCTION mpesa_sync.raise_alert_v1(p_kind text, p_bar_id uuid, p_detail jsonb)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_alert mpesa_sync.alerts;
BEGIN
    INSERT INTO mpesa_sync.alerts (kind, bar_id, detail)
    VALUES (p_kind, p_bar_id, coalesce(p_detail, '{}'::jsonb))
    RETURNING * INTO v_alert;

    PERFORM pg_notify(
        'mpesa_alerts',
        json_build_object(
            'id', v_alert.id,
            'kind', v_alert.kind,
            'bar_id', v_alert.bar_id,
            'created_at', v_alert.created_at
        )::text
    );
    RETURN v_alert.id;
END
$$;

-- Sync -------------------------------------------------------------------------

-- AFTER ... FOR EACH STATEMENT on mpesa_credentials (INSERT, UPDATE, DELETE):
-- bring the bars the statement touched in line with their credentials, in
-- the caller's transaction.
--
-- 1. The touched bars (only rows whose is_active or tenant_id changed; a row
--    that moved recomputes both bars), locked in id order FOR NO KEY UPDATE,
--    each with the value it has now. Writers of one bar take turns here, so
--    two transactions that each change a different credential row of one bar
--    cannot both decide from a snapshot that misses the other's change;
--    writers of different bars lock different rows. (NO KEY UPDATE does not
--    conflict with the KEY SHARE lock of a credential insert's foreign key
--    check.)
-- 2. REPEATABLE READ and SERIALIZABLE: the snapshot check (see
--    bar_write_tokens). READ COMMITTED: the tokens of bars a row was added to.
-- 3. Recompute in a new statement, which under READ COMMITTED takes a fresh
--    snapshot and so sees every change committed by a writer we waited for
--    in step 1; write the bars whose value changes and stage each change for
--    publish_status_events_v3.
--
-- One row of one bar (a toggle, a save): scalar statements, each an index
-- lookup of that bar. More: each step is one statement over all the rows,
-- with the bars locked and the rule probed through LATERAL subqueries, which
-- can only run as one index lookup per bar. The plans are generic
-- (plan_cache_mode), so none is chosen per call, and enable_seqscan = off
-- keeps a plan made while a table was small from scanning it once it is
-- large; both are right at every size.
--
-- The bars are written with mpesa_sync.sync_depth set to this trigger depth:
-- the correction trigger and the staging trigger on bars skip exactly that
-- write (its value was computed under the row lock, and is staged here).
CREATE FUNCTION mpesa_sync.credentials_changed_v3()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
    v_touched uuid[];
    v_added boolean[];
    v_bar_ids uuid[];
    v_was boolean[];
    v_added_to uuid[];
    v_bump uuid[];
    v_snapshot_check boolean;
    v_visible bigint;
    v_locked bigint;
    -- mpesa_sync.sync_depth as the caller left it, put back after our write
    -- (a host trigger that fires inside our write may write credentials, and
    -- so run this function one level deeper)
    v_depth_before text := current_setting('mpesa_sync.sync_depth', true);
    v_setting text;
    v_rows bigint;
    v_bar_id uuid;
    v_old_bar uuid;
    v_old_active boolean;
    v_new_active boolean;
    v_was_one boolean;
    v_expected boolean;
    v_written boolean;
    v_one boolean := false;
BEGIN
    -- One row, one bar: the statements of a toggle, each an index lookup of
    -- that bar. (LIMIT 2 tells one row from more without reading them all.)
    IF TG_OP = 'UPDATE' THEN
        SELECT o.tenant_id, o.is_active, n.tenant_id, n.is_active, count(*) OVER ()
        INTO v_old_bar, v_old_active, v_bar_id, v_new_active, v_rows
        FROM (SELECT o.tenant_id, o.is_active FROM old_rows AS o LIMIT 2) AS o
        CROSS JOIN (SELECT n.tenant_id, n.is_active FROM new_rows AS n LIMIT 2) AS n
        LIMIT 1;
        IF v_rows = 1 AND v_old_bar = v_bar_id THEN
            IF v_old_active IS NOT DISTINCT FROM v_new_active THEN
                RETURN NULL;  -- nothing the rule reads changed
            END IF;
        ELSE
            v_bar_id := NULL;
        END IF;
    ELSIF TG_OP = 'INSERT' THEN
        SELECT n.tenant_id, count(*) OVER ()
        INTO v_bar_id, v_rows
        FROM (SELECT n.tenant_id FROM new_rows AS n LIMIT 2) AS n
        LIMIT 1;
    ELSE
        SELECT o.tenant_id, count(*) OVER ()
        INTO v_bar_id, v_rows
        FROM (SELECT o.tenant_id FROM old_rows AS o LIMIT 2) AS o
        LIMIT 1;
    END IF;

    IF v_rows = 1 AND v_bar_id IS NOT NULL THEN
        SELECT b.mpesa_enabled INTO v_was_one
        FROM public.bars AS b
        WHERE b.id = v_bar_id
        FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            RETURN NULL;  -- the bar is gone (deleted in this transaction)
        END IF;
        v_one := true;
        v_bar_ids := ARRAY[v_bar_id];
        IF TG_OP = 'INSERT' THEN
            v_added_to := v_bar_ids;
        END IF;
    -- Many rows: the touched bars in id order (each with whether a row was
    -- added to it), then the same steps as one set-based statement each.
    ELSE
        IF TG_OP = 'UPDATE' THEN
            -- FULL JOIN pairs the old and new rows with a hash join at every
            -- size (transition tables carry no statistics; a nested loop
            -- would be quadratic).
            SELECT array_agg(t.bar_id ORDER BY t.bar_id), array_agg(t.added ORDER BY t.bar_id)
            INTO v_touched, v_added
            FROM (
                SELECT t.bar_id, bool_or(t.added) AS added
                FROM old_rows AS o
                FULL JOIN new_rows AS n ON n.id = o.id
                CROSS JOIN LATERAL (
                    VALUES (o.tenant_id, false),
                           (n.tenant_id, o.tenant_id IS DISTINCT FROM n.tenant_id)
                ) AS t (bar_id, added)
                WHERE t.bar_id IS NOT NULL
                  AND (o.id IS NULL
                       OR n.id IS NULL
                       OR o.tenant_id IS DISTINCT FROM n.tenant_id
                       OR o.is_active IS DISTINCT FROM n.is_active)
                GROUP BY t.bar_id
            ) AS t;
        ELSIF TG_OP = 'INSERT' THEN
            SELECT array_agg(t.bar_id ORDER BY t.bar_id), array_agg(true)
            INTO v_touched, v_added
            FROM (SELECT DISTINCT n.tenant_id AS bar_id FROM new_rows AS n) AS t;
        ELSE  -- DELETE
            SELECT array_agg(t.bar_id ORDER BY t.bar_id), array_agg(false)
            INTO v_touched, v_added
            FROM (SELECT DISTINCT o.tenant_id AS bar_id FROM old_rows AS o) AS t;
        END IF;
        -- Each bar locked by its own index lookup, in the array's order.
        SELECT array_agg(b.id), array_agg(b.mpesa_enabled), array_agg(b.id) FILTER (WHERE t.added)
        INTO v_bar_ids, v_was, v_added_to
        FROM unnest(v_touched, v_added) AS t (bar_id, added)
        CROSS JOIN LATERAL (
            SELECT b.id, b.mpesa_enabled
            FROM public.bars AS b
            WHERE b.id = t.bar_id
            FOR NO KEY UPDATE
        ) AS b;
    END IF;

    IF v_bar_ids IS NULL THEN
        RETURN NULL;  -- no bar to sync (none touched, or each deleted with its bar)
    END IF;

    -- 2.
    v_snapshot_check := current_setting('transaction_isolation') <> 'read committed';
    -- REPEATABLE READ and above bump every bar's token (one that a
    -- transaction committed after our snapshot bumped is a serialization
    -- failure); READ COMMITTED those of bars a row was added to.
    v_bump := CASE WHEN v_snapshot_check THEN v_bar_ids ELSE v_added_to END;
    IF v_bump IS NOT NULL THEN
        INSERT INTO mpesa_sync.bar_write_tokens AS t (bar_id)
        SELECT u.bar_id FROM unnest(v_bump) AS u (bar_id) ORDER BY u.bar_id
        ON CONFLICT (bar_id) DO UPDATE SET writes = t.writes + 1;
    END IF;
    IF v_snapshot_check THEN
        -- Lock the credential rows our snapshot sees: a row changed or deleted
        -- by a transaction committed after our snapshot fails the lock with
        -- 40001; a row another transaction is changing right now is skipped
        -- (waiting for it could deadlock with our bar locks) and counted.
        SELECT count(*),
               count(*) FILTER (WHERE EXISTS (
                   SELECT 1
                   FROM public.mpesa_credentials AS l
                   WHERE l.id = c.id
                   FOR SHARE SKIP LOCKED
               ))
        INTO v_visible, v_locked
        FROM public.mpesa_credentials AS c
        WHERE c.tenant_id = ANY (v_bar_ids);
        IF v_locked < v_visible THEN
            RAISE EXCEPTION 'mpesa_sync: a credential of a bar being synced is being changed concurrently'
                USING ERRCODE = 'serialization_failure',
                      HINT = 'retry the transaction';
        END IF;
    END IF;

    -- 3.
    IF v_one THEN
        v_expected := EXISTS (
            SELECT 1
            FROM public.mpesa_credentials AS c
            WHERE c.tenant_id = v_bar_id
              AND c.is_active
        );
        IF v_expected IS NOT DISTINCT FROM v_was_one THEN
            RETURN NULL;
        END IF;
        v_setting := set_config('mpesa_sync.sync_depth', pg_trigger_depth()::text, true);
        -- (what was written: a host's BEFORE trigger may change or skip it)
        UPDATE public.bars AS b
        SET mpesa_enabled = v_expected
        WHERE b.id = v_bar_id
        RETURNING b.mpesa_enabled INTO v_written;
        v_setting := set_config('mpesa_sync.sync_depth', coalesce(v_depth_before, ''), true);
        IF FOUND THEN
            INSERT INTO mpesa_sync.pending_changes AS p (
                xid, bar_id, was_enabled, mpesa_enabled, source, opens_commit
            )
            SELECT pg_current_xact_id(), v_bar_id, v_was_one, v_written, 'credentials',
                   NOT EXISTS (
                       SELECT 1 FROM mpesa_sync.pending_changes AS q
                       WHERE q.xid = pg_current_xact_id()
                   )
            ON CONFLICT (xid, bar_id) DO UPDATE
            SET mpesa_enabled = excluded.mpesa_enabled,
                source = excluded.source;
        END IF;
        RETURN NULL;
    END IF;
    v_setting := set_config('mpesa_sync.sync_depth', pg_trigger_depth()::text, true);
    WITH changed AS (
        UPDATE public.bars AS b
        SET mpesa_enabled = s.expected
        FROM (
            -- The rule, as in bar_status_v1, as a LATERAL probe: an index
            -- lookup per bar at every size, where a generic plan of EXISTS
            -- may hash every active credential.
            SELECT u.bar_id, u.was, a.active IS NOT NULL AS expected
            FROM unnest(v_bar_ids, v_was) AS u (bar_id, was)
            LEFT JOIN LATERAL (
                SELECT true AS active
                FROM public.mpesa_credentials AS c
                WHERE c.tenant_id = u.bar_id
                  AND c.is_active
                LIMIT 1
            ) AS a ON true
        ) AS s
        WHERE b.id = s.bar_id
          AND s.was IS DISTINCT FROM s.expected
        RETURNING b.id, s.was, b.mpesa_enabled
    )
    INSERT INTO mpesa_sync.pending_changes AS p (
        xid, bar_id, was_enabled, mpesa_enabled, source, opens_commit
    )
    SELECT
        pg_current_xact_id(),
        c.id,
        c.was,
        c.mpesa_enabled,
        'credentials',
        row_number() OVER () = 1 AND NOT EXISTS (
            SELECT 1 FROM mpesa_sync.pending_changes AS q WHERE q.xid = pg_current_xact_id()
        )
    FROM changed AS c
    ON CONFLICT (xid, bar_id) DO UPDATE
    SET mpesa_enabled = excluded.mpesa_enabled,
        source = excluded.source;
    v_setting := set_config('mpesa_sync.sync_depth', coalesce(v_depth_before, ''), true);
    RETURN NULL;
END
$$;

-- AFTER TRUNCATE ... FOR EACH STATEMENT on mpesa_credentials: no credential is
-- left, so every bar that is not false becomes false. TRUNCATE holds the
-- table exclusively, so no credential writer runs beside it; the write goes
-- through the correction and staging triggers like any other write of bars.
CREATE FUNCTION mpesa_sync.credentials_truncated_v3()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- The label of the events this function causes, read by the staging
    -- trigger; put back on the way out.
    v_source_before text := current_setting('mpesa_sync.source', true);
BEGIN
    PERFORM set_config('mpesa_sync.source', 'credentials', true);
    UPDATE public.bars AS b
    SET mpesa_enabled = false
    WHERE b.mpesa_enabled IS DISTINCT FROM false;
    PERFORM set_config('mpesa_sync.source', coalesce(v_source_before, ''), true);
    RETURN NULL;
END
$$;

-- BEFORE INSERT, and BEFORE UPDATE when the value changes, on bars: whatever a
-- writer puts in mpesa_enabled, the row gets the credentials' value. Row locks
-- are held when this runs, and its query takes a fresh snapshot, so a value
-- computed by a racing reconcile from an older snapshot is never written.
CREATE FUNCTION mpesa_sync.correct_bar_v1()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- The rule, as in bar_status_v1.
    NEW.mpesa_enabled := EXISTS (
        SELECT 1
        FROM public.mpesa_credentials AS c
        WHERE c.tenant_id = NEW.id
          AND c.is_active
    );
    RETURN NEW;
END
$$;

-- AFTER UPDATE ... FOR EACH STATEMENT on bars, for every write of bars but
-- ours: each real change of a bar's mpesa_enabled,
-- staged in pending_changes for publish_status_events_v3 at commit. The source
-- comes from the function that made the change (set while it runs: reconcile,
-- save_settings), else it was a corrected direct write. A bar changed before
-- in this transaction keeps the value it had before the transaction and takes
-- its new value and source from this change. The transaction's first staged
-- row queues the publish at commit (opens_commit).
-- FULL JOIN pairs the transition tables with a hash join at every size.
CREATE FUNCTION mpesa_sync.record_status_changes_v3()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
AS $$
BEGIN
    -- Our own write, staged by credentials_changed_v3: the statement it runs
    -- at its trigger depth, one below this function's. (The same test as the
    -- correction trigger's WHEN, made here rather than in a WHEN clause of
    -- this trigger: a WHEN is read from the catalog for every statement, and
    -- for one statement costs more than this IF.)
    IF pg_trigger_depth() > 1
       AND current_setting('mpesa_sync.sync_depth', true) = (pg_trigger_depth() - 1)::text THEN
        RETURN NULL;
    END IF;
    INSERT INTO mpesa_sync.pending_changes AS p (
        xid, bar_id, was_enabled, mpesa_enabled, source, opens_commit
    )
    SELECT
        pg_current_xact_id(),
        n.id,
        o.mpesa_enabled,
        n.mpesa_enabled,
        coalesce(nullif(current_setting('mpesa_sync.source', true), ''), 'correction'),
        row_number() OVER () = 1 AND NOT EXISTS (
            SELECT 1 FROM mpesa_sync.pending_changes AS q WHERE q.xid = pg_current_xact_id()
        )
    FROM new_rows AS n
    FULL JOIN old_rows AS o ON o.id = n.id
    WHERE o.mpesa_enabled IS DISTINCT FROM n.mpesa_enabled
    ON CONFLICT (xid, bar_id) DO UPDATE
    SET mpesa_enabled = excluded.mpesa_enabled,
        source = excluded.source;
    RETURN NULL;
END
$$;

-- Events at commit ------------------------------------------------------------------

-- The deferred constraint trigger on pending_changes, fired once per
-- transaction (opens_commit) when it commits (or at PREPARE TRANSACTION, or
-- SET CONSTRAINTS ALL IMMEDIATE): the transaction's net changes become
-- events, numbered in commit order, and notifications, in one statement.
--
-- A bar's net change is the value it commits with against its value before
-- the transaction first changed it: a bar switched off and on again is no
-- change and gets no event.
--
-- Event ids are handed out under a transaction-level advisory lock taken
-- here, at commit, and released after the commit is visible to everyone, so
-- ids are strictly increasing in commit order (see v2). The lock is taken by
-- "locked", which yields a row only when there is a net change, so a
-- transaction without one takes no lock (and PREPARE TRANSACTION of it holds
-- none). No event row can be made before it: "inserted" reads the join of
-- the changes with "locked", which produces nothing until both are read.
-- 470037132129 is 'mpesa' in ASCII.
CREATE FUNCTION mpesa_sync.publish_status_events_v3()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
AS $$
DECLARE
    v_notified bigint;
BEGIN
    WITH published AS (
        DELETE FROM mpesa_sync.pending_changes AS p
        WHERE p.xid = NEW.xid
        RETURNING p.bar_id, p.was_enabled, p.mpesa_enabled, p.source
    ),
    changes AS (
        SELECT p.bar_id, p.mpesa_enabled, p.source
        FROM published AS p
        WHERE p.mpesa_enabled IS DISTINCT FROM p.was_enabled
    ),
    locked AS (
        SELECT pg_advisory_xact_lock(470037132129)
        FROM (SELECT 1 FROM changes LIMIT 1) AS any_change
    ),
    inserted AS (
        INSERT INTO mpesa_sync.status_events (bar_id, mpesa_enabled, source)
        SELECT c.bar_id, c.mpesa_enabled, c.source
        FROM changes AS c
        CROSS JOIN locked
        ORDER BY c.bar_id
        RETURNING event_id, bar_id, mpesa_enabled, source, at
    )
    -- The payload spelled out (json_build_object costs a tenth of a large
    -- flip); the same keys and values as in v1 and v2.
    SELECT count(pg_notify(
        'mpesa_status',
        '{"event_id": ' || i.event_id
            || ', "bar_id": "' || i.bar_id
            || '", "mpesa_enabled": ' || i.mpesa_enabled
            || ', "source": ' || to_json(i.source)
            || ', "at": ' || to_json(i.at) || '}'
    ))
    INTO v_notified
    FROM inserted AS i;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER mpesa_sync_publish_v3
    AFTER INSERT ON mpesa_sync.pending_changes
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (NEW.opens_commit)
    EXECUTE FUNCTION mpesa_sync.publish_status_events_v3();

-- Reconcile ----------------------------------------------------------------------

-- Fix the given bars: what `mpesa-sync reconcile` calls, one batch at a
-- time. The whole set is tried in one statement; if any bar refuses (a host
-- CHECK, a host trigger, a lock timeout), the set is retried bar by bar, and
-- each bar that still refuses is left as it is, raised as a WARNING with the
-- database's error, recorded in alerts, and returned.
--
-- Unlike a credential write it takes no lock before it writes: it changes
-- only bars that have drifted, and each of those it locks by writing it. The
-- value it computes may come from an older snapshot than the row it lands
-- on (a staff save committed while it waited for the row); correct_bar_v1
-- recomputes it under the row lock, so a newer credential change is never
-- overwritten with stale data.
CREATE FUNCTION mpesa_sync.fix_bars_v2(p_bar_ids uuid[])
RETURNS TABLE (bar_id uuid, error text, error_sqlstate text, error_constraint text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- The label of the events this function causes, read by the triggers
    -- it fires. Set here with set_config() and restored on the way out
    -- (a function's SET clause of a custom setting needs a superuser).
    v_source_before text := current_setting('mpesa_sync.source', true);
    v_bar_id uuid;
BEGIN
    PERFORM set_config('mpesa_sync.source', 'reconcile', true);
    BEGIN
        -- A cached plan, as in v1: reconcile's batches are alike, and a plan
        -- made for each (as sync_bars_v2 plans many bars) measured slower.
        UPDATE public.bars AS b
        SET mpesa_enabled = s.expected
        FROM mpesa_sync.bar_status_v1 AS s
        WHERE s.bar_id = b.id
          AND s.bar_id = ANY (p_bar_ids)
          AND s.mpesa_enabled IS DISTINCT FROM s.expected;
        PERFORM set_config('mpesa_sync.source', coalesce(v_source_before, ''), true);
        RETURN;
    EXCEPTION WHEN OTHERS THEN
        NULL;  -- some bar refused: retry bar by bar below
    END;

    FOR v_bar_id IN SELECT DISTINCT u FROM unnest(p_bar_ids) AS u ORDER BY u LOOP
        BEGIN
            UPDATE public.bars AS b
            SET mpesa_enabled = s.expected
            FROM mpesa_sync.bar_status_v1 AS s
            WHERE s.bar_id = b.id
              AND s.bar_id = v_bar_id
              AND s.mpesa_enabled IS DISTINCT FROM s.expected;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS
                error = MESSAGE_TEXT,
                error_sqlstate = RETURNED_SQLSTATE,
                error_constraint = CONSTRAINT_NAME;
            bar_id := v_bar_id;
            error_constraint := nullif(error_constraint, '');
            RAISE WARNING 'mpesa_sync: bar % refused its status fix: % (SQLSTATE %)',
                v_bar_id, error, error_sqlstate;
            PERFORM mpesa_sync.raise_alert_v1(
                'fix_refused',
                v_bar_id,
                jsonb_build_object(
                    'error', error,
                    'sqlstate', error_sqlstate,
                    'constraint', error_constraint
                )
            );
            RETURN NEXT;
        END;
    END LOOP;
    PERFORM set_config('mpesa_sync.source', coalesce(v_source_before, ''), true);
END
$$;

-- Triggers -----------------------------------------------------------------------

CREATE TRIGGER mpesa_sync_credentials_insert_v3
    AFTER INSERT ON public.mpesa_credentials
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mpesa_sync.credentials_changed_v3();

CREATE TRIGGER mpesa_sync_credentials_update_v3
    AFTER UPDATE ON public.mpesa_credentials
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mpesa_sync.credentials_changed_v3();

CREATE TRIGGER mpesa_sync_credentials_delete_v3
    AFTER DELETE ON public.mpesa_credentials
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mpesa_sync.credentials_changed_v3();

CREATE TRIGGER mpesa_sync_credentials_truncate_v3
    AFTER TRUNCATE ON public.mpesa_credentials
    FOR EACH STATEMENT EXECUTE FUNCTION mpesa_sync.credentials_truncated_v3();

-- BEFORE triggers fire in name order; the zz_ prefix makes ours fire after the
-- host's, so a host trigger cannot overwrite the corrected value.
CREATE TRIGGER zz_mpesa_sync_correct_insert_v1
    BEFORE INSERT ON public.bars
    FOR EACH ROW EXECUTE FUNCTION mpesa_sync.correct_bar_v1();

-- Whatever a writer puts in mpesa_enabled, the row gets the credentials'
-- value (correct_bar_v1, as since v1), except in our own write: the
-- statement credentials_changed_v3 runs with mpesa_sync.sync_depth set to its
-- trigger depth, whose values it computed under the row lock. That write is
-- told apart by two things together: the trigger depth, which no session can
-- fake (pg_trigger_depth() is 0 outside every trigger), and the setting,
-- which names exactly that depth while the statement runs. A host trigger
-- firing inside our statement runs one level deeper and is corrected; so is
-- every write outside a trigger, whatever the setting says.
CREATE TRIGGER zz_mpesa_sync_correct_update_v3
    BEFORE UPDATE ON public.bars
    FOR EACH ROW
    WHEN (NEW.mpesa_enabled IS DISTINCT FROM OLD.mpesa_enabled
          AND (pg_trigger_depth() = 0
               OR current_setting('mpesa_sync.sync_depth', true)
                  IS DISTINCT FROM pg_trigger_depth()::text))
    EXECUTE FUNCTION mpesa_sync.correct_bar_v1();

-- Every other write of bars is staged here (ours is staged by
-- credentials_changed_v3 itself: see the function).
CREATE TRIGGER mpesa_sync_status_changes_v3
    AFTER UPDATE ON public.bars
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mpesa_sync.record_status_changes_v3();

-- What customers read ------------------------------------------------------------

-- No secret column. Runs with its owner's rights, so customer roles read it
-- without any right on mpesa_credentials. environment and business_shortcode
-- are those of the credential a payment would use (production before
-- sandbox), and only while M-Pesa is available.
CREATE VIEW mpesa_sync.payment_options AS
SELECT
    b.id AS bar_id,
    (b.mpesa_enabled IS TRUE AND usable.tenant_id IS NOT NULL) AS mpesa_available,
    CASE WHEN b.mpesa_enabled IS TRUE THEN usable.environment END AS environment,
    CASE WHEN b.mpesa_enabled IS TRUE THEN usable.business_shortcode END AS business_shortcode
FROM public.bars AS b
LEFT JOIN LATERAL (
    SELECT c.tenant_id, c.environment, c.business_shortcode
    FROM public.mpesa_credentials AS c
    WHERE c.tenant_id = b.id
      AND c.is_active
      AND length(c.consumer_key_enc) > 0
      AND length(c.consumer_secret_enc) > 0
      AND length(c.passkey_enc) > 0
    ORDER BY c.environment = 'production' DESC
    LIMIT 1
) AS usable ON true;

-- Privileges ---------------------------------------------------------------------

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA mpesa_sync FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA mpesa_sync FROM PUBLIC;

-- Customer-facing roles (migration 0006): on Supabase, anon and authenticated
-- read nothing of ours (a host may grant payment_options to them with
-- sql/optional/customer_payment_options.sql); service_role, the staff app's
-- server-side role, reads payment_options. On plain PostgreSQL, without those
-- roles, PUBLIC reads payment_options.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT SELECT ON mpesa_sync.payment_options TO service_role;
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_roles WHERE rolname IN ('anon', 'authenticated')
    ) THEN
        GRANT USAGE ON SCHEMA mpesa_sync TO PUBLIC;
        GRANT SELECT ON mpesa_sync.payment_options TO PUBLIC;
    END IF;
END
$$;

-- Settings (migrations 0003, 0004, 0007) --------------------------------------------------------

-- The settings API: same name, arguments, validation and result as in 0003;
-- a bar that had drifted before the call is now fixed through the correction
-- trigger, as reconcile fixes it.
CREATE FUNCTION mpesa_sync.save_settings(
    p_bar_id uuid,
    p_environment text,
    p_business_shortcode text,
    p_consumer_key_enc bytea,
    p_consumer_secret_enc bytea,
    p_passkey_enc bytea,
    p_is_active boolean
)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- The label of the events this function causes, read by the triggers
    -- it fires. Set here with set_config() and restored on the way out
    -- (a function's SET clause of a custom setting needs a superuser).
    v_source_before text := current_setting('mpesa_sync.source', true);
    v_credential_id uuid;
    v_status mpesa_sync.bar_status_v1;
BEGIN
    PERFORM set_config('mpesa_sync.source', 'credentials', true);
    IF p_bar_id IS NULL THEN
        RAISE EXCEPTION 'invalid bar_id: required'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'bar_id';
    END IF;
    IF p_environment IS NULL OR p_environment NOT IN ('sandbox', 'production') THEN
        RAISE EXCEPTION 'invalid environment: must be sandbox or production'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'environment';
    END IF;
    IF p_business_shortcode IS NULL OR p_business_shortcode !~ '^[0-9]{5,7}$' THEN
        RAISE EXCEPTION 'invalid business_shortcode: must be 5 to 7 digits'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'business_shortcode';
    END IF;
    IF coalesce(octet_length(p_consumer_key_enc), 0) = 0 THEN
        RAISE EXCEPTION 'invalid consumer_key_enc: required and must not be empty'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'consumer_key_enc';
    END IF;
    IF coalesce(octet_length(p_consumer_secret_enc), 0) = 0 THEN
        RAISE EXCEPTION 'invalid consumer_secret_enc: required and must not be empty'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'consumer_secret_enc';
    END IF;
    IF coalesce(octet_length(p_passkey_enc), 0) = 0 THEN
        RAISE EXCEPTION 'invalid passkey_enc: required and must not be empty'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'passkey_enc';
    END IF;
    IF p_is_active IS NULL THEN
        RAISE EXCEPTION 'invalid is_active: required'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'is_active';
    END IF;
    -- A bar deleted after this check still fails, on the foreign key, with
    -- the same SQLSTATE.
    IF NOT EXISTS (SELECT 1 FROM public.bars AS b WHERE b.id = p_bar_id) THEN
        RAISE EXCEPTION 'unknown bar_id: no bar %', p_bar_id
            USING ERRCODE = 'foreign_key_violation', COLUMN = 'bar_id';
    END IF;

    INSERT INTO public.mpesa_credentials AS c (
        tenant_id, environment, business_shortcode,
        consumer_key_enc, consumer_secret_enc, passkey_enc, is_active
    )
    VALUES (
        p_bar_id, p_environment, p_business_shortcode,
        p_consumer_key_enc, p_consumer_secret_enc, p_passkey_enc, p_is_active
    )
    ON CONFLICT (tenant_id, environment) DO UPDATE
    SET business_shortcode = excluded.business_shortcode,
        consumer_key_enc = excluded.consumer_key_enc,
        consumer_secret_enc = excluded.consumer_secret_enc,
        passkey_enc = excluded.passkey_enc,
        is_active = excluded.is_active
    RETURNING c.id INTO v_credential_id;

    -- The upsert's trigger synced the bar when is_active changed; a bar that
    -- had drifted before this call is fixed here, as reconcile fixes it: the
    -- correction trigger recomputes the value under the bar's row lock.
    SELECT s.* INTO v_status
    FROM mpesa_sync.bar_status_v1 AS s
    WHERE s.bar_id = p_bar_id;

    IF v_status.mpesa_enabled IS DISTINCT FROM v_status.expected THEN
        UPDATE public.bars AS b
        SET mpesa_enabled = v_status.expected
        WHERE b.id = p_bar_id;
        SELECT s.* INTO v_status
        FROM mpesa_sync.bar_status_v1 AS s
        WHERE s.bar_id = p_bar_id;
    END IF;

    PERFORM set_config('mpesa_sync.source', coalesce(v_source_before, ''), true);
    RETURN jsonb_build_object(
        'success', v_status.mpesa_enabled IS NOT DISTINCT FROM v_status.expected,
        'credentials_saved', true,
        'status_synced', v_status.mpesa_enabled IS NOT DISTINCT FROM v_status.expected,
        'mpesa_enabled', v_status.mpesa_enabled,
        'bar_id', p_bar_id,
        'environment', p_environment,
        'is_active', p_is_active,
        'credential_id', v_credential_id
    );
END
$$;

-- The staff app's role only: Supabase's service_role where it exists. Never
-- anon or authenticated (revoked by name too, in case default privileges
-- granted them), never PUBLIC. sql/optional/public_save_settings.sql is the
-- opt-in wrapper in public for supabase.rpc().
REVOKE ALL ON FUNCTION mpesa_sync.save_settings(uuid, text, text, bytea, bytea, bytea, boolean)
    FROM PUBLIC;

DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
            EXECUTE format(
                'REVOKE ALL ON FUNCTION mpesa_sync.save_settings(uuid, text, text, bytea, bytea, bytea, boolean) FROM %I',
                v_role
            );
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT USAGE ON SCHEMA mpesa_sync TO service_role;
        GRANT EXECUTE
            ON FUNCTION mpesa_sync.save_settings(uuid, text, text, bytea, bytea, bytea, boolean)
            TO service_role;
    END IF;
END
$$;

-- Retention and the event log's identity (migration 0005) --------------------------
-- (this section, down to its end marker, is migration 0005: the identity of
-- status_events as one log, which a reader's position carries, and pruning in
-- short batches)

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
        (
            SELECT e.event_id
            FROM mpesa_sync.status_events AS e
            WHERE e.event_id > l.pruned_through
            ORDER BY e.event_id DESC
            LIMIT 1
        )
    ) AS newest_event_id
FROM mpesa_sync.event_log AS l;

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

-- The owner's, like everything else here but payment_options and save_settings.
REVOKE ALL ON mpesa_sync.event_log, mpesa_sync.event_log_v1 FROM PUBLIC;
REVOKE ALL ON FUNCTION mpesa_sync.prune_v1(interval, integer, boolean) FROM PUBLIC;

-- End of migration 0005 ------------------------------------------------------------
