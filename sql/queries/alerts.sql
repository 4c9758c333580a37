-- Alerts: things a person must look at. mpesa_sync.raise_alert_v1 records one
-- and announces it on channel mpesa_alerts.

-- name: raise_alert
SELECT mpesa_sync.raise_alert_v1(%(kind)s, %(bar_id)s, %(detail)s);

-- name: list_alerts
-- Open alerts, or every alert when include_acknowledged.
SELECT id, created_at, kind, bar_id, detail, acknowledged_at
FROM mpesa_sync.alerts
WHERE %(include_acknowledged)s OR acknowledged_at IS NULL
ORDER BY id;

-- name: acknowledge_alert
-- Acknowledges an open alert; an alert acknowledged before keeps its time.
-- No row: no such alert. newly is false when it was already acknowledged.
WITH target AS (
    SELECT a.id, a.acknowledged_at
    FROM mpesa_sync.alerts AS a
    WHERE a.id = %(id)s
    FOR UPDATE
),
acknowledged AS (
    UPDATE mpesa_sync.alerts AS a
    SET acknowledged_at = now()
    FROM target AS t
    WHERE a.id = t.id
      AND t.acknowledged_at IS NULL
    RETURNING a.id
)
SELECT a.id, a.created_at, a.kind, a.bar_id, a.detail,
       coalesce(t.acknowledged_at, now()) AS acknowledged_at,
       t.acknowledged_at IS NULL AS newly
FROM target AS t
JOIN mpesa_sync.alerts AS a ON a.id = t.id;
