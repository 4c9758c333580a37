-- Queries the demo runs. It reads the rule inline, not through mpesa_sync,
-- because it shows the drift before mpesa_sync is installed.

-- name: demo_status
SELECT b.name,
       b.mpesa_enabled,
       EXISTS (SELECT 1 FROM public.mpesa_credentials AS c
               WHERE c.tenant_id = b.id AND c.is_active) AS expected
FROM public.bars AS b
ORDER BY b.name;

-- name: demo_events
SELECT e.event_id, b.name, e.mpesa_enabled, e.source
FROM mpesa_sync.status_events AS e
JOIN public.bars AS b ON b.id = e.bar_id
ORDER BY e.event_id;

-- name: demo_set_active
-- Staff switch a bar's M-Pesa credentials on or off.
UPDATE public.mpesa_credentials
SET is_active = %(active)s
WHERE tenant_id = %(bar_id)s;

-- name: demo_listen
LISTEN mpesa_status;
