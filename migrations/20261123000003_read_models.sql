-- Read models built by projections from the global log (R8.1). Every row carries its
-- workspace; row-level security restricts API transactions (run as tenantflow_reader with
-- `app.workspace` set per transaction) to the caller's workspace, as a second wall behind
-- the query filters (R8.3). `version` is the aggregate sequence last applied, so replaying
-- an event cannot move a row backwards (idempotent projections).

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tenantflow_reader') THEN
        CREATE ROLE tenantflow_reader NOLOGIN;
    END IF;
    -- API transactions `SET LOCAL ROLE tenantflow_reader`, which needs membership unless
    -- the service connects as a superuser.
    EXECUTE format('GRANT tenantflow_reader TO %I', current_user);
END
$$;

CREATE TABLE rm_tenants (
    tenant_key       text PRIMARY KEY,
    workspace_id     text        NOT NULL,
    entra_tenant_id  uuid        NOT NULL,
    display_name     text        NOT NULL,
    primary_domain   text        NOT NULL,
    status           text        NOT NULL,
    registered_at    timestamptz NOT NULL,
    archived_at      timestamptz,
    last_resynced_at timestamptz,
    version          bigint      NOT NULL
);
CREATE INDEX rm_tenants_workspace ON rm_tenants (workspace_id, display_name, tenant_key);

CREATE TABLE rm_connections (
    connection_id          uuid PRIMARY KEY,
    workspace_id           text        NOT NULL,
    tenant_key             text        NOT NULL,
    provider               text        NOT NULL,
    entra_tenant_id        uuid        NOT NULL,
    display_name           text        NOT NULL,
    is_default             boolean     NOT NULL DEFAULT false,
    -- The facts the status follows from, kept so the status can be derived the way the
    -- ProviderConnection aggregate derives it: disabled wins, then a standing error, then
    -- consent and a credential together (names as the domain's serde spells them).
    disabled               boolean     NOT NULL DEFAULT false,
    errored                boolean     NOT NULL DEFAULT false,
    status                 text        NOT NULL GENERATED ALWAYS AS (
        CASE
            WHEN disabled THEN 'disabled'
            WHEN errored THEN 'error'
            WHEN consent_granted AND credential_ref IS NOT NULL THEN 'connected'
            ELSE 'needs_consent'
        END) STORED,
    health_status          text        NOT NULL,
    consent_granted        boolean     NOT NULL DEFAULT false,
    scopes_granted         jsonb       NOT NULL DEFAULT '[]',
    credential_ref         uuid,
    credential_fingerprint text,
    credential_set_at      timestamptz,
    credential_set_by      text,
    last_health_check_at   timestamptz,
    last_error_reason_code text,
    last_error_message     text,
    created_at             timestamptz NOT NULL,
    version                bigint      NOT NULL
);
CREATE INDEX rm_connections_workspace ON rm_connections (workspace_id, tenant_key, connection_id);

CREATE TABLE rm_runs (
    run_id          uuid PRIMARY KEY,
    workspace_id    text        NOT NULL,
    run_type        text        NOT NULL,
    tenant_key      text,
    status          text        NOT NULL,
    outcome         text        NOT NULL,
    cancel_requested boolean    NOT NULL DEFAULT false,
    context         jsonb       NOT NULL,
    initiator       text        NOT NULL,
    summary_counts  jsonb       NOT NULL DEFAULT '{}',
    failure_summary jsonb,
    reason_code     text,
    next_steps      jsonb       NOT NULL DEFAULT '[]',
    queued_at       timestamptz NOT NULL,
    started_at      timestamptz,
    completed_at    timestamptz,
    updated_at      timestamptz NOT NULL,
    version         bigint      NOT NULL
);
CREATE INDEX rm_runs_workspace ON rm_runs (workspace_id, queued_at DESC, run_id);
CREATE INDEX rm_runs_tenant ON rm_runs (workspace_id, tenant_key, queued_at DESC);

CREATE TABLE rm_run_steps (
    run_id       uuid        NOT NULL,
    step         text        NOT NULL,
    attempt      integer     NOT NULL,
    workspace_id text        NOT NULL,
    status       text        NOT NULL,
    reason_code  text,
    message      text,
    summary      jsonb,
    retry_at     timestamptz,
    -- When the attempt began (NULL if it was recorded without a start), and when its
    -- last event happened.
    started_at   timestamptz,
    recorded_at  timestamptz NOT NULL,
    -- The run's sequence of the event that last wrote this row.
    version      bigint      NOT NULL,
    PRIMARY KEY (run_id, step, attempt)
);

-- Who did what, when, to which tenant: one row per event, from its metadata.
CREATE TABLE rm_audit_log (
    global_position bigint PRIMARY KEY,
    workspace_id    text        NOT NULL,
    recorded_at     timestamptz NOT NULL,
    actor           text        NOT NULL,
    role            text        NOT NULL,
    action          text        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    tenant_key      text,
    correlation_id  text,
    causation_id    text,
    request_id      text
);
CREATE INDEX rm_audit_log_workspace ON rm_audit_log (workspace_id, global_position DESC);
CREATE INDEX rm_audit_log_tenant ON rm_audit_log (workspace_id, tenant_key, global_position DESC);
-- The projection finds an aggregate's tenant from its earlier rows.
CREATE INDEX rm_audit_log_aggregate ON rm_audit_log (aggregate_type, aggregate_id, global_position);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['rm_tenants', 'rm_connections', 'rm_runs', 'rm_run_steps', 'rm_audit_log'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        -- The projections write as the table owner; the policy below only admits rows of
        -- the workspace set for the transaction.
        EXECUTE format(
            'CREATE POLICY workspace_isolation ON %I USING (workspace_id = current_setting(''app.workspace'', true)) '
            'WITH CHECK (workspace_id = current_setting(''app.workspace'', true))', t);
        EXECUTE format('CREATE POLICY projection_writer ON %I TO CURRENT_USER USING (true) WITH CHECK (true)', t);
        EXECUTE format('GRANT SELECT ON %I TO tenantflow_reader', t);
    END LOOP;
END
$$;
