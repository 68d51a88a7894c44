-- Runs that need work, fed from the global log by the `workflow_tasks` consumer. Runners
-- claim due tasks with FOR UPDATE SKIP LOCKED and hold them with a lease: a crashed
-- runner's lease expires and another instance picks the task up.
CREATE TABLE workflow_tasks (
    run_id       uuid PRIMARY KEY,
    workspace_id text        NOT NULL,
    run_type     text        NOT NULL,
    due_at       timestamptz NOT NULL,
    lease_owner  text,
    lease_until  timestamptz,
    claims       integer     NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX workflow_tasks_due ON workflow_tasks (due_at);
