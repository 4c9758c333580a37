-- Optional, never applied by `mpesa-sync migrate`: a thin wrapper in schema
-- public, so that a Supabase app can call the settings function as
--   supabase.rpc('mpesa_save_settings', {...})
-- without adding schema mpesa_sync to the API's exposed schemas.
--
-- A DBA who wants it applies this file once, after migrating, as the role
-- that ran the migrations:
--   psql "$DSN" -v ON_ERROR_STOP=1 -f sql/optional/public_save_settings.sql
-- or pastes it into the Supabase SQL editor. Applying it again is harmless.
-- Remove it with
--   DROP FUNCTION public.mpesa_save_settings(uuid, text, text, bytea, bytea, bytea, boolean);
-- Rolling back migration 0003 removes it too.

BEGIN;

-- SECURITY INVOKER: the caller also needs EXECUTE on mpesa_sync.save_settings,
-- so this wrapper can never give a role more than the function itself does.
CREATE OR REPLACE FUNCTION public.mpesa_save_settings(
    p_bar_id uuid,
    p_environment text,
    p_business_shortcode text,
    p_consumer_key_enc bytea,
    p_consumer_secret_enc bytea,
    p_passkey_enc bytea,
    p_is_active boolean
)
RETURNS jsonb
LANGUAGE sql
SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT mpesa_sync.save_settings(
        p_bar_id, p_environment, p_business_shortcode,
        p_consumer_key_enc, p_consumer_secret_enc, p_passkey_enc, p_is_active
    )
$$;

-- Supabase's default privileges grant EXECUTE on every new function in
-- public to anon and authenticated: take it back by name.
REVOKE ALL ON FUNCTION public.mpesa_save_settings(uuid, text, text, bytea, bytea, bytea, boolean)
    FROM PUBLIC;

DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
            EXECUTE format(
                'REVOKE ALL ON FUNCTION public.mpesa_save_settings(uuid, text, text, bytea, bytea, bytea, boolean) FROM %I',
                v_role
            );
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT EXECUTE
            ON FUNCTION public.mpesa_save_settings(uuid, text, text, bytea, bytea, bytea, boolean)
            TO service_role;
    END IF;
END
$$;

COMMIT;
