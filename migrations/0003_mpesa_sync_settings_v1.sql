-- mpesa_sync settings v1: one atomic call that saves a bar's M-Pesa
-- credentials and its status, for the staff app (a Supabase RPC) and for the
-- Python API.
-- depends: 0002_mpesa_sync_v1

SET LOCAL lock_timeout = '5s';

-- save_settings upserts on (tenant_id, environment): refuse to install a
-- function that could never run on this host.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1
        FROM pg_catalog.pg_index AS i
        WHERE i.indrelid = 'public.mpesa_credentials'::regclass
          AND i.indisunique
          AND i.indpred IS NULL
          AND i.indnkeyatts = 2
          AND (
              SELECT array_agg(a.attname::text ORDER BY a.attname)
              FROM pg_catalog.pg_attribute AS a
              WHERE a.attrelid = i.indrelid
                AND a.attnum = ANY (i.indkey)
          ) = ARRAY['environment', 'tenant_id']
    ) THEN
        RAISE EXCEPTION 'public.mpesa_credentials has no unique constraint on (tenant_id, environment)'
            USING HINT = 'mpesa_sync.save_settings upserts on it; add it, then migrate again';
    END IF;
END
$$;

-- The one write the staff app makes. The name carries no version: it is the
-- RPC name apps call (see README, "The settings API"); a behaviour change
-- gets a new name beside it.
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

-- The staff app's role only: Supabase's service_role where it exists. Never
-- anon or authenticated (revoked by name too, in case default privileges
-- granted them), never PUBLIC.
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
