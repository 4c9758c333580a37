-- mpesa_sync v1: the rule, the triggers that keep it, the customer view, and
-- a reconcile of every bar that had already drifted.
-- depends: 0001_mpesa_sync_base

SET LOCAL lock_timeout = '5s';

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

-- Bring the given bars in line with their credentials. Called by the
-- credential triggers with the bars their statement touched.
--
-- force_generic_plan: every statement here is an index lookup by = ANY, the
-- right plan for one bar and for 100k. Left to choose, PostgreSQL re-plans
-- them for each call, and planning costs more than running them.
CREATE FUNCTION mpesa_sync.sync_bars_v1(p_bar_ids uuid[])
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_stripes integer[];
BEGIN
    IF coalesce(cardinality(p_bar_ids), 0) = 0 THEN
        RETURN;
    END IF;

    -- 1. Write the stripes of these bars, locked in stripe order so that two
    --    statements never wait on each other in a cycle. Each step is an index
    --    lookup by = ANY: a single-row toggle must not scan all 1024 stripes.
    v_stripes := ARRAY(
        SELECT DISTINCT uuid_hash(u) & 1023 FROM unnest(p_bar_ids) AS u
    );
    PERFORM 1
    FROM mpesa_sync.sync_stripes AS s
    WHERE s.stripe = ANY (v_stripes)
    ORDER BY s.stripe
    FOR UPDATE;
    UPDATE mpesa_sync.sync_stripes AS s
    SET writes = s.writes + 1
    WHERE s.stripe = ANY (v_stripes);

    -- 2. Lock the bars themselves in id order. NO KEY UPDATE is the lock our
    --    UPDATE below takes anyway; unlike FOR UPDATE it does not conflict with
    --    the KEY SHARE lock a credential INSERT's foreign key check holds on
    --    the bar, which would deadlock two inserts for one bar.
    PERFORM 1
    FROM public.bars AS b
    WHERE b.id = ANY (p_bar_ids)
    ORDER BY b.id
    FOR NO KEY UPDATE;

    -- 3. Recompute in a new statement: under READ COMMITTED it takes a fresh
    --    snapshot, so it sees every credential change committed by a writer
    --    we waited for above. Only real changes are written.
    UPDATE public.bars AS b
    SET mpesa_enabled = s.expected
    FROM mpesa_sync.bar_status_v1 AS s
    WHERE s.bar_id = b.id
      AND s.bar_id = ANY (p_bar_ids)
      AND s.mpesa_enabled IS DISTINCT FROM s.expected;
END
$$;

