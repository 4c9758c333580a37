-- Undo 0002: remove the triggers from the host's tables and the v1 functions.
DROP TRIGGER mpesa_sync_credentials_insert_v1 ON public.mpesa_credentials;
DROP TRIGGER mpesa_sync_credentials_update_v1 ON public.mpesa_credentials;
DROP TRIGGER mpesa_sync_credentials_delete_v1 ON public.mpesa_credentials;
DROP TRIGGER mpesa_sync_credentials_truncate_v1 ON public.mpesa_credentials;
DROP TRIGGER zz_mpesa_sync_correct_insert_v1 ON public.bars;
DROP TRIGGER zz_mpesa_sync_correct_update_v1 ON public.bars;
DROP TRIGGER mpesa_sync_status_events_v1 ON public.bars;

DROP VIEW mpesa_sync.payment_options;
DROP FUNCTION mpesa_sync.fix_all_v1(integer);
DROP FUNCTION mpesa_sync.fix_bars_v1(uuid[]);
DROP FUNCTION mpesa_sync.emit_status_events_v1();
DROP FUNCTION mpesa_sync.correct_bar_v1();
DROP FUNCTION mpesa_sync.credentials_changed_v1();
DROP FUNCTION mpesa_sync.sync_bars_v1(uuid[]);
DROP FUNCTION mpesa_sync.raise_alert_v1(text, uuid, jsonb);
DROP VIEW mpesa_sync.bar_status_v1;

REVOKE ALL ON SCHEMA mpesa_sync FROM PUBLIC;
