-- A bar's M-Pesa credentials (mpesa_sync/credentials.py, mpesa_sync/daraja.py):
-- save them through the settings API, show them, check them with Daraja.

-- name: save_settings
-- One atomic call: validates, upserts the credential row, syncs the bar
-- (see mpesa_sync.save_settings in sql/schema.sql).
SELECT mpesa_sync.save_settings(
    %(bar_id)s,
    %(environment)s,
    %(business_shortcode)s,
    %(consumer_key_enc)s,
    %(consumer_secret_enc)s,
    %(passkey_enc)s,
    %(is_active)s
);

-- name: bar_settings
-- A bar's non-secret M-Pesa state: its status, and each credential row
-- (NULL columns when it has none), without a single secret column.
-- created_at and updated_at are optional host columns (docs/install.md, "Host
-- requirements"): read through the row as jsonb, they are NULL on a host
-- that lacks them instead of an error.
SELECT s.bar_id,
       s.mpesa_enabled,
       s.expected,
       c.environment,
       c.business_shortcode,
       c.is_active,
       coalesce(octet_length(c.consumer_key_enc), 0) > 0 AS has_consumer_key,
       coalesce(octet_length(c.consumer_secret_enc), 0) > 0 AS has_consumer_secret,
       coalesce(octet_length(c.passkey_enc), 0) > 0 AS has_passkey,
       (to_jsonb(c) ->> 'created_at')::timestamptz AS created_at,
       (to_jsonb(c) ->> 'updated_at')::timestamptz AS updated_at
FROM mpesa_sync.bar_status_v1 AS s
LEFT JOIN public.mpesa_credentials AS c ON c.tenant_id = s.bar_id
WHERE s.bar_id = %(bar_id)s
ORDER BY c.environment;

-- name: credentials_for_check
-- The stored key and secret of a bar's credential rows, for the Daraja
-- OAuth check only; they are decrypted in memory and never printed.
SELECT c.environment, c.consumer_key_enc, c.consumer_secret_enc
FROM public.mpesa_credentials AS c
WHERE c.tenant_id = %(bar_id)s
  AND (%(environment)s::text IS NULL OR c.environment = %(environment)s)
ORDER BY c.environment;
