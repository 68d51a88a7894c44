-- The streams a run's steps decide on, named on its task (filled by the task feed from the
-- run's queued event), so that claiming a task reads the run, its tenant, its connection
-- and its scope lock in the same statement. NULL on tasks fed before this column existed:
-- the engine then reads those streams itself.
ALTER TABLE workflow_tasks
    ADD COLUMN tenant_id     text,
    ADD COLUMN connection_id text,
    ADD COLUMN lock_id       text;
