-- mpesa_sync v3: the sync costs little more than the writes it must make.
--
-- * The credential trigger does the whole sync itself, with no function in
--   between: one row of one bar takes five small statements, each an index
--   lookup of that bar; a statement over many rows takes two set-based ones.
--   Every statement is driven by the rows the write changed, through index
--   lookups, so the sync does work in proportion to the rows changed, never
--   to the table, with plans that are fixed (no dynamic SQL) and right at
--   every size.
-- * Our own write of bars skips the correction trigger, by trigger depth
--   (pg_trigger_depth(), which no session can fake; see
--   zz_mpesa_sync_correct_update_v3), and is staged for the events in the
--   statement that makes it; the staging trigger on bars skips it too.
-- * REPEATABLE READ and SERIALIZABLE check their snapshot without a
--   subtransaction: the credential rows of the bars are locked with SKIP
--   LOCKED and a skipped row is a serialization failure (40001), where v2
--   caught NOWAIT's error in an exception block, a subtransaction per write.
-- * Publishing at commit is one statement.
-- * The newest-id lookup of event_log_v1 is bounded by pruned_through.
-- depends: 0006_mpesa_sync_managed_host_v1

SET LOCAL lock_timeout = '5s';

-- Sync ---------------------------------------------------------------------------

-- AFTER ... FOR EACH STATEMENT on mpesa_credentials (INSERT, UPDATE, DELETE):
-- bring the bars the statement touched in line with their credentials, in
-- the caller's transaction.
--
-- 1. The touched bars (only rows whose is_active or tenant_id changed; a row
--    that moved recomputes both bars), locked in id order FOR NO KEY UPDATE,
--    each with the value it has now. Writers of one bar take turns here, so
--    two transactions that each change a different credential row of one bar
--    cannot both decide from a snapshot that misses the other's change;
--    writers of different bars lock different rows. (NO KEY UPDATE does not
--    conflict with the KEY SHARE lock of a credential insert's foreign key
--    check.)
-- 2. REPEATABLE READ and SERIALIZABLE: the snapshot check (see
--    bar_write_tokens). READ COMMITTED: the tokens of bars a row was added to.
-- 3. Recompute in a new statement, which under READ COMMITTED takes a fresh
--    snapshot and so sees every change committed by a writer we waited for
--    in step 1; write the bars whose value changes and stage each change for
--    publish_status_events_v3.
--
-- One row of one bar (a toggle, a save): scalar statements, each an index
-- lookup of that bar. More: each step is one statement over all the rows,
-- with the bars locked and the rule probed through LATERAL subqueries, which
-- can only run as one index lookup per bar. The plans are generic
-- (plan_cache_mode), so none is chosen per call, and enable_seqscan = off
-- keeps a plan made while a table was small from scanning it once it is
-- large; both are right at every size.
--
-- The bars are written with mpesa_sync.sync_depth set to this trigger depth:
-- the correction trigger and the staging trigger on bars skip exactly that
-- write (its value was computed under the row lock, and is staged here).
CREATE FUNCTION mpesa_sync.credentials_changed_v3()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
    v_touched uuid[];
    v_added boolean[];
    v_bar_ids uuid[];
    v_was boolean[];
    v_added_to uuid[];
    v_bump uuid[];
    v_snapshot_check boolean;
    v_visible bigint;
    v_locked bigint;
    -- mpesa_sync.sync_depth as the caller left it, put back after our write
    -- (a host trigger that fires inside our write may write credentials, and
    -- so run this function one level deeper)
    v_depth_before text := current_setting('mpesa_sync.sync_depth', true);
    v_setting text;
    v_rows bigint;
    v_bar_id uuid;
    v_old_bar uuid;
    v_old_active boolean;
    v_new_active boolean;
    v_was_one boolean;
    v_expected boolean;
    v_written boolean;
    v_one boolean := false;
