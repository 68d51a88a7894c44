-- Recurring schedules (R7.3): the read model the scheduler finds due schedules in and the
-- API lists, and two partial indexes on the event log for a schedule's fan-out.

-- One row per schedule: its settings (from the schedule's stream, guarded by `version`)
-- and its latest tick (from the tick streams, guarded by `last_due_at`, which only moves
-- forward). `next_due_at` is NULL while the schedule is disabled.
CREATE TABLE rm_schedules (
    schedule_id        text PRIMARY KEY,
    workspace_id       text        NOT NULL,
    run_type           text        NOT NULL,
    interval_minutes   integer     NOT NULL,
    first_due_at       timestamptz NOT NULL,
    enabled            boolean     NOT NULL,
    next_due_at        timestamptz,
    set_at             timestamptz NOT NULL,
    set_by             text        NOT NULL,
    last_due_at        timestamptz,
    last_fired_at      timestamptz,
    last_fanned_out_at timestamptz,
    -- What the latest tick's fan-out did: counts by outcome.
    last_fan_out       jsonb,
    version            bigint      NOT NULL
);
CREATE INDEX rm_schedules_workspace ON rm_schedules (workspace_id, run_type);
CREATE INDEX rm_schedules_due ON rm_schedules (next_due_at) WHERE enabled;

ALTER TABLE rm_schedules ENABLE ROW LEVEL SECURITY;
ALTER TABLE rm_schedules FORCE ROW LEVEL SECURITY;
CREATE POLICY workspace_isolation ON rm_schedules
    USING (workspace_id = current_setting('app.workspace', true))
    WITH CHECK (workspace_id = current_setting('app.workspace', true));
CREATE POLICY projection_writer ON rm_schedules TO CURRENT_USER USING (true) WITH CHECK (true);
GRANT SELECT ON rm_schedules TO tenantflow_reader;

-- A fan-out lists a workspace's tenants from the log itself, not from a read model that
-- may lag: every tenant stream begins with its registration (sequence 1), whose metadata
-- names the workspace, and archived tenants are left out.
CREATE INDEX events_tenants_by_workspace ON events ((metadata ->> 'workspace'), aggregate_id)
    WHERE aggregate_type = 'tenant' AND sequence = 1;
CREATE INDEX events_archived_tenants ON events (aggregate_id)
    WHERE aggregate_type = 'tenant' AND event_type = 'TenantArchived';
