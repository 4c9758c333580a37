-- Optional, never applied by `mpesa-sync migrate`: let Supabase's customer
-- roles, anon and authenticated, read mpesa_sync.payment_options.
--
-- Since migration 0006 they read nothing of ours. Apply this only if your
-- customer app reads payment_options itself (with mpesa_sync added to the
-- API's exposed schemas), as the role that ran the migrations:
--   psql "$DSN" -v ON_ERROR_STOP=1 -f sql/optional/customer_payment_options.sql
-- Applying it again is harmless. Take it back with
--   REVOKE SELECT ON mpesa_sync.payment_options FROM anon, authenticated;
--   REVOKE USAGE ON SCHEMA mpesa_sync FROM anon, authenticated;
--
-- What Supabase's linter then reports, and why we accept it (docs/supabase.md):
-- the view runs with its owner's rights on purpose, so that a customer reads
-- whether a bar takes M-Pesa, and the shortcode to pay, without any right on
-- mpesa_credentials; it shows no secret column.

DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
            EXECUTE format('GRANT USAGE ON SCHEMA mpesa_sync TO %I', v_role);
            EXECUTE format('GRANT SELECT ON mpesa_sync.payment_options TO %I', v_role);
        END IF;
    END LOOP;
END
$$;