BEGIN
    -- One row, one bar: the statements of a toggle, each an index lookup of
    -- that bar. (LIMIT 2 tells one row from more without reading them all.)
    IF TG_OP = 'UPDATE' THEN
        SELECT o.tenant_id, o.is_active, n.tenant_id, n.is_active, count(*) OVER ()
        INTO v_old_bar, v_old_active, v_bar_id, v_new_active, v_rows
        FROM (SELECT o.tenant_id, o.is_active FROM old_rows AS o LIMIT 2) AS o
        CROSS JOIN (SELECT n.tenant_id, n.is_active FROM new_rows AS n LIMIT 2) AS n
        LIMIT 1;
        IF v_rows = 1 AND v_old_bar = v_bar_id THEN
            IF v_old_active IS NOT DISTINCT FROM v_new_active THEN
                RETURN NULL;  -- nothing the rule reads changed
            END IF;
        ELSE
            v_bar_id := NULL;
        END IF;
    ELSIF TG_OP = 'INSERT' THEN
        SELECT n.tenant_id, count(*) OVER ()
        INTO v_bar_id, v_rows
        FROM (SELECT n.tenant_id FROM new_rows AS n LIMIT 2) AS n
        LIMIT 1;
    ELSE
        SELECT o.tenant_id, count(*) OVER ()
        INTO v_bar_id, v_rows
        FROM (SELECT o.tenant_id FROM old_rows AS o LIMIT 2) AS o
        LIMIT 1;
    END IF;

    IF v_rows = 1 AND v_bar_id IS NOT NULL THEN
        SELECT b.mpesa_enabled INTO v_was_one
        FROM public.bars AS b
        WHERE b.id = v_bar_id
        FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            RETURN NULL;  -- the bar is gone (deleted in this transaction)
        END IF;
        v_one := true;
        v_bar_ids := ARRAY[v_bar_id];
        IF TG_OP = 'INSERT' THEN
            v_added_to := v_bar_ids;
        END IF;
    -- Many rows: the touched bars in id order (each with whether a row was
    -- added to it), then the same steps as one set-based statement each.
    ELSE
        IF TG_OP = 'UPDATE' THEN
            -- FULL JOIN pairs the old and new rows with a hash join at every
            -- size (transition tables carry no statistics; a nested loop
            -- would be quadratic).
            SELECT array_agg(t.bar_id ORDER BY t.bar_id), array_agg(t.added ORDER BY t.bar_id)
            INTO v_touched, v_added
            FROM (
                SELECT t.bar_id, bool_or(t.added) AS added
                FROM old_rows AS o
                FULL JOIN new_rows AS n ON n.id = o.id
                CROSS JOIN LATERAL (
                    VALUES (o.tenant_id, false),
                           (n.tenant_id, o.tenant_id IS DISTINCT FROM n.tenant_id)
                ) AS t (bar_id, added)
                WHERE t.bar_id IS NOT NULL
                  AND (o.id IS NULL
                       OR n.id IS NULL
                       OR o.tenant_id IS DISTINCT FROM n.tenant_id
                       OR o.is_active IS DISTINCT FROM n.is_active)
                GROUP BY t.bar_id
            ) AS t;
        ELSIF TG_OP = 'INSERT' THEN
            SELECT array_agg(t.bar_id ORDER BY t.bar_id), array_agg(true)
            INTO v_touched, v_added
            FROM (SELECT DISTINCT n.tenant_id AS bar_id FROM new_rows AS n) AS t;
        ELSE  -- DELETE
            SELECT array_agg(t.bar_id ORDER BY t.bar_id), array_agg(false)
            INTO v_touched, v_added
            FROM (SELECT DISTINCT o.tenant_id AS bar_id FROM old_rows AS o) AS t;
        END IF;
        -- Each bar locked by its own index lookup, in the array's order.
        SELECT array_agg(b.id), array_agg(b.mpesa_enabled), array_agg(b.id) FILTER (WHERE t.added)
        INTO v_bar_ids, v_was, v_added_to
        FROM unnest(v_touched, v_added) AS t (bar_id, added)
        CROSS JOIN LATERAL (
            SELECT b.id, b.mpesa_enabled
            FROM public.bars AS b
            WHERE b.id = t.bar_id
            FOR NO KEY UPDATE
        ) AS b;
    END IF;

    IF v_bar_ids IS NULL THEN
        RETURN NULL;  -- no bar to sync (none touched, or each deleted with its bar)
    END IF;

    -- 2.
    v_snapshot_check := current_setting('transaction_isolation') <> 'read committed';
    -- REPEATABLE READ and above bump every bar's token (one that a
    -- transaction committed after our snapshot bumped is a serialization
    -- failure); READ COMMITTED those of bars a row was added to.
    v_bump := CASE WHEN v_snapshot_check THEN v_bar_ids ELSE v_added_to END;
    IF v_bump IS NOT NULL THEN
        INSERT INTO mpesa_sync.bar_write_tokens AS t (bar_id)
        SELECT u.bar_id FROM unnest(v_bump) AS u (bar_id) ORDER BY u.bar_id
        ON CONFLICT (bar_id) DO UPDATE SET writes = t.writes + 1;
    END IF;
    IF v_snapshot_check THEN
        -- Lock the credential rows our snapshot sees: a row changed or deleted
        -- by a transaction committed after our snapshot fails the lock with
        -- 40001; a row another transaction is changing right now is skipped
        -- (waiting for it could deadlock with our bar locks) and counted.
        SELECT count(*),
               count(*) FILTER (WHERE EXISTS (
                   SELECT 1
                   FROM public.mpesa_credentials AS l
                   WHERE l.id = c.id
                   FOR SHARE SKIP LOCKED
               ))
        INTO v_visible, v_locked
        FROM public.mpesa_credentials AS c
        WHERE c.tenant_id = ANY (v_bar_ids);
        IF v_locked < v_visible THEN
            RAISE EXCEPTION 'mpesa_sync: a credential of a bar being synced is being changed concurrently'
                USING ERRCODE = 'serialization_failure',
                      HINT = 'retry the transaction';
        END IF;
    END IF;

    -- 3.
    IF v_one THEN
        v_expected := EXISTS (
            SELECT 1
            FROM public.mpesa_credentials AS c
            WHERE c.tenant_id = v_bar_id
              AND c.is_active
        );
        IF v_expected IS NOT DISTINCT FROM v_was_one THEN
            RETURN NULL;
        END IF;
        v_setting := set_config('mpesa_sync.sync_depth', pg_trigger_depth()::text, true);
        -- (what was written: a host's BEFORE trigger may change or skip it)
        UPDATE public.bars AS b
        SET mpesa_enabled = v_expected
        WHERE b.id = v_bar_id
        RETURNING b.mpesa_enabled INTO v_written;
        v_setting := set_config('mpesa_sync.sync_depth', coalesce(v_depth_before, ''), true);
        IF FOUND THEN
            INSERT INTO mpesa_sync.pending_changes AS p (
                xid, bar_id, was_enabled, mpesa_enabled, source, opens_commit
            )
            SELECT pg_current_xact_id(), v_bar_id, v_was_one, v_written, 'credentials',
                   NOT EXISTS (
                       SELECT 1 FROM mpesa_sync.pending_changes AS q
                       WHERE q.xid = pg_current_xact_id()
                   )
            ON CONFLICT (xid, bar_id) DO UPDATE
            SET mpesa_enabled = excluded.mpesa_enabled,
                source = excluded.source;
        END IF;
        RETURN NULL;
    END IF;
    v_setting := set_config('mpesa_sync.sync_depth', pg_trigger_depth()::text, true);
    WITH changed AS (
        UPDATE public.bars AS b
        SET mpesa_enabled = s.expected
        FROM (
            -- The rule, as in bar_status_v1, as a LATERAL probe: an index
            -- lookup per bar at every size, where a generic plan of EXISTS
            -- may hash every active credential.
            SELECT u.bar_id, u.was, a.active IS NOT NULL AS expected
            FROM unnest(v_bar_ids, v_was) AS u (bar_id, was)
            LEFT JOIN LATERAL (
                SELECT true AS active
                FROM public.mpesa_credentials AS c
                WHERE c.tenant_id = u.bar_id
                  AND c.is_active
                LIMIT 1
            ) AS a ON true
        ) AS s
        WHERE b.id = s.bar_id
          AND s.was IS DISTINCT FROM s.expected
        RETURNING b.id, s.was, b.mpesa_enabled
    )
    INSERT INTO mpesa_sync.pending_changes AS p (
        xid, bar_id, was_enabled, mpesa_enabled, source, opens_commit
    )
    SELECT
        pg_current_xact_id(),
        c.id,
        c.was,
        c.mpesa_enabled,
        'credentials',
        row_number() OVER () = 1 AND NOT EXISTS (
            SELECT 1 FROM mpesa_sync.pending_changes AS q WHERE q.xid = pg_current_xact_id()
        )
    FROM changed AS c
    ON CONFLICT (xid, bar_id) DO UPDATE
    SET mpesa_enabled = excluded.mpesa_enabled,
        source = excluded.source;
    v_setting := set_config('mpesa_sync.sync_depth', coalesce(v_depth_before, ''), true);
    RETURN NULL;
END
$$;

-- AFTER TRUNCATE ... FOR EACH STATEMENT on mpesa_credentials: no credential is
-- left, so every bar that is not false becomes false. TRUNCATE holds the
-- table exclusively, so no credential writer runs beside it; the write goes
-- through the correction and staging triggers like any other write of bars.
CREATE FUNCTION mpesa_sync.credentials_truncated_v3()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- The label of the events this function causes, read by the staging
    -- trigger; put back on the way out.
    v_source_before text := current_setting('mpesa_sync.source', true);
BEGIN
    PERFORM set_config('mpesa_sync.source', 'credentials', true);
    UPDATE public.bars AS b
    SET mpesa_enabled = false
    WHERE b.mpesa_enabled IS DISTINCT FROM false;
    PERFORM set_config('mpesa_sync.source', coalesce(v_source_before, ''), true);
    RETURN NULL;
END
$$;

-- AFTER UPDATE ... FOR EACH STATEMENT on bars, for every write of bars but
-- ours: each real change of a bar's mpesa_enabled,
-- staged in pending_changes for publish_status_events_v3 at commit. The source
-- comes from the function that made the change (set while it runs: reconcile,
-- save_settings), else it was a corrected direct write. A bar changed before
-- in this transaction keeps the value it had before the transaction and takes
-- its new value and source from this change. The transaction's first staged
-- row queues the publish at commit (opens_commit).
-- FULL JOIN pairs the transition tables with a hash join at every size.
CREATE FUNCTION mpesa_sync.record_status_changes_v3()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
AS $$
BEGIN
    -- Our own write, staged by credentials_changed_v3: the statement it runs
    -- at its trigger depth, one below this function's. (The same test as the
    -- correction trigger's WHEN, made here rather than in a WHEN clause of
    -- this trigger: a WHEN is read from the catalog for every statement, and
    -- for one statement costs more than this IF.)
    IF pg_trigger_depth() > 1
       AND current_setting('mpesa_sync.sync_depth', true) = (pg_trigger_depth() - 1)::text THEN
        RETURN NULL;
    END IF;
    INSERT INTO mpesa_sync.pending_changes AS p (
        xid, bar_id, was_enabled, mpesa_enabled, source, opens_commit
    )
    SELECT
        pg_current_xact_id(),
        n.id,
        o.mpesa_enabled,
        n.mpesa_enabled,
        coalesce(nullif(current_setting('mpesa_sync.source', true), ''), 'correction'),
        row_number() OVER () = 1 AND NOT EXISTS (
            SELECT 1 FROM mpesa_sync.pending_changes AS q WHERE q.xid = pg_current_xact_id()
        )
    FROM new_rows AS n
    FULL JOIN old_rows AS o ON o.id = n.id
    WHERE o.mpesa_enabled IS DISTINCT FROM n.mpesa_enabled
    ON CONFLICT (xid, bar_id) DO UPDATE
    SET mpesa_enabled = excluded.mpesa_enabled,
        source = excluded.source;
    RETURN NULL;
