-- An example host database in the real Supabase deployment's shape, before
-- mpesa-sync is installed: the roles, bars with the host's own columns,
-- trigger and RLS, and mpesa_credentials with RLS and the host's updated_at
-- trigger. The tests build their template from it and the demo starts from it.

DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
        END IF;
    END LOOP;
    -- only a role that bypasses RLS may grant that
    IF NOT (SELECT rolbypassrls FROM pg_roles WHERE rolname = 'service_role') THEN
        ALTER ROLE service_role BYPASSRLS;
    END IF;
END
$$;

CREATE FUNCTION public.set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TABLE public.bars (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL,
    slug text,
    mpesa_enabled boolean DEFAULT true,
    card_enabled boolean DEFAULT false,
    cash_enabled boolean DEFAULT true,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now()
);

CREATE TRIGGER bars_set_updated_at
    BEFORE UPDATE ON public.bars
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

ALTER TABLE public.bars ENABLE ROW LEVEL SECURITY;
CREATE POLICY bars_public_read ON public.bars FOR SELECT USING (true);
GRANT SELECT ON public.bars TO anon, authenticated;
GRANT ALL ON public.bars TO service_role;

CREATE TABLE public.mpesa_credentials (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id uuid NOT NULL REFERENCES public.bars (id) ON DELETE CASCADE,
    environment text NOT NULL CHECK (environment IN ('sandbox', 'production')),
    business_shortcode text NOT NULL,
    consumer_key_enc bytea NOT NULL,
    consumer_secret_enc bytea NOT NULL,
    passkey_enc bytea NOT NULL,
    initiator_name text,
    security_credential_enc bytea,
    is_active boolean DEFAULT true,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now(),
    UNIQUE (tenant_id, environment)
);

CREATE TRIGGER mpesa_credentials_set_updated_at
    BEFORE UPDATE ON public.mpesa_credentials
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

ALTER TABLE public.mpesa_credentials ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.mpesa_credentials FROM PUBLIC, anon, authenticated;
GRANT ALL ON public.mpesa_credentials TO service_role;
