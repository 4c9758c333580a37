-- Undo 0006: the customer roles get back what 0002 gave them. The functions
-- keep their bodies: they are what 0002 to 0004 install now, on every host.

DO $$
DECLARE
    v_role text;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        REVOKE SELECT ON mpesa_sync.payment_options FROM service_role;
    END IF;
    FOREACH v_role IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
            EXECUTE format('GRANT USAGE ON SCHEMA mpesa_sync TO %I', v_role);
            EXECUTE format('GRANT SELECT ON mpesa_sync.payment_options TO %I', v_role);
        END IF;
    END LOOP;
END
$$;