-- AFTER ... FOR EACH STATEMENT on mpesa_credentials. One function for every
-- operation: plpgsql parses a statement only when it first runs, so each branch
-- names only the transition tables its trigger has.
CREATE FUNCTION mpesa_sync.credentials_changed_v1()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- The label of the events this function causes, read by the triggers
    -- it fires. Set here with set_config() and restored on the way out
    -- (a function's SET clause of a custom setting needs a superuser).
    v_source_before text := current_setting('mpesa_sync.source', true);
    v_bar_ids uuid[];
BEGIN
    PERFORM set_config('mpesa_sync.source', 'credentials', true);
    IF TG_OP = 'INSERT' THEN
        v_bar_ids := ARRAY(SELECT DISTINCT n.tenant_id FROM new_rows AS n);
    ELSIF TG_OP = 'DELETE' THEN
        v_bar_ids := ARRAY(SELECT DISTINCT o.tenant_id FROM old_rows AS o);
    ELSIF TG_OP = 'UPDATE' THEN
        -- Only rows whose is_active or tenant_id changed; a row that moved
        -- between bars recomputes both.
        v_bar_ids := ARRAY(
            SELECT DISTINCT t.bar_id
            FROM old_rows AS o
            FULL JOIN new_rows AS n ON n.id = o.id
            CROSS JOIN LATERAL (VALUES (o.tenant_id), (n.tenant_id)) AS t (bar_id)
            WHERE t.bar_id IS NOT NULL
              AND (o.id IS NULL
                   OR n.id IS NULL
                   OR o.tenant_id IS DISTINCT FROM n.tenant_id
                   OR o.is_active IS DISTINCT FROM n.is_active)
        );
    ELSE  -- TRUNCATE: no transition tables; every bar that is not false is affected
        v_bar_ids := ARRAY(
            SELECT b.id FROM public.bars AS b WHERE b.mpesa_enabled IS DISTINCT FROM false
        );
    END IF;

    PERFORM mpesa_sync.sync_bars_v1(v_bar_ids);
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

-- AFTER UPDATE ... FOR EACH STATEMENT on bars: one event and one notification
-- per real change, whoever made it. The source comes from the function that
-- made the change (it sets it while it runs), else it was a corrected direct write.
-- Transition tables carry no statistics, so the planner guesses them tiny and
-- would join old_rows to new_rows with a nested loop: quadratic, hours for a
-- 100k-row UPDATE of bars. enable_nestloop = off makes it a hash join.
CREATE FUNCTION mpesa_sync.emit_status_events_v1()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET enable_nestloop = off
AS $$
DECLARE
    v_notified bigint;
BEGIN
    IF NOT EXISTS (
        SELECT 1
        FROM new_rows AS n
        JOIN old_rows AS o ON o.id = n.id
        WHERE o.mpesa_enabled IS DISTINCT FROM n.mpesa_enabled
    ) THEN
        RETURN NULL;  -- no-op writes emit nothing
    END IF;

    -- Held to commit, so ids are handed out in commit order: no reader can see
    -- event n+1 while event n is still uncommitted. Commits that NOTIFY
    -- serialize on one instance-wide lock anyway. 470037132129 is 'mpesa' in ASCII.
    PERFORM pg_advisory_xact_lock(470037132129);

    -- One statement for every change: the events, then a notification each.
    WITH inserted AS (
        INSERT INTO mpesa_sync.status_events (bar_id, mpesa_enabled, source)
        SELECT n.id,
               n.mpesa_enabled,
               coalesce(nullif(current_setting('mpesa_sync.source', true), ''), 'correction')
        FROM new_rows AS n
        JOIN old_rows AS o ON o.id = n.id
        WHERE o.mpesa_enabled IS DISTINCT FROM n.mpesa_enabled
        ORDER BY n.id
        RETURNING event_id, bar_id, mpesa_enabled, source, at
    )
    SELECT count(pg_notify(
        'mpesa_status',
        json_build_object(
            'event_id', i.event_id,
            'bar_id', i.bar_id,
            'mpesa_enabled', i.mpesa_enabled,
            'source', i.source,
            'at', i.at
        )::text
    ))
    INTO v_notified
    FROM inserted AS i;
    RETURN NULL;
END
$$;

-- Reconcile ----------------------------------------------------------------------

-- Fix the given bars. The one mechanism behind both the install and
-- `mpesa-sync reconcile`. The whole set is tried in one statement; if any bar
-- refuses (a host CHECK, a host trigger, a lock timeout), the set is retried
-- bar by bar, and each bar that still refuses is left as it is, raised as a
-- WARNING with the database's error, recorded in alerts, and returned.
CREATE FUNCTION mpesa_sync.fix_bars_v1(p_bar_ids uuid[])
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
        -- The value written here may come from an older snapshot than the row
        -- it lands on; correct_bar_v1 recomputes it under the row lock.
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

    FOREACH v_bar_id IN ARRAY p_bar_ids LOOP
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

-- Fix every drifted bar, in batches of p_batch_size, in the caller's
-- transaction. The install runs this; the CLI runs fix_bars_v1 itself, one
-- short transaction per batch.
CREATE FUNCTION mpesa_sync.fix_all_v1(p_batch_size integer DEFAULT 1000)
RETURNS TABLE (bar_id uuid, error text, error_sqlstate text, error_constraint text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_after uuid := '00000000-0000-0000-0000-000000000000';
    v_batch uuid[];
BEGIN
    LOOP
        v_batch := ARRAY(
            SELECT s.bar_id
            FROM mpesa_sync.bar_status_v1 AS s
            WHERE s.mpesa_enabled IS DISTINCT FROM s.expected
              AND s.bar_id > v_after
            ORDER BY s.bar_id
            LIMIT p_batch_size
        );
        EXIT WHEN cardinality(v_batch) = 0;
        RETURN QUERY SELECT * FROM mpesa_sync.fix_bars_v1(v_batch);
        v_after := v_batch[cardinality(v_batch)];
    END LOOP;
END
$$;

-- Triggers -----------------------------------------------------------------------

CREATE TRIGGER mpesa_sync_credentials_insert_v1
    AFTER INSERT ON public.mpesa_credentials
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mpesa_sync.credentials_changed_v1();

CREATE TRIGGER mpesa_sync_credentials_update_v1
    AFTER UPDATE ON public.mpesa_credentials
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mpesa_sync.credentials_changed_v1();

CREATE TRIGGER mpesa_sync_credentials_delete_v1
    AFTER DELETE ON public.mpesa_credentials
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mpesa_sync.credentials_changed_v1();

CREATE TRIGGER mpesa_sync_credentials_truncate_v1
    AFTER TRUNCATE ON public.mpesa_credentials
    FOR EACH STATEMENT EXECUTE FUNCTION mpesa_sync.credentials_changed_v1();

-- BEFORE triggers fire in name order; the zz_ prefix makes ours fire after the
-- host's, so a host trigger cannot overwrite the corrected value.
CREATE TRIGGER zz_mpesa_sync_correct_insert_v1
    BEFORE INSERT ON public.bars
    FOR EACH ROW EXECUTE FUNCTION mpesa_sync.correct_bar_v1();

CREATE TRIGGER zz_mpesa_sync_correct_update_v1
    BEFORE UPDATE ON public.bars
    FOR EACH ROW
    WHEN (NEW.mpesa_enabled IS DISTINCT FROM OLD.mpesa_enabled)
    EXECUTE FUNCTION mpesa_sync.correct_bar_v1();

CREATE TRIGGER mpesa_sync_status_events_v1
    AFTER UPDATE ON public.bars
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mpesa_sync.emit_status_events_v1();

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

-- Customer-facing roles: Supabase's anon and authenticated where they exist,
-- else PUBLIC.
DO $$
DECLARE
    v_role text;
    v_granted boolean := false;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
            EXECUTE format('GRANT USAGE ON SCHEMA mpesa_sync TO %I', v_role);
            EXECUTE format('GRANT SELECT ON mpesa_sync.payment_options TO %I', v_role);
            v_granted := true;
        END IF;
    END LOOP;
    IF NOT v_granted THEN
        GRANT USAGE ON SCHEMA mpesa_sync TO PUBLIC;
        GRANT SELECT ON mpesa_sync.payment_options TO PUBLIC;
    END IF;
END
$$;

-- Install-time reconcile ----------------------------------------------------------

-- Existing drift is fixed in the same step. A bar that refuses is left as it
-- is, raised as a WARNING and recorded in mpesa_sync.alerts; the install goes on.
DO $$ BEGIN PERFORM * FROM mpesa_sync.fix_all_v1(1000); END $$;
