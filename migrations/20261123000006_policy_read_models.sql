-- Read models of the resync workflow (R3, R8.1): policy snapshots with their diffs, drift
-- alerts, and license capabilities. Same row-level security as the other read models.
CREATE TABLE rm_policy_snapshots (
    snapshot_id     uuid PRIMARY KEY,
    workspace_id    text        NOT NULL,
    tenant_key      text        NOT NULL,
    hash            text        NOT NULL,
    policy_count    integer     NOT NULL,
    policies        jsonb       NOT NULL,
    diff            jsonb,
    source          text        NOT NULL,
    taken_at        timestamptz NOT NULL,
    run_id          text,
    global_position bigint      NOT NULL
);
CREATE INDEX rm_policy_snapshots_tenant ON rm_policy_snapshots (workspace_id, tenant_key, taken_at DESC, snapshot_id);

CREATE TABLE rm_alerts (
    snapshot_id  uuid PRIMARY KEY,
    workspace_id text        NOT NULL,
    tenant_key   text        NOT NULL,
    kind         text        NOT NULL,
    raised_at    timestamptz NOT NULL
);
CREATE INDEX rm_alerts_workspace ON rm_alerts (workspace_id, raised_at DESC, snapshot_id);

CREATE TABLE rm_licenses (
    tenant_key   text PRIMARY KEY,
    workspace_id text        NOT NULL,
    ca_p1        boolean     NOT NULL,
    ca_p2        boolean     NOT NULL,
    skus         jsonb       NOT NULL,
    refreshed_at timestamptz NOT NULL,
    version      bigint      NOT NULL
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['rm_policy_snapshots', 'rm_alerts', 'rm_licenses'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY workspace_isolation ON %I USING (workspace_id = current_setting(''app.workspace'', true)) '
            'WITH CHECK (workspace_id = current_setting(''app.workspace'', true))', t);
        EXECUTE format('CREATE POLICY projection_writer ON %I TO CURRENT_USER USING (true) WITH CHECK (true)', t);
        EXECUTE format('GRANT SELECT ON %I TO tenantflow_reader', t);
    END LOOP;
END
$$;
