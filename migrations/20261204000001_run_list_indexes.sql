-- The run list's indexes, for a workspace that keeps years of runs (issue 17; the run rows
-- stay after archival, so `rm_runs` only grows).
--
-- Every run list reads newest first, `ORDER BY queued_at DESC, run_id DESC`, and pages on
-- `(queued_at, run_id) < (cursor)`. The first indexes gave `queued_at`'s order only (their
-- `run_id` ascending or missing), so every page was sorted again. Each index below is in the
-- list's own order, and its leading columns are a filter the list offers, so a page reads
-- its rows and stops. Measured on 2,000,000 runs (1,800,000 in one workspace, 1.4% failed,
-- 0.5% blocked, 90 queued): a filter on a rare status or outcome read the whole workspace
-- (a running run: 115 ms; a cancelled one: 80 ms); a page now reads about its own rows.

-- All runs, newest first.
DROP INDEX rm_runs_workspace;
CREATE INDEX rm_runs_workspace ON rm_runs (workspace_id, queued_at DESC, run_id DESC);

-- One tenant's runs.
DROP INDEX rm_runs_tenant;
CREATE INDEX rm_runs_tenant ON rm_runs (workspace_id, tenant_key, queued_at DESC, run_id DESC);

-- One type's runs (`runs(filter: {type})`, `contactSyncRuns`): a weekly contact sync among
-- a fleet's daily resyncs is one run in thousands.
CREATE INDEX rm_runs_type ON rm_runs (workspace_id, run_type, queued_at DESC, run_id DESC);

-- The runs not yet ended: queued, or running (whose row says queued until its end carries
-- its start into the log: tenantflow_run_status). Few at any time, whatever the history.
CREATE INDEX rm_runs_active ON rm_runs (workspace_id, queued_at DESC, run_id DESC)
    WHERE status <> 'completed';

-- The runs that ended without success, by outcome: what `outcomeIn: [failed, blocked]` asks
-- for, a few in a hundred. The API reads one outcome's rows in order and merges them
-- (api/src/graphql/runs.rs).
CREATE INDEX rm_runs_unsuccessful ON rm_runs (workspace_id, outcome, queued_at DESC, run_id DESC)
    WHERE outcome NOT IN ('succeeded', 'pending');
