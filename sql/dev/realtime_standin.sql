-- A stand-in for Supabase Realtime's schema, for tests on plain PostgreSQL:
-- realtime.messages, realtime.topic() and realtime.send(jsonb, ...) as Realtime's
-- own tenant migrations leave them, matched against supabase/realtime at commit
-- 833cf36c3a3603fff5ae5a8a0ce473a21d5fedd4, lib/realtime/tenants/repo/migrations/:
--   20241030150047_messages_partitioning      the table, partitioned by day on inserted_at
--   20241108114728_messages_using_uuid        id uuid, primary key (id, inserted_at)
--   20250905041441_create_messages_replay_index
--   20260514120000_add_binary_payload_to_messages
--   20240523004032_redefine_authorization_tables   realtime.topic()
--   20260605120000_rename_broadcast_send_warning   realtime.send as it is now
--   20260707120000_restrict_realtime_schema        owners: supabase_realtime_admin
-- Realtime itself creates the daily partitions ahead of time (send no longer
-- does); here: yesterday, today and the next two days. Run as a superuser
-- (Supabase's admin makes and owns schema realtime, not the project's owner).
--
-- What Supabase's `postgres` (the table owner who is no superuser) holds on
-- Realtime, given here to the database's owner when that role is no
-- superuser (the tests' managed-host owner; a superuser needs nothing), as
-- 20260606120000_setup_supabase_realtime_admin leaves it on a server whose
-- supautils.policy_grants does not name realtime (none here):
--   USAGE on schema realtime WITH GRANT OPTION, and no CREATE on it;
--   membership in supabase_realtime_admin, the owner of realtime.messages,
--   send and topic: how postgres manages policies there, and with it every
--   right on those objects (INSERT on realtime.messages included).
-- Assumed: that membership is what a project without supautils' policy
-- grants has (20260630120000_restrict_realtime_schema revokes it only where
-- supautils grants policies instead); and postgres is a member of anon,
-- authenticated and service_role, as the tests' owner is
-- (tests/support/database.py), so it also holds what they are granted.

-- Cluster-wide roles: made when missing, tolerating a concurrent maker.
DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['anon', 'authenticated', 'service_role',
                                  'supabase_realtime_admin'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
            BEGIN
                IF v_role = 'service_role' THEN
                    EXECUTE format('CREATE ROLE %I NOLOGIN NOINHERIT BYPASSRLS', v_role);
                ELSE
                    EXECUTE format('CREATE ROLE %I NOLOGIN NOINHERIT', v_role);
                END IF;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;

CREATE SCHEMA realtime;
GRANT USAGE ON SCHEMA realtime TO anon, authenticated, service_role;
GRANT ALL ON SCHEMA realtime TO supabase_realtime_admin;

CREATE TABLE realtime.messages (
    topic text NOT NULL,
    extension text NOT NULL,
    payload jsonb,
    event text,
    private boolean DEFAULT false,
    updated_at timestamp NOT NULL DEFAULT now(),
    inserted_at timestamp NOT NULL DEFAULT now(),
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    binary_payload bytea,
    CONSTRAINT messages_payload_exclusive CHECK (payload IS NULL OR binary_payload IS NULL),
    PRIMARY KEY (id, inserted_at)
) PARTITION BY RANGE (inserted_at);

CREATE INDEX messages_inserted_at_topic_index
    ON realtime.messages (inserted_at DESC, topic)
    WHERE extension = 'broadcast' AND private IS TRUE;

DO $$
DECLARE
    v_day date;
BEGIN
    FOR v_day IN SELECT d::date FROM generate_series(
        now()::date - 1, now()::date + 2, interval '1 day'
    ) AS d LOOP
        EXECUTE format(
            'CREATE TABLE realtime.%I PARTITION OF realtime.messages FOR VALUES FROM (%L) TO (%L)',
            'messages_' || to_char(v_day, 'YYYY_MM_DD'), v_day, v_day + 1
        );
    END LOOP;
END
$$;

ALTER TABLE realtime.messages ENABLE ROW LEVEL SECURITY;
GRANT SELECT, INSERT, UPDATE ON realtime.messages TO anon, authenticated, service_role;

CREATE FUNCTION realtime.topic() RETURNS text AS $$
select nullif(current_setting('realtime.topic', true), '')::text;
$$ LANGUAGE sql STABLE;

CREATE FUNCTION realtime.send(payload jsonb, event text, topic text, private boolean DEFAULT true)
RETURNS void
AS $$
DECLARE
  generated_id uuid;
  final_payload jsonb;
BEGIN
  BEGIN
    generated_id := gen_random_uuid();

    -- Check if payload has an 'id' key, if not, add the generated UUID
    IF payload ? 'id' THEN
      final_payload := payload;
    ELSE
      final_payload := jsonb_set(payload, '{id}', to_jsonb(generated_id));
    END IF;

    -- Set the topic configuration
    EXECUTE format('SET LOCAL realtime.topic TO %L', topic);

    INSERT INTO realtime.messages (id, payload, event, topic, private, extension)
    VALUES (generated_id, final_payload, event, topic, private, 'broadcast');
  EXCEPTION
    WHEN OTHERS THEN
      RAISE WARNING 'WarnSendingBroadcastMessage: %', SQLERRM;
  END;
END;
$$
LANGUAGE plpgsql;

ALTER TABLE realtime.messages OWNER TO supabase_realtime_admin;
ALTER FUNCTION realtime.topic() OWNER TO supabase_realtime_admin;
ALTER FUNCTION realtime.send(jsonb, text, text, boolean) OWNER TO supabase_realtime_admin;

-- The database's owner, when it is no superuser, stands for Supabase's postgres.
DO $$
DECLARE
    v_owner name;
BEGIN
    SELECT r.rolname INTO v_owner
    FROM pg_catalog.pg_database AS d
    JOIN pg_catalog.pg_roles AS r ON r.oid = d.datdba
    WHERE d.datname = current_database() AND NOT r.rolsuper;
    IF v_owner IS NOT NULL THEN
        EXECUTE format('GRANT USAGE ON SCHEMA realtime TO %I WITH GRANT OPTION', v_owner);
        EXECUTE format('REVOKE CREATE ON SCHEMA realtime FROM %I', v_owner);
        IF NOT pg_catalog.pg_has_role(v_owner, 'supabase_realtime_admin', 'MEMBER') THEN
            BEGIN  -- cluster-wide, like the roles above: tolerate a concurrent grant
                EXECUTE format('GRANT supabase_realtime_admin TO %I', v_owner);
            EXCEPTION WHEN unique_violation OR duplicate_object THEN
                NULL;
            END;
        END IF;
    END IF;
END
$$;
