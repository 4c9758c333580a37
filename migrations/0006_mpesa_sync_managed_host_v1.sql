-- mpesa_sync on managed hosts (Supabase, RDS, Cloud SQL, Neon): the same
-- end state for every install, and nothing of ours open to the API roles.
-- depends: 0005_mpesa_sync_retention_v1
--
-- 1. Three functions labelled their events (the setting mpesa_sync.source)
--    with a SET clause, which only a superuser may attach for a custom
--    setting, so the released 0002 to 0004 could not apply as the table
--    owner of a managed host. Those files now set it in the body; databases
--    where the released files did apply (as a superuser) get the same
--    definitions here. The bodies are 0004's, unchanged but for that, and
--    CREATE OR REPLACE keeps each function's grants.
-- 2. The customer roles anon and authenticated lose what nothing documented
--    needs of them: USAGE on schema mpesa_sync and SELECT on payment_options,
--    theirs since 0002. With them, Supabase's linter reported the view as a
--    SECURITY DEFINER view once mpesa_sync is exposed, and pg_graphql showed
--    it to anyone holding the anon key. A host whose customers should read it
--    grants it with sql/optional/customer_payment_options.sql (docs/supabase.md
--    says what the linter then reports, and why). service_role, the staff
--    app's server-side role, may read it. On plain PostgreSQL, without those
--    roles, PUBLIC keeps what 0002 gave it.

SET LOCAL lock_timeout = '5s';

-- 1. The functions that label their events ---------------------------------------

CREATE OR REPLACE FUNCTION mpesa_sync.credentials_changed_v2()
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
    v_added_to uuid[] := '{}';
BEGIN
    PERFORM set_config('mpesa_sync.source', 'credentials', true);
    IF TG_OP = 'INSERT' THEN
        v_bar_ids := ARRAY(SELECT DISTINCT n.tenant_id FROM new_rows AS n);
        v_added_to := v_bar_ids;
    ELSIF TG_OP = 'DELETE' THEN
        v_bar_ids := ARRAY(SELECT DISTINCT o.tenant_id FROM old_rows AS o);
    ELSIF TG_OP = 'UPDATE' THEN
        -- Only rows whose is_active or tenant_id changed; a row that moved
        -- between bars recomputes both, and was added to the second.
        SELECT coalesce(array_agg(DISTINCT t.bar_id), '{}'),
               coalesce(array_agg(DISTINCT t.bar_id) FILTER (WHERE t.added), '{}')
        INTO v_bar_ids, v_added_to
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
               OR o.is_active IS DISTINCT FROM n.is_active);
    ELSE  -- TRUNCATE: no transition tables; every bar that is not false is affected
        v_bar_ids := ARRAY(
            SELECT b.id FROM public.bars AS b WHERE b.mpesa_enabled IS DISTINCT FROM false
        );
    END IF;

    PERFORM mpesa_sync.sync_bars_v2(v_bar_ids, v_added_to);
    PERFORM set_config('mpesa_sync.source', coalesce(v_source_before, ''), true);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION mpesa_sync.fix_bars_v2(p_bar_ids uuid[])
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

    -- The upsert's trigger synced the bar when is_active changed; a bar that
    -- had drifted before this call is synced here.
    SELECT s.* INTO v_status
    FROM mpesa_sync.bar_status_v1 AS s
    WHERE s.bar_id = p_bar_id;

    IF v_status.mpesa_enabled IS DISTINCT FROM v_status.expected THEN
        PERFORM mpesa_sync.sync_bars_v2(ARRAY[p_bar_id], '{}');
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

-- 2. Privileges ------------------------------------------------------------------

DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
            EXECUTE format('REVOKE ALL ON mpesa_sync.payment_options FROM %I', v_role);
            EXECUTE format('REVOKE ALL ON SCHEMA mpesa_sync FROM %I', v_role);
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT SELECT ON mpesa_sync.payment_options TO service_role;
    END IF;
END
$$;
