-- The event store. Column names and types of the first seven columns are what postgres-es
-- 0.5 expects (it lists them explicitly in its INSERT and SELECTs); the rest are ours.
CREATE TABLE events (
    aggregate_type  text   NOT NULL,
    aggregate_id    text   NOT NULL,
    sequence        bigint NOT NULL CHECK (sequence >= 0),
    event_type      text   NOT NULL,
    event_version   text   NOT NULL,
    payload         jsonb  NOT NULL,
    metadata        jsonb  NOT NULL,
    -- Identity values are handed out at insert time, so they are NOT in commit order.
    global_position bigint GENERATED ALWAYS AS IDENTITY,
    -- All events of one commit share it; consumers read below the oldest running xid.
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

-- The global order consumers read in.
CREATE UNIQUE INDEX events_global_order ON events (transaction_id, global_position);
-- Auditor queries: by type, by workspace/tenant, by time.
CREATE INDEX events_event_type ON events (event_type, global_position);
CREATE INDEX events_recorded_at ON events (recorded_at);
CREATE INDEX events_workspace ON events ((metadata ->> 'workspace'), global_position);

-- postgres-es expects this table to exist even though we never use its snapshot store
-- (it double-applies events in 0.5.0).
CREATE TABLE snapshots (
    aggregate_type   text   NOT NULL,
    aggregate_id     text   NOT NULL,
    last_sequence    bigint NOT NULL CHECK (last_sequence >= 0),
    current_snapshot bigint NOT NULL CHECK (current_snapshot >= 0),
    payload          jsonb  NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- One notification per inserting statement wakes every catch-up consumer. NOTIFY is
-- delivered at commit, and duplicates within a transaction are folded by PostgreSQL.
CREATE FUNCTION tenantflow_notify_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tenantflow_events', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION tenantflow_notify_events();

-- The history is append-only: an UPDATE or DELETE of an event is refused outright. (The
-- hash chain catches tampering by someone who disables this trigger.)
CREATE FUNCTION tenantflow_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION tenantflow_events_append_only();

-- Where each catch-up consumer has got to in the global order. Updated in the same
-- transaction as the effects of the batch it consumed.
CREATE TABLE consumer_checkpoints (
    name            text PRIMARY KEY,
    transaction_id  xid8   NOT NULL DEFAULT '0'::xid8,
    global_position bigint NOT NULL DEFAULT 0,
    events_consumed bigint NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
