-- Retention: `mpesa-sync prune` (mpesa_sync/retention.py).

-- name: prune_batch
-- One batch of mpesa_sync.prune_v1 (at most batch_size events and as many
-- alerts) in its own transaction; "more" says whether to call again. A dry
-- run counts everything at once and deletes nothing.
SELECT mpesa_sync.prune_v1(%(older_than)s, %(batch_size)s, %(dry_run)s);
