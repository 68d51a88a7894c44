-- The latest rebuild of read models, for operators (issue 17): one row, written by the
-- rebuild as it goes on connections of its own, so it is visible while the rebuild's
-- transaction is open. Whether a rebuild runs right now is its advisory lock, not this
-- row (a process that ended mid-rebuild leaves `running` behind; readers tell by the lock).
CREATE TABLE rebuild_status (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    state text NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    read_models text[] NOT NULL,
    events_applied bigint NOT NULL,
    events_total bigint NOT NULL,
    started_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    finished_at timestamptz,
    error text
);
