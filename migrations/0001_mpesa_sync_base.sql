-- mpesa_sync base: our schema, its tables, and the host tables where absent.
-- depends:

-- Fail rather than queue behind a long transaction on the host's tables and
-- block the live app behind us; the DBA reruns when it is quiet.
SET LOCAL lock_timeout = '5s';

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

-- Host tables -------------------------------------------------------------------

-- A new or demo database gets bars and mpesa_credentials in the real
-- deployment's shape; a database that has them keeps them untouched, except
-- that bars gains mpesa_enabled where it lacks it. Each creation is recorded
-- so that the rollback removes exactly what was created here.
DO $$
BEGIN
    IF to_regclass('public.bars') IS NULL THEN
        IF to_regclass('public.mpesa_credentials') IS NOT NULL THEN
            RAISE EXCEPTION 'public.mpesa_credentials exists but public.bars does not'
                USING ERRCODE = 'undefined_table';
        END IF;
        CREATE TABLE public.bars (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            name text NOT NULL,
            mpesa_enabled boolean DEFAULT true,
            card_enabled boolean DEFAULT false,
            cash_enabled boolean DEFAULT true
        );
        INSERT INTO mpesa_sync.installed_host_objects VALUES ('table:public.bars');
    ELSIF NOT EXISTS (
        SELECT 1
        FROM pg_catalog.pg_attribute
        WHERE attrelid = 'public.bars'::regclass
          AND attname = 'mpesa_enabled'
          AND NOT attisdropped
    ) THEN
        ALTER TABLE public.bars ADD COLUMN mpesa_enabled boolean NOT NULL DEFAULT false;
        INSERT INTO mpesa_sync.installed_host_objects
        VALUES ('column:public.bars.mpesa_enabled');
    END IF;

    IF to_regclass('public.mpesa_credentials') IS NULL THEN
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
        -- Customers must never read credentials.
        ALTER TABLE public.mpesa_credentials ENABLE ROW LEVEL SECURITY;
        REVOKE ALL ON public.mpesa_credentials FROM PUBLIC;
        INSERT INTO mpesa_sync.installed_host_objects
        VALUES ('table:public.mpesa_credentials');
    END IF;
END
$$;