END
$$;

-- Events at commit ------------------------------------------------------------------

-- The deferred constraint trigger on pending_changes, fired once per
-- transaction (opens_commit) when it commits (or at PREPARE TRANSACTION, or
-- SET CONSTRAINTS ALL IMMEDIATE): the transaction's net changes become
-- events, numbered in commit order, and notifications, in one statement.
--
-- A bar's net change is the value it commits with against its value before
-- the transaction first changed it: a bar switched off and on again is no
-- change and gets no event.
--
-- Event ids are handed out under a transaction-level advisory lock taken
-- here, at commit, and released after the commit is visible to everyone, so
-- ids are strictly increasing in commit order (see v2). The lock is taken by
-- "locked", which yields a row only when there is a net change, so a
-- transaction without one takes no lock (and PREPARE TRANSACTION of it holds
-- none). No event row can be made before it: "inserted" reads the join of
-- the changes with "locked", which produces nothing until both are read.
-- 470037132129 is 'mpesa' in ASCII.
CREATE FUNCTION mpesa_sync.publish_status_events_v3()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
AS $$
DECLARE
    v_notified bigint;
BEGIN
    WITH published AS (
        DELETE FROM mpesa_sync.pending_changes AS p
        WHERE p.xid = NEW.xid
        RETURNING p.bar_id, p.was_enabled, p.mpesa_enabled, p.source
    ),
    changes AS (
        SELECT p.bar_id, p.mpesa_enabled, p.source
        FROM published AS p
        WHERE p.mpesa_enabled IS DISTINCT FROM p.was_enabled
    ),
    locked AS (
        SELECT pg_advisory_xact_lock(470037132129)
        FROM (SELECT 1 FROM changes LIMIT 1) AS any_change
    ),
    inserted AS (
        INSERT INTO mpesa_sync.status_events (bar_id, mpesa_enabled, source)
        SELECT c.bar_id, c.mpesa_enabled, c.source
        FROM changes AS c
        CROSS JOIN locked
        ORDER BY c.bar_id
        RETURNING event_id, bar_id, mpesa_enabled, source, at
    )
    -- The payload spelled out (json_build_object costs a tenth of a large
    -- flip); the same keys and values as in v1 and v2.
    SELECT count(pg_notify(
        'mpesa_status',
        '{"event_id": ' || i.event_id
            || ', "bar_id": "' || i.bar_id
            || '", "mpesa_enabled": ' || i.mpesa_enabled
            || ', "source": ' || to_json(i.source)
            || ', "at": ' || to_json(i.at) || '}'
    ))
    INTO v_notified
    FROM inserted AS i;
    RETURN NULL;
