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
-- Objects that carry behaviour carry a version (_v1). A behaviour change adds
-- _v2 in a new migration and a later migration drops _v1, so a rolling upgrade
-- never sees a function change under it.
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
-- order (see emit_status_events_v1), so a reader that remembers the last id
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

-- Write tokens, 1024 stripes keyed by a hash of the bar id. Every statement
-- that changes credentials writes the stripes of the bars it touches. Under
-- READ COMMITTED this orders concurrent writers of one bar; under REPEATABLE
-- READ it turns the write skew that row locks alone cannot see (two writers
-- each changing a different credential row of one bar, neither changing the
-- bar) into a serialization failure, which the caller retries.
CREATE TABLE mpesa_sync.sync_stripes (
    stripe integer PRIMARY KEY,
    writes bigint NOT NULL DEFAULT 0
);

INSERT INTO mpesa_sync.sync_stripes (stripe)
SELECT generate_series(0, 1023);

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
SET mpesa_sync.source = 'credentials'
AS $$
DECLARE
    v_bar_ids uuid[];
BEGIN
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
-- made the change (its SET clause), else it was a corrected direct write.
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
SET mpesa_sync.source = 'reconcile'
AS $$
DECLARE
    v_bar_id uuid;
BEGIN
    BEGIN
        -- The value written here may come from an older snapshot than the row
        -- it lands on; correct_bar_v1 recomputes it under the row lock.
        UPDATE public.bars AS b
        SET mpesa_enabled = s.expected
        FROM mpesa_sync.bar_status_v1 AS s
        WHERE s.bar_id = b.id
          AND s.bar_id = ANY (p_bar_ids)
          AND s.mpesa_enabled IS DISTINCT FROM s.expected;
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

-- Settings (migration 0003) --------------------------------------------------------

-- The one write the staff app makes. The name carries no version: it is the
-- RPC name apps call (see docs/settings-api.md); a behaviour change
-- gets a new name beside it. Requires the host's unique constraint on
-- mpesa_credentials (tenant_id, environment); the migration checks for it.
--
-- Validation is here so that every caller gets it. A violation raises
-- SQLSTATE 22023 (23503 for an unknown bar) with the field in the message and
-- in the error's COLUMN field, and never echoes a value: a secret pasted into
-- the wrong field must not end up in a log.
--
-- The upsert fires the credential triggers in this transaction.
-- sync_bars_v1 runs a second time only for a bar that had drifted before this
-- call and whose is_active did not change (the UPDATE trigger recomputes only
-- bars whose is_active changed), so an ordinary save syncs once.
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
SET mpesa_sync.source = 'credentials'
AS $$
DECLARE
    v_credential_id uuid;
    v_status mpesa_sync.bar_status_v1;
BEGIN
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

    SELECT s.* INTO v_status
    FROM mpesa_sync.bar_status_v1 AS s
    WHERE s.bar_id = p_bar_id;

    IF v_status.mpesa_enabled IS DISTINCT FROM v_status.expected THEN
        PERFORM mpesa_sync.sync_bars_v1(ARRAY[p_bar_id]);
        SELECT s.* INTO v_status
        FROM mpesa_sync.bar_status_v1 AS s
        WHERE s.bar_id = p_bar_id;
    END IF;

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
        (SELECT max(e.event_id) FROM mpesa_sync.status_events AS e)
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
