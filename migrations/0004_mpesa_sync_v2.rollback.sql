-- Undo 0004: back to the v1 core exactly as 0002 and 0003 installed it.
-- Event ids go on from where v2 left them; transactions still in flight are
-- waited for (the DROPs below lock the tables they write).

SET LOCAL lock_timeout = '5s';

-- v2 out -----------------------------------------------------------------------------

DROP TRIGGER mpesa_sync_credentials_insert_v2 ON public.mpesa_credentials;
DROP TRIGGER mpesa_sync_credentials_update_v2 ON public.mpesa_credentials;
DROP TRIGGER mpesa_sync_credentials_delete_v2 ON public.mpesa_credentials;
DROP TRIGGER mpesa_sync_credentials_truncate_v2 ON public.mpesa_credentials;
DROP TRIGGER mpesa_sync_status_changes_v2 ON public.bars;

DROP FUNCTION mpesa_sync.fix_bars_v2(uuid[]);
DROP FUNCTION mpesa_sync.credentials_changed_v2();
DROP FUNCTION mpesa_sync.sync_bars_v2(uuid[], uuid[]);
DROP FUNCTION mpesa_sync.check_snapshot_v2(uuid[]);
DROP FUNCTION mpesa_sync.bump_tokens_v2(uuid[]);
DROP FUNCTION mpesa_sync.record_status_changes_v2();
DROP TABLE mpesa_sync.pending_changes;  -- its publish trigger goes with it
DROP FUNCTION mpesa_sync.publish_status_events_v2();
DROP TABLE mpesa_sync.bar_write_tokens;

-- v1 back, as 0001 and 0002 created it ------------------------------------------------

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

CREATE TRIGGER mpesa_sync_status_events_v1
    AFTER UPDATE ON public.bars
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mpesa_sync.emit_status_events_v1();

-- save_settings as 0003 wrote it, calling sync_bars_v1 again.
CREATE OR REPLACE FUNCTION mpesa_sync.save_settings(
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

    SELECT s.* INTO v_status
    FROM mpesa_sync.bar_status_v1 AS s
    WHERE s.bar_id = p_bar_id;

    IF v_status.mpesa_enabled IS DISTINCT FROM v_status.expected THEN
        PERFORM mpesa_sync.sync_bars_v1(ARRAY[p_bar_id]);
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

REVOKE ALL ON FUNCTION mpesa_sync.sync_bars_v1(uuid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpesa_sync.credentials_changed_v1() FROM PUBLIC;
REVOKE ALL ON FUNCTION mpesa_sync.emit_status_events_v1() FROM PUBLIC;
REVOKE ALL ON FUNCTION mpesa_sync.fix_bars_v1(uuid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION mpesa_sync.fix_all_v1(integer) FROM PUBLIC;
REVOKE ALL ON TABLE mpesa_sync.sync_stripes FROM PUBLIC;
