-- The mixed-writer workload (mpesa_sync/dev/workload.py): what the host's apps
-- do to bars and credentials, for the concurrency tests and `make bench`.

-- name: workload_bars
-- The bars of one run: `main` bars with a sandbox credential each (every
-- other one active, every fourth with an inactive production row as well,
-- so that some toggles change the bar's status and some do not), and one
-- `archive` bar per writer, without credentials.
WITH main AS (
    INSERT INTO public.bars (name)
    SELECT 'main ' || i FROM generate_series(1, %(main)s) AS i
    RETURNING id, name
),
sandbox AS (
    INSERT INTO public.mpesa_credentials (
        tenant_id, environment, business_shortcode,
        consumer_key_enc, consumer_secret_enc, passkey_enc, is_active
    )
    SELECT m.id, 'sandbox', '174379', 'k', 's', 'p',
           split_part(m.name, ' ', 2)::integer %% 2 = 0
    FROM main AS m
),
production AS (
    INSERT INTO public.mpesa_credentials (
        tenant_id, environment, business_shortcode,
        consumer_key_enc, consumer_secret_enc, passkey_enc, is_active
    )
    SELECT m.id, 'production', '600126', 'k', 's', 'p', false
    FROM main AS m
    WHERE split_part(m.name, ' ', 2)::integer %% 4 = 0
),
archive AS (
    INSERT INTO public.bars (name)
    SELECT 'archive ' || i FROM generate_series(1, %(archive)s) AS i
    RETURNING id
)
SELECT 'main' AS kind, id FROM main
UNION ALL
SELECT 'archive', id FROM archive;

-- name: workload_toggle
-- Staff switch one of the bar's credential rows.
UPDATE public.mpesa_credentials
SET is_active = NOT coalesce(is_active, false)
WHERE id = (
    SELECT c.id
    FROM public.mpesa_credentials AS c
    WHERE c.tenant_id = %(bar)s
    ORDER BY c.environment = %(environment)s DESC
    LIMIT 1
)
  AND tenant_id = %(bar)s;  -- a row another writer moved meanwhile is left alone

-- name: workload_insert
INSERT INTO public.mpesa_credentials (
    tenant_id, environment, business_shortcode,
    consumer_key_enc, consumer_secret_enc, passkey_enc, is_active
)
VALUES (%(bar)s, %(environment)s, '174379', 'k', 's', 'p', %(active)s)
ON CONFLICT (tenant_id, environment) DO NOTHING;

-- name: workload_delete
DELETE FROM public.mpesa_credentials
WHERE id = (
    SELECT c.id
    FROM public.mpesa_credentials AS c
    WHERE c.tenant_id = %(bar)s
    ORDER BY c.environment = %(environment)s DESC
    LIMIT 1
)
  AND tenant_id = %(bar)s;  -- a row another writer moved meanwhile is left alone

-- name: workload_bar_write
-- An app that writes the derived flag itself, rightly or wrongly.
UPDATE public.bars
SET mpesa_enabled = %(enabled)s
WHERE id = %(bar)s;

-- name: workload_move
-- A credential row handed from one bar to another.
UPDATE public.mpesa_credentials
SET tenant_id = %(target)s
WHERE id = (
    SELECT c.id
    FROM public.mpesa_credentials AS c
    WHERE c.tenant_id = %(bar)s
    ORDER BY c.environment = %(environment)s DESC
    LIMIT 1
)
  AND tenant_id = %(bar)s;  -- a row another writer moved meanwhile is left alone

-- name: workload_lock_bars
-- A well-behaved multi-row write locks its rows in id order first.
SELECT 1
FROM public.bars AS b
WHERE b.id = ANY (%(bars)s::uuid[])
ORDER BY b.id
FOR NO KEY UPDATE;

-- name: workload_bars_write
UPDATE public.bars
SET mpesa_enabled = %(enabled)s
WHERE id = ANY (%(bars)s::uuid[]);
