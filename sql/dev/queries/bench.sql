-- Queries of `make bench` and `make instructions` (benchmarks/): the floors
-- our figures are compared with, and the data and statements they share.
--
-- A floor is what an app without mpesa-sync writes to do the same work by
-- hand: the bars written with the host's triggers on, one event row per bar
-- that changes (in by_hand_events, laid out as mpesa_sync.status_events) and
-- one notification per event on our channel, with our payload. It runs in a
-- database where mpesa-sync is not installed (bench_by_hand_install there).

-- name: bench_production_rows
-- An active production credential for every bar, so that no flip of the
-- sandbox rows changes a bar's status; the bars agree with the rule.
INSERT INTO public.mpesa_credentials (
    tenant_id, environment, business_shortcode,
    consumer_key_enc, consumer_secret_enc, passkey_enc, is_active
)
SELECT b.id, 'production', '600126', 'k', 's', 'p', true
FROM public.bars AS b;
UPDATE public.bars SET mpesa_enabled = true;

-- name: bench_by_hand_install
-- The app's event log, and its toggle in one round trip: a function, because
-- the bar's new status must be read after the credential's write (a CTE would
-- see the credential as it was). The function's plans are cached for the
-- session, as an app's prepared statements would be.
CREATE TABLE public.by_hand_events (
    event_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bar_id uuid NOT NULL,
    mpesa_enabled boolean NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX by_hand_events_bar_idx ON public.by_hand_events (bar_id, event_id);

CREATE FUNCTION public.by_hand_toggle(p_credential uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_bar uuid;
    v_notified bigint;
BEGIN
    UPDATE public.mpesa_credentials
    SET is_active = NOT is_active
    WHERE id = p_credential
    RETURNING tenant_id INTO v_bar;
    WITH changed AS (
        UPDATE public.bars AS b
        SET mpesa_enabled = s.expected
        FROM (
            SELECT EXISTS (
                SELECT 1 FROM public.mpesa_credentials AS c
                WHERE c.tenant_id = v_bar AND c.is_active
            ) AS expected
        ) AS s
        WHERE b.id = v_bar
          AND b.mpesa_enabled IS DISTINCT FROM s.expected
        RETURNING b.id, b.mpesa_enabled
    ),
    events AS (
        INSERT INTO public.by_hand_events (bar_id, mpesa_enabled)
        SELECT c.id, c.mpesa_enabled FROM changed AS c
        RETURNING event_id, bar_id, mpesa_enabled, at
    )
    SELECT count(pg_notify(
        'mpesa_status',
        '{"event_id": ' || e.event_id
            || ', "bar_id": "' || e.bar_id
            || '", "mpesa_enabled": ' || e.mpesa_enabled
            || ', "source": "credentials", "at": ' || to_json(e.at) || '}'
    ))
    INTO v_notified
    FROM events AS e;
END
$$;

-- name: bench_by_hand_toggle
-- One toggle by hand, in one round trip (autocommit).
SELECT public.by_hand_toggle(%(credential)s);

-- name: bench_dual_write
-- One toggle by hand, the way an app does it today: BEGIN, the toggle, this,
-- bench_dual_write_notify, COMMIT; five statements, five round trips.
UPDATE public.bars
SET mpesa_enabled = EXISTS (
    SELECT 1 FROM public.mpesa_credentials AS c WHERE c.tenant_id = bars.id AND c.is_active
)
WHERE id = %(bar)s;

-- name: bench_dual_write_notify
SELECT pg_notify('mpesa_status', %(bar)s::text);

-- name: bench_by_hand_flip_all
-- Every credential row flipped, by hand, set-based: the flip, then one
-- statement that recomputes every bar that has a credential, writes those
-- whose status differs, and records and announces each. Two statements sent
-- as one query string, which PostgreSQL runs as one transaction.
UPDATE public.mpesa_credentials SET is_active = NOT is_active;
WITH changed AS (
    UPDATE public.bars AS b
    SET mpesa_enabled = s.expected
    FROM (
        SELECT c.tenant_id AS bar_id, coalesce(bool_or(c.is_active), false) AS expected
        FROM public.mpesa_credentials AS c
        GROUP BY c.tenant_id
    ) AS s
    WHERE b.id = s.bar_id
      AND b.mpesa_enabled IS DISTINCT FROM s.expected
    RETURNING b.id, b.mpesa_enabled
),
events AS (
    INSERT INTO public.by_hand_events (bar_id, mpesa_enabled)
    SELECT c.id, c.mpesa_enabled FROM changed AS c
    RETURNING event_id, bar_id, mpesa_enabled, at
)
SELECT count(pg_notify(
    'mpesa_status',
    '{"event_id": ' || e.event_id
        || ', "bar_id": "' || e.bar_id
        || '", "mpesa_enabled": ' || e.mpesa_enabled
        || ', "source": "credentials", "at": ' || to_json(e.at) || '}'
))
FROM events AS e;

-- name: bench_flip_first
-- `make instructions`' bulk flip: one statement over the first %(bulk)s
-- credential rows in id order, whatever the table's size.
UPDATE public.mpesa_credentials SET is_active = NOT is_active
WHERE id IN (SELECT id FROM public.mpesa_credentials ORDER BY id LIMIT %(bulk)s);

-- name: bench_by_hand_flip_first
-- bench_flip_first by hand, set-based: the same flip, then one statement that
-- finds the flipped rows again through the primary key (the ids as an
-- array, so that it probes the index: an IN (subquery) like the flip's is
-- planned as a scan of the whole table at 100,000 bars), recomputes their
-- bars from their credentials, writes those whose status differs, and
-- records and announces each. Run inside BEGIN and COMMIT.
UPDATE public.mpesa_credentials SET is_active = NOT is_active
WHERE id IN (SELECT id FROM public.mpesa_credentials ORDER BY id LIMIT %(bulk)s);
WITH changed AS (
    UPDATE public.bars AS b
    SET mpesa_enabled = s.expected
    FROM (
        SELECT c.tenant_id AS bar_id, coalesce(bool_or(c.is_active), false) AS expected
        FROM public.mpesa_credentials AS c
        WHERE c.tenant_id IN (
            SELECT f.tenant_id
            FROM public.mpesa_credentials AS f
            WHERE f.id = ANY (ARRAY(
                SELECT id FROM public.mpesa_credentials ORDER BY id LIMIT %(bulk)s
            ))
        )
        GROUP BY c.tenant_id
    ) AS s
    WHERE b.id = s.bar_id
      AND b.mpesa_enabled IS DISTINCT FROM s.expected
    RETURNING b.id, b.mpesa_enabled
),
events AS (
    INSERT INTO public.by_hand_events (bar_id, mpesa_enabled)
    SELECT c.id, c.mpesa_enabled FROM changed AS c
    RETURNING event_id, bar_id, mpesa_enabled, at
)
SELECT count(pg_notify(
    'mpesa_status',
    '{"event_id": ' || e.event_id
        || ', "bar_id": "' || e.bar_id
        || '", "mpesa_enabled": ' || e.mpesa_enabled
        || ', "source": "credentials", "at": ' || to_json(e.at) || '}'
))
FROM events AS e;

-- name: bench_by_hand_reconcile
-- Every drifted bar fixed by hand, in one statement (one transaction): the
-- bars written with the host's triggers on, each fix recorded and announced.
-- Returns the number of bars fixed.
WITH fixed AS (
    UPDATE public.bars AS b
    SET mpesa_enabled = s.expected
    FROM (
        SELECT b2.id,
               EXISTS (SELECT 1 FROM public.mpesa_credentials AS c
                       WHERE c.tenant_id = b2.id AND c.is_active) AS expected
        FROM public.bars AS b2
    ) AS s
    WHERE s.id = b.id
      AND b.mpesa_enabled IS DISTINCT FROM s.expected
    RETURNING b.id, b.mpesa_enabled
),
events AS (
    INSERT INTO public.by_hand_events (bar_id, mpesa_enabled)
    SELECT f.id, f.mpesa_enabled FROM fixed AS f
    RETURNING event_id, bar_id, mpesa_enabled, at
)
SELECT count(pg_notify(
    'mpesa_status',
    '{"event_id": ' || e.event_id
        || ', "bar_id": "' || e.bar_id
        || '", "mpesa_enabled": ' || e.mpesa_enabled
        || ', "source": "reconcile", "at": ' || to_json(e.at) || '}'
))
FROM events AS e;

-- name: bench_bare_fix
-- The drift fixed with nothing around it: one UPDATE ... FROM, run with
-- session_replication_role = replica so that no trigger fires and no event
-- is written. Informational: less than any fix that keeps the rule.
UPDATE public.bars AS b
SET mpesa_enabled = s.expected
FROM (
    SELECT b2.id,
           EXISTS (SELECT 1 FROM public.mpesa_credentials AS c
                   WHERE c.tenant_id = b2.id AND c.is_active) AS expected
    FROM public.bars AS b2
) AS s
WHERE s.id = b.id
  AND b.mpesa_enabled IS DISTINCT FROM s.expected;

-- name: bench_bare_count
-- verify's floor: the drifted bars counted in one query.
SELECT count(*)
FROM public.bars AS b
WHERE b.mpesa_enabled IS DISTINCT FROM EXISTS (
    SELECT 1 FROM public.mpesa_credentials AS c WHERE c.tenant_id = b.id AND c.is_active);

-- name: bench_toggles
-- `make instructions`' toggles: one procedure runs p_n of them, each in its
-- own transaction, so that no client round trip is counted. p_way: 'bare'
-- (the UPDATE alone: also what runs where mpesa-sync is installed), 'dual
-- write' (the app's dual write as today) or 'by hand' (by_hand_toggle).
CREATE PROCEDURE public.toggles(p_n integer, p_way text) LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT id, tenant_id FROM public.mpesa_credentials ORDER BY id LIMIT p_n LOOP
        IF p_way = 'by hand' THEN
            PERFORM public.by_hand_toggle(r.id);
        ELSE
            UPDATE public.mpesa_credentials SET is_active = NOT is_active WHERE id = r.id;
        END IF;
        IF p_way = 'dual write' THEN
            UPDATE public.bars SET mpesa_enabled = EXISTS (
                SELECT 1 FROM public.mpesa_credentials AS c
                WHERE c.tenant_id = bars.id AND c.is_active
            ) WHERE id = r.tenant_id;
            PERFORM pg_notify('mpesa_status', r.tenant_id::text);
        END IF;
        COMMIT;
    END LOOP;
END
$$;
