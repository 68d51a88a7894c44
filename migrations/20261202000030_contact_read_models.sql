-- Contact sync read models (R5, R8.1), all owned by the `contacts` projection. As the other
-- read models: every row carries its `workspace_id` (row-level security keys on it) and the
-- `version` (aggregate sequence) last applied, so replaying an event changes nothing.
-- No secret has a column: the partner connection shows its target and the credential's
-- keyed fingerprint only, a mapping whether it has a delta link, never the link.

-- One row per workspace that configured a partner connection (R5.1).
CREATE TABLE rm_partner_connections (
    workspace_id           text PRIMARY KEY,
    -- `direct` or `cipp`; NULL once disconnected.
    kind                   text,
    partner_tenant_id      uuid,
    cipp_base_url          text,
    cipp_api_client_id     text,
    credential_fingerprint text,
    -- As the aggregate derives it: not_connected, pending_validation, connected, error.
    status                 text        NOT NULL,
    validated_at           timestamptz,
    last_error_reason_code text,
    last_error_message     text,
    configured_at          timestamptz,
    updated_at             timestamptz NOT NULL,
    version                bigint      NOT NULL
);

-- The MSP's customer records (R5.2).
CREATE TABLE rm_clients (
    client_id    uuid PRIMARY KEY,
    workspace_id text        NOT NULL,
    name         text        NOT NULL,
    -- Normalized as the aggregate keeps them: lowercase, sorted, unique.
    domains      text[]      NOT NULL,
    status       text        NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    version      bigint      NOT NULL
);
CREATE INDEX rm_clients_workspace ON rm_clients (workspace_id, lower(name), client_id);

-- Discovered tenants, their proposal or confirmed client, and their last contact sync
-- (R5.2, R5.3). Keyed by the mapping's aggregate id, `<workspace>:<entra tenant guid>`.
CREATE TABLE rm_tenant_mappings (
    mapping_key             text PRIMARY KEY,
    workspace_id            text        NOT NULL,
    entra_tenant_id         uuid        NOT NULL,
    display_name            text        NOT NULL,
    default_domain          text        NOT NULL,
    verified_domains        text[]      NOT NULL,
    -- `direct` or `cipp`: which connection kind found it.
    source                  text        NOT NULL,
    -- auto_matched, needs_review, skipped (also before any proposal), confirmed.
    state                   text        NOT NULL,
    -- The latest proposal (kept after a confirmation): its state, client, reason, candidates.
    proposal_state          text,
    proposed_client_id      uuid,
    proposal_reason         text,
    proposal_candidates     uuid[]      NOT NULL DEFAULT '{}',
    confirmed_client_id     uuid,
    confirmed_by            text,
    confirmed_at            timestamptz,
    discovered_at           timestamptz NOT NULL,
    last_sync_run_id        uuid,
    last_sync_at            timestamptz,
    last_sync_created       integer,
    last_sync_linked        integer,
    last_sync_updated       integer,
    last_sync_inactivated   integer,
    last_sync_reactivated   integer,
    last_sync_queued        integer,
    last_sync_failed_reason text,
    has_delta_link          boolean     NOT NULL DEFAULT false,
    version                 bigint      NOT NULL
);
CREATE INDEX rm_tenant_mappings_workspace
    ON rm_tenant_mappings (workspace_id, lower(display_name), mapping_key);
CREATE INDEX rm_tenant_mappings_client ON rm_tenant_mappings (workspace_id, confirmed_client_id);

-- Contacts (R5.4, R5.5): never deleted, inactive instead.
CREATE TABLE rm_contacts (
    contact_id      uuid PRIMARY KEY,
    workspace_id    text        NOT NULL,
    client_id       uuid        NOT NULL,
    name            text        NOT NULL,
    -- Normalized (trimmed, lowercase).
    email           text,
    phone           text,
    mobile          text,
    job_title       text,
    department      text,
    status          text        NOT NULL,
    inactive_reason text,
    entra_tenant_id uuid,
    entra_object_id uuid,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    version         bigint      NOT NULL
);
-- The list's order (name, case-insensitive, then id), overall and per client.
CREATE INDEX rm_contacts_by_name ON rm_contacts (workspace_id, lower(name), contact_id);
CREATE INDEX rm_contacts_by_client ON rm_contacts (workspace_id, client_id, lower(name), contact_id);
-- Search: prefixes of the email and of the name.
CREATE INDEX rm_contacts_email_prefix ON rm_contacts (workspace_id, email text_pattern_ops);
CREATE INDEX rm_contacts_name_prefix ON rm_contacts (workspace_id, lower(name) text_pattern_ops);
CREATE INDEX rm_contacts_entra_user ON rm_contacts (workspace_id, entra_tenant_id, entra_object_id);

-- The reconciliation queue (R5.4): upstream users with several plausible contacts.
CREATE TABLE rm_reconciliation_items (
    item_id               uuid PRIMARY KEY,
    workspace_id          text        NOT NULL,
    client_id             uuid        NOT NULL,
    entra_tenant_id       uuid        NOT NULL,
    entra_object_id       uuid        NOT NULL,
    upstream_display_name text,
    upstream_emails       text[]      NOT NULL,
    candidates            uuid[]      NOT NULL,
    -- `open` or `resolved`.
    status                text        NOT NULL,
    -- linked_existing, created_new or ignored; NULL while open.
    resolution            text,
    resolution_contact_id uuid,
    resolved_by           text,
    resolved_at           timestamptz,
    queued_run_id         uuid,
    queued_at             timestamptz NOT NULL,
    version               bigint      NOT NULL
);
CREATE INDEX rm_reconciliation_items_workspace
    ON rm_reconciliation_items (workspace_id, status, queued_at, item_id);

-- Per-tenant results of contact sync runs (R5.3); the runs themselves are in rm_runs.
-- `version` is the mapping's sequence of its ContactSyncRecorded.
CREATE TABLE rm_contact_sync_results (
    run_id          uuid        NOT NULL,
    entra_tenant_id uuid        NOT NULL,
    workspace_id    text        NOT NULL,
    mapping_key     text        NOT NULL,
    -- The client the mapping was confirmed to when the result was recorded.
    client_id       uuid,
    created         integer     NOT NULL,
    linked          integer     NOT NULL,
    updated         integer     NOT NULL,
    inactivated     integer     NOT NULL,
    reactivated     integer     NOT NULL,
    queued          integer     NOT NULL,
    failed_reason   text,
    recorded_at     timestamptz NOT NULL,
    version         bigint      NOT NULL,
    PRIMARY KEY (run_id, entra_tenant_id)
);

-- A workspace's field sync config and feature flags (R5.5, R5.6).
CREATE TABLE rm_contact_settings (
    workspace_id  text PRIMARY KEY,
    -- The fields Entra may overwrite, sorted: ["department", "job_title", ...].
    field_sync    jsonb       NOT NULL DEFAULT '[]',
    -- The flags turned on, sorted: ["ambiguous_queue", "ui", ...].
    enabled_flags jsonb       NOT NULL DEFAULT '[]',
    updated_at    timestamptz NOT NULL,
    version       bigint      NOT NULL
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['rm_partner_connections', 'rm_clients', 'rm_tenant_mappings',
        'rm_contacts', 'rm_reconciliation_items', 'rm_contact_sync_results',
        'rm_contact_settings'] LOOP
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
