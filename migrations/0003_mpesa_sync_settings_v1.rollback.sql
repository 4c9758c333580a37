-- Undo 0003: remove the settings function and the grant that came with it.

-- The optional Supabase RPC wrapper (sql/optional/public_save_settings.sql)
-- only calls the function below; once that is gone the wrapper could only
-- fail, so it goes too when a DBA had applied it.
DROP FUNCTION IF EXISTS public.mpesa_save_settings(uuid, text, text, bytea, bytea, bytea, boolean);

DROP FUNCTION mpesa_sync.save_settings(uuid, text, text, bytea, bytea, bytea, boolean);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        REVOKE USAGE ON SCHEMA mpesa_sync FROM service_role;
    END IF;
END
$$;
