-- The run list's indexes, for a workspace that keeps years of runs (issue 17; the run rows
-- stay after archival, so `rm_runs` only grows).
--
-- Every run list reads newest first, `ORDER BY queued_at DESC, run_id DESC`, and pages on
-- `(queued_at, run_id) < (cursor)`. The first indexes gave `queued_at`'s order only (their
-- `run_id` ascending or missing), so every page was sorted again. Each index below is in the
-- list's own order, and its leading columns are a filter the list offers, so a page reads
-- its rows and stops. Measured on 2,000,000 runs (1,800,000 in one workspace, 1.4% failed,
-- 0.5% blocked, 90 queued): a filter on a rare status or outcome read the whole workspace
-- (the running runs: 185-370 ms; no cancelled one: 216 ms); a page now reads about its
-- own rows.

-- The indexes are built before the old ones are dropped, and under new names: building one
-- takes a lock that lets the table be read (the API keeps serving the run list; the runs
-- projection waits), while dropping one locks out readers until the migration commits. At
-- 2,000,000 runs each took 1.4-2.2 s to build.

-- All runs, newest first.
CREATE INDEX rm_runs_newest ON rm_runs (workspace_id, queued_at DESC, run_id DESC);

-- One tenant's runs.
CREATE INDEX rm_runs_tenant_newest ON rm_runs (workspace_id, tenant_key, queued_at DESC, run_id DESC);

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

-- Last, the first two, which the new ones above replace.
DROP INDEX rm_runs_workspace;
DROP INDEX rm_runs_tenant;
