-- Does this DSN give us a session of our own? (mpesa_sync.pooler)
-- A setting made for the session must still be there in the next
-- transaction, on the same backend, and must not be seen by another
-- connection. A transaction-mode pooler (PgBouncer pool_mode = transaction,
-- Supabase's port 6543) breaks both.

-- name: session_probe_set
SELECT set_config('mpesa_sync.session_probe', %(token)s, false) AS token,
       pg_backend_pid() AS pid;

-- name: session_probe_read
SELECT current_setting('mpesa_sync.session_probe', true) AS token,
       pg_backend_pid() AS pid;

-- name: session_peer
-- The client address and port the server sees on this connection: ours, when
-- nothing stands between (NULL for a Unix socket).
SELECT host(inet_client_addr()) AS host, inet_client_port() AS port;