END
$$;

-- The log's head, bounded ---------------------------------------------------------

-- As in 0005, with the newest id looked up above pruned_through like the
-- oldest: after a large prune the index still holds the deleted entries
-- until VACUUM, and an unbounded max() would walk them when the log is
-- empty. Same columns, same answers.
CREATE OR REPLACE VIEW mpesa_sync.event_log_v1 AS
SELECT
    md5(l.install_id::text || ':' || 'mpesa_sync.status_events'::regclass::oid::text)::uuid
        AS generation,
    l.pruned_through,
    (
        SELECT e.event_id
        FROM mpesa_sync.status_events AS e
        WHERE e.event_id > l.pruned_through
        ORDER BY e.event_id
        LIMIT 1
    ) AS oldest_event_id,
    greatest(
        l.pruned_through,
        (
            SELECT e.event_id
            FROM mpesa_sync.status_events AS e
            WHERE e.event_id > l.pruned_through
            ORDER BY e.event_id DESC
            LIMIT 1
        )
    ) AS newest_event_id
FROM mpesa_sync.event_log AS l;

-- The settings API: same name, arguments, validation and result as in 0003;
-- a bar that had drifted before the call is now fixed through the correction
-- trigger (sync_bars_v2 is gone).
CREATE OR REPLACE FUNCTION mpesa_sync.save_settings(
    p_bar_id uuid,
    p_environment text,
    p_business_shortcode text,
    p_consumer_key_enc bytea,
    p_consumer_secret_enc bytea,
    p_passkey_enc bytea,
    p_is_active boolean
)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- The label of the events this function causes, read by the triggers
    -- it fires. Set here with set_config() and restored on the way out
    -- (a function's SET clause of a custom setting needs a superuser).
    v_source_before text := current_setting('mpesa_sync.source', true);
    v_credential_id uuid;
    v_status mpesa_sync.bar_status_v1;
BEGIN
    PERFORM set_config('mpesa_sync.source', 'credentials', true);
    IF p_bar_id IS NULL THEN
        RAISE EXCEPTION 'invalid bar_id: required'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'bar_id';
    END IF;
    IF p_environment IS NULL OR p_environment NOT IN ('sandbox', 'production') THEN
        RAISE EXCEPTION 'invalid environment: must be sandbox or production'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'environment';
    END IF;
    IF p_business_shortcode IS NULL OR p_business_shortcode !~ '^[0-9]{5,7}$' THEN
        RAISE EXCEPTION 'invalid business_shortcode: must be 5 to 7 digits'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'business_shortcode';
    END IF;
    IF coalesce(octet_length(p_consumer_key_enc), 0) = 0 THEN
        RAISE EXCEPTION 'invalid consumer_key_enc: required and must not be empty'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'consumer_key_enc';
    END IF;
    IF coalesce(octet_length(p_consumer_secret_enc), 0) = 0 THEN
        RAISE EXCEPTION 'invalid consumer_secret_enc: required and must not be empty'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'consumer_secret_enc';
    END IF;
    IF coalesce(octet_length(p_passkey_enc), 0) = 0 THEN
        RAISE EXCEPTION 'invalid passkey_enc: required and must not be empty'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'passkey_enc';
    END IF;
    IF p_is_active IS NULL THEN
        RAISE EXCEPTION 'invalid is_active: required'
            USING ERRCODE = 'invalid_parameter_value', COLUMN = 'is_active';
    END IF;
    -- A bar deleted after this check still fails, on the foreign key, with
    -- the same SQLSTATE.
    IF NOT EXISTS (SELECT 1 FROM public.bars AS b WHERE b.id = p_bar_id) THEN
        RAISE EXCEPTION 'unknown bar_id: no bar %', p_bar_id
            USING ERRCODE = 'foreign_key_violation', COLUMN = 'bar_id';
    END IF;

    INSERT INTO public.mpesa_credentials AS c (
        tenant_id, environment, business_shortcode,
        consumer_key_enc, consumer_secret_enc, passkey_enc, is_active
    )
    VALUES (
        p_bar_id, p_environment, p_business_shortcode,
        p_consumer_key_enc, p_consumer_secret_enc, p_passkey_enc, p_is_active
    )
    ON CONFLICT (tenant_id, environment) DO UPDATE
    SET business_shortcode = excluded.business_shortcode,
        consumer_key_enc = excluded.consumer_key_enc,
        consumer_secret_enc = excluded.consumer_secret_enc,
        passkey_enc = excluded.passkey_enc,
        is_active = excluded.is_active
    RETURNING c.id INTO v_credential_id;

    -- The upsert's trigger synced the bar when is_active changed; a bar that
    -- had drifted before this call is fixed here, as reconcile fixes it: the
    -- correction trigger recomputes the value under the bar's row lock.
    SELECT s.* INTO v_status
    FROM mpesa_sync.bar_status_v1 AS s
    WHERE s.bar_id = p_bar_id;

    IF v_status.mpesa_enabled IS DISTINCT FROM v_status.expected THEN
        UPDATE public.bars AS b
        SET mpesa_enabled = v_status.expected
        WHERE b.id = p_bar_id;
        SELECT s.* INTO v_status
        FROM mpesa_sync.bar_status_v1 AS s
        WHERE s.bar_id = p_bar_id;
    END IF;

    PERFORM set_config('mpesa_sync.source', coalesce(v_source_before, ''), true);
    RETURN jsonb_build_object(
        'success', v_status.mpesa_enabled IS NOT DISTINCT FROM v_status.expected,
        'credentials_saved', true,
        'status_synced', v_status.mpesa_enabled IS NOT DISTINCT FROM v_status.expected,
        'mpesa_enabled', v_status.mpesa_enabled,
        'bar_id', p_bar_id,
        'environment', p_environment,
        'is_active', p_is_active,
        'credential_id', v_credential_id
    );
END
$$;

-- Triggers: v2 out, v3 in -------------------------------------------------------------

DROP TRIGGER mpesa_sync_credentials_insert_v2 ON public.mpesa_credentials;
DROP TRIGGER mpesa_sync_credentials_update_v2 ON public.mpesa_credentials;
DROP TRIGGER mpesa_sync_credentials_delete_v2 ON public.mpesa_credentials;
DROP TRIGGER mpesa_sync_credentials_truncate_v2 ON public.mpesa_credentials;
DROP TRIGGER mpesa_sync_status_changes_v2 ON public.bars;
DROP TRIGGER zz_mpesa_sync_correct_update_v1 ON public.bars;
DROP TRIGGER mpesa_sync_publish_v2 ON mpesa_sync.pending_changes;

CREATE TRIGGER mpesa_sync_credentials_insert_v3
    AFTER INSERT ON public.mpesa_credentials
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mpesa_sync.credentials_changed_v3();

CREATE TRIGGER mpesa_sync_credentials_update_v3
    AFTER UPDATE ON public.mpesa_credentials
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mpesa_sync.credentials_changed_v3();

CREATE TRIGGER mpesa_sync_credentials_delete_v3
    AFTER DELETE ON public.mpesa_credentials
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mpesa_sync.credentials_changed_v3();

CREATE TRIGGER mpesa_sync_credentials_truncate_v3
    AFTER TRUNCATE ON public.mpesa_credentials
    FOR EACH STATEMENT EXECUTE FUNCTION mpesa_sync.credentials_truncated_v3();

-- Whatever a writer puts in mpesa_enabled, the row gets the credentials'
-- value (correct_bar_v1, as since v1), except in our own write: the
-- statement credentials_changed_v3 runs with mpesa_sync.sync_depth set to its
-- trigger depth, whose values it computed under the row lock. That write is
-- told apart by two things together: the trigger depth, which no session can
-- fake (pg_trigger_depth() is 0 outside every trigger), and the setting,
-- which names exactly that depth while the statement runs. A host trigger
-- firing inside our statement runs one level deeper and is corrected; so is
-- every write outside a trigger, whatever the setting says.
CREATE TRIGGER zz_mpesa_sync_correct_update_v3
    BEFORE UPDATE ON public.bars
    FOR EACH ROW
    WHEN (NEW.mpesa_enabled IS DISTINCT FROM OLD.mpesa_enabled
          AND (pg_trigger_depth() = 0
               OR current_setting('mpesa_sync.sync_depth', true)
                  IS DISTINCT FROM pg_trigger_depth()::text))
    EXECUTE FUNCTION mpesa_sync.correct_bar_v1();

-- Every other write of bars is staged here (ours is staged by
-- credentials_changed_v3 itself: see the function).
CREATE TRIGGER mpesa_sync_status_changes_v3
    AFTER UPDATE ON public.bars
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mpesa_sync.record_status_changes_v3();

CREATE CONSTRAINT TRIGGER mpesa_sync_publish_v3
    AFTER INSERT ON mpesa_sync.pending_changes
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (NEW.opens_commit)
    EXECUTE FUNCTION mpesa_sync.publish_status_events_v3();

DROP FUNCTION mpesa_sync.credentials_changed_v2();
DROP FUNCTION mpesa_sync.sync_bars_v2(uuid[], uuid[]);
DROP FUNCTION mpesa_sync.check_snapshot_v2(uuid[]);
DROP FUNCTION mpesa_sync.bump_tokens_v2(uuid[]);
DROP FUNCTION mpesa_sync.record_status_changes_v2();
DROP FUNCTION mpesa_sync.publish_status_events_v2();

-- Privileges ------------------------------------------------------------------------

-- The new functions are for their triggers only (each SECURITY DEFINER):
-- revoked from PUBLIC, and by name from Supabase's customer roles in case
-- default privileges granted them something.
REVOKE ALL ON FUNCTION mpesa_sync.credentials_changed_v3() FROM PUBLIC;
REVOKE ALL ON FUNCTION mpesa_sync.credentials_truncated_v3() FROM PUBLIC;
REVOKE ALL ON FUNCTION mpesa_sync.record_status_changes_v3() FROM PUBLIC;
REVOKE ALL ON FUNCTION mpesa_sync.publish_status_events_v3() FROM PUBLIC;

DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
            EXECUTE format(
                'REVOKE ALL ON FUNCTION mpesa_sync.credentials_changed_v3(),'
                ' mpesa_sync.credentials_truncated_v3(), mpesa_sync.record_status_changes_v3(),'
                ' mpesa_sync.publish_status_events_v3() FROM %I',
                v_role
            );
        END IF;
    END LOOP;
END
$$;
