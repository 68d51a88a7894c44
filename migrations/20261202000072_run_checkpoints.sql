-- A run's checkpoint (issue 13, event economy): the progress the workflow engine records
-- for a run (its start and each step's attempts, as run events), kept on its task row
-- instead of the log. The engine writes it in the transaction that writes the step's
-- effects, at the version it read (every write bumps it; so does a person's command on
-- the run). The run's end carries the checkpoint into the log, and the row goes with the
-- run.
ALTER TABLE workflow_tasks
    ADD COLUMN progress         jsonb   NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN progress_version integer NOT NULL DEFAULT 0;

-- The API shows a running run's start and steps from its checkpoint (its read model learns
-- them at the run's end), through its workspace-confined role: only the columns it needs,
-- only its workspace's rows. The engine and the task feed (the table's owner) see all.
ALTER TABLE workflow_tasks ENABLE ROW LEVEL SECURITY;
ALTER TABLE workflow_tasks FORCE ROW LEVEL SECURITY;
CREATE POLICY workspace_isolation ON workflow_tasks FOR SELECT TO tenantflow_reader
    USING (workspace_id = current_setting('app.workspace', true));
CREATE POLICY task_owner ON workflow_tasks TO CURRENT_USER USING (true) WITH CHECK (true);
GRANT SELECT (run_id, workspace_id, progress) ON workflow_tasks TO tenantflow_reader;

-- A run's status and start as the API shows them: a run whose start is still in its
-- checkpoint is running, although its read model says queued.
CREATE FUNCTION tenantflow_run_status(p_run_id uuid, p_status text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_status = 'queued' AND EXISTS (
        SELECT 1 FROM workflow_tasks t
        WHERE t.run_id = p_run_id AND t.progress @> '[{"RunStarted": {}}]')
    THEN 'running' ELSE p_status END
$$;

CREATE FUNCTION tenantflow_run_started_at(p_run_id uuid, p_started_at timestamptz)
RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT coalesce(p_started_at, (
        SELECT (p -> 'RunStarted' ->> 'at')::timestamptz
        FROM workflow_tasks t CROSS JOIN LATERAL jsonb_array_elements(t.progress) p
        WHERE t.run_id = p_run_id AND p ? 'RunStarted'
        LIMIT 1))
$$;
