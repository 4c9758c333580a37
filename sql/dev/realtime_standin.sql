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
-- does); here: yesterday, today and the next two days. Run as a superuser.

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
