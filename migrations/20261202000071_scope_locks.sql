-- Scope locks (R2.2) as rows instead of events (issue 13, event economy). A run's hold on
-- its scope is operational state: taken in the transaction that queues the run, dropped
-- in the one that ends it (or cancels it while queued). The primary key lets exactly one
-- of many concurrent starts through; the others meet its row (or its unique violation,
-- and retry) and are answered with the active run (same type) or scope busy. The
-- `scope_lock` streams of earlier runs stay in the log, readable, and are not written any
-- more.
CREATE TABLE scope_locks (
    lock_id      text PRIMARY KEY,
    workspace_id text        NOT NULL,
    run_id       uuid        NOT NULL,
    run_type     text        NOT NULL,
    acquired_at  timestamptz NOT NULL
);

-- The locks held when this migration runs: every scope whose last event is an acquisition.
INSERT INTO scope_locks (lock_id, workspace_id, run_id, run_type, acquired_at)
SELECT last.aggregate_id,
       split_part(last.aggregate_id, ':', 1),
       (last.payload -> 'ScopeAcquired' ->> 'run_id')::uuid,
       last.payload -> 'ScopeAcquired' ->> 'run_type',
       (last.payload -> 'ScopeAcquired' ->> 'at')::timestamptz
FROM (
    SELECT DISTINCT ON (aggregate_id) aggregate_id, event_type, payload
    FROM events
    WHERE aggregate_type = 'scope_lock'
    ORDER BY aggregate_id, sequence DESC
) last
WHERE last.event_type = 'ScopeAcquired';
