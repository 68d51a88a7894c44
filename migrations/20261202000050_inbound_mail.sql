-- Inbound mail (R6): the webhook's lookup of subscriptions, the mail worker's durable
-- work (message fetches and each mailbox's subscription timer), the sealed mailbox
-- secrets, and the two read models.

-- Which mailbox a Graph subscription belongs to, and the SHA-256 of the clientState values
-- it accepts (the verification token, and optionally one legacy value). Written with the
-- events that change them; the webhook reads one row per notification.
CREATE TABLE mail_subscriptions (
    subscription_id  text PRIMARY KEY,
    mailbox_id       uuid        NOT NULL,
    workspace_id     text        NOT NULL,
    tenant_key       text        NOT NULL,
    client_state_sha256 bytea    NOT NULL,
    legacy_state_sha256 bytea,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mail_subscriptions_mailbox ON mail_subscriptions (mailbox_id);

-- Work the mail worker owes: `fetch` rows (one per notified message, inserted with its
-- NotificationRecorded event, deleted with its InboundEmailReceived event), one
-- `subscription` row per live mailbox (the durable renewal timer), `test` rows
-- (connection tests asked for) and `catch_up` rows (after a missed notification).
-- Claimed with FOR UPDATE SKIP LOCKED and a lease, so instances share it and a crashed
-- instance's work is taken over.
CREATE TABLE mail_work (
    work_key     text PRIMARY KEY,
    kind         text        NOT NULL CHECK (kind IN ('fetch', 'subscription', 'test', 'catch_up')),
    mailbox_id   uuid        NOT NULL,
    workspace_id text        NOT NULL,
    message_id   text,
    due_at       timestamptz NOT NULL,
    attempts     integer     NOT NULL DEFAULT 0,
    lease_owner  text,
    lease_until  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mail_work_due ON mail_work (due_at);

-- A mailbox's secrets, sealed with the vault key (AES-256-GCM, bound to the mailbox and
-- the kind): the verification token and the delegated tokens (re-sealed on every refresh).
CREATE TABLE mailbox_secrets (
    mailbox_id  uuid        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('verification', 'delegated')),
    nonce       bytea       NOT NULL,
    ciphertext  bytea       NOT NULL,
    key_id      text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mailbox_id, kind)
);

CREATE TABLE rm_mailboxes (
    mailbox_id              uuid PRIMARY KEY,
    workspace_id            text        NOT NULL,
    tenant_key              text        NOT NULL,
    address                 text        NOT NULL,
    status                  text        NOT NULL,
    degraded_reason         text,
    subscription_id         text,
    subscription_expires_at timestamptz,
    last_renewed_at         timestamptz,
    last_notification_at    timestamptz,
    notifications           bigint      NOT NULL DEFAULT 0,
    received                bigint      NOT NULL DEFAULT 0,
    fetch_failures          bigint      NOT NULL DEFAULT 0,
    last_test_reason        text,
    last_test_message       text,
    last_tested_at          timestamptz,
    added_at                timestamptz NOT NULL,
    version                 bigint      NOT NULL
);
CREATE INDEX rm_mailboxes_workspace ON rm_mailboxes (workspace_id, added_at, mailbox_id);

CREATE TABLE rm_inbound_emails (
    email_key           text PRIMARY KEY,
    workspace_id        text        NOT NULL,
    tenant_key          text        NOT NULL,
    mailbox_id          uuid        NOT NULL,
    message_id          text        NOT NULL,
    status              text        NOT NULL,
    failure_reason      text,
    subject             text,
    from_address        text,
    thread_id           text,
    internet_message_id text,
    received_at         timestamptz,
    notified_at         timestamptz NOT NULL,
    email               jsonb,
    processed           jsonb,
    -- The notification event's global position: the list's order, the same after a rebuild.
    seq                 bigint      NOT NULL,
    version             bigint      NOT NULL
);
CREATE INDEX rm_inbound_emails_workspace ON rm_inbound_emails (workspace_id, seq DESC);
CREATE INDEX rm_inbound_emails_mailbox ON rm_inbound_emails (workspace_id, mailbox_id, seq DESC);
CREATE INDEX rm_inbound_emails_thread ON rm_inbound_emails (workspace_id, thread_id, seq DESC);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['rm_mailboxes', 'rm_inbound_emails'] LOOP
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
