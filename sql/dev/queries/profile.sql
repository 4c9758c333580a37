-- Queries of `make profile` (benchmarks/profile.py).

-- name: profile_functions
-- Server time per function since the last pg_stat_reset(), in ms.
SELECT funcname, calls, total_time, self_time
FROM pg_stat_user_functions
WHERE calls > 0
ORDER BY total_time DESC;

-- name: profile_disable_sync
ALTER TABLE public.mpesa_credentials DISABLE TRIGGER mpesa_sync_credentials_update_v3;

-- name: profile_enable_sync
ALTER TABLE public.mpesa_credentials ENABLE TRIGGER mpesa_sync_credentials_update_v3;

-- name: profile_rewrite_bars
-- The heap work of rewriting every bar, with every trigger on bars off.
DO $$
BEGIN
    ALTER TABLE public.bars DISABLE TRIGGER USER;
    UPDATE public.bars SET mpesa_enabled = NOT mpesa_enabled;
    UPDATE public.bars SET mpesa_enabled = NOT mpesa_enabled;
    ALTER TABLE public.bars ENABLE TRIGGER USER;
END
$$;
