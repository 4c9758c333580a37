-- Broadcast from the database (Supabase Realtime): what `mpesa-sync realtime
-- enable` checks before it runs sql/optional/realtime_enable.sql, and what
-- `status` reads about the sink.

-- name: realtime_prerequisites
-- What the sink needs of Supabase Realtime, as the current role: the realtime
-- schema and its use, realtime.send(jsonb, text, text, boolean) and the right
-- to call it, realtime.messages and the right to insert into it (send runs
-- with the caller's rights, here the sink's owner). Asked without touching
-- an object the role may not see, so that every answer is a plain boolean.
WITH r AS (
    SELECT to_regnamespace('realtime') AS nsp
)
SELECT r.nsp IS NOT NULL AS has_schema,
       r.nsp IS NOT NULL AND has_schema_privilege(r.nsp, 'USAGE') AS schema_usage,
       s.oid IS NOT NULL AS has_send,
       s.oid IS NOT NULL AND has_function_privilege(s.oid, 'EXECUTE') AS send_execute,
       m.oid IS NOT NULL AS has_messages,
       m.oid IS NOT NULL AND has_table_privilege(m.oid, 'INSERT') AS messages_insert,
       current_user AS role
FROM r
LEFT JOIN pg_catalog.pg_proc AS s
    ON s.pronamespace = r.nsp
   AND s.proname = 'send'
   AND s.proargtypes = '3802 25 25 16'::oidvector  -- (jsonb, text, text, boolean)
LEFT JOIN pg_catalog.pg_class AS m
    ON m.relnamespace = r.nsp
   AND m.relname = 'messages';

-- name: realtime_set_topics
-- Private or public topics, for realtime_enable.sql (this transaction only).
SELECT set_config('mpesa_sync.realtime_topics', %(topics)s, true);

-- name: realtime_probe_insert
-- A broadcast row as the sink writes one, in a savepoint the caller rolls
-- back: proves, before anything is sent, that the role's grants and the RLS
-- of realtime.messages let the sink insert (a rolled-back row never reaches
-- Realtime, which reads only committed changes).
INSERT INTO realtime.messages (topic, extension, payload, event, private)
VALUES ('mpesa_status:00000000-0000-0000-0000-000000000000', 'broadcast', '{}', 'probe', true);

-- name: realtime_sink_status
-- Whether the sink is on, with private or public topics; whether its policies
-- and the state call are there.
SELECT t.oid IS NOT NULL AS sink,
       split_part(encode(t.tgargs, 'escape'), '\000', 1) AS topics,
       (
           -- from the catalogs: a role without USAGE on schema realtime may ask
           SELECT count(*)
           FROM pg_catalog.pg_policy AS p
           JOIN pg_catalog.pg_class AS c ON c.oid = p.polrelid
           JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
           WHERE n.nspname = 'realtime'
             AND c.relname = 'messages'
             AND p.polname IN ('mpesa_sync_status_receive_v1', 'mpesa_sync_status_send_v1')
       ) AS policies,
       to_regprocedure('public.mpesa_status(uuid)') IS NOT NULL AS state_call,
       to_regclass('mpesa_sync.realtime_sink_v1') IS NOT NULL AS counters
FROM (SELECT 1) AS one
LEFT JOIN pg_catalog.pg_trigger AS t
    ON t.tgrelid = to_regclass('mpesa_sync.status_events')
   AND t.tgname = 'mpesa_sync_broadcast_v1';

-- name: realtime_sink_failures
-- Failed sends since the sink was enabled (only asked when its table exists).
SELECT s.failures, s.events_lost, s.last_sqlstate, s.last_failed_at
FROM mpesa_sync.realtime_sink_v1 AS s;
