-- The audit hash chain (R9.4). The trigger on `events` refuses UPDATE and DELETE, but whoever
-- can drop it can rewrite history; the chain is the evidence against that. The
-- `audit_sealer` catch-up consumer walks the gap-free global order (the consumers' order:
-- `(transaction_id, global_position)`) and seals every event into two chains:
--
--   hash_n = SHA-256(hash_{n-1} || canonical bytes of event n),   hash_0 = 32 zero bytes
--
-- one over all events (the global chain) and one per workspace (each event's
-- `metadata.workspace`; events without one form the chain of the empty workspace ''). The
-- canonical bytes are RFC 8785 JSON of the event's stored fields; README.md ("Audit
-- chain") defines them exactly so that anyone can recompute a chain. `tenantflow verify`
-- recomputes the chains from `events` and compares them with these rows.

-- One row per sealed event, numbered in the order sealed.
CREATE TABLE audit_seals (
    seal_no         bigint PRIMARY KEY CHECK (seal_no > 0),
    global_position bigint      NOT NULL UNIQUE,
    -- Where the event was in the global order when sealed: the sealer's chain continues
    -- after the last seal's (transaction_id, global_position), and verify reads the events
    -- up to it. Also lets a seal find its event through the events' global-order index.
    transaction_id  xid8        NOT NULL,
    -- The workspace chain the event belongs to ('' for events without a workspace).
    workspace_id    text        NOT NULL,
    -- The event's number in its workspace chain (1, 2, ...: an export shows no gaps).
    workspace_seq   bigint      NOT NULL CHECK (workspace_seq > 0),
    -- The stream the sealed event belonged to, so verify can name a deleted one.
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL,
    workspace_hash  bytea       NOT NULL CHECK (length(workspace_hash) = 32),
    global_hash     bytea       NOT NULL CHECK (length(global_hash) = 32),
    sealed_at       timestamptz NOT NULL DEFAULT now(),
    -- Also the index for a workspace chain's tip and for reading one chain in order.
    UNIQUE (workspace_id, workspace_seq)
);

-- Periodic chain heads (every 1000th seal of each chain): a position and its hash that an
-- auditor can note and later check the history still leads to (`tenantflow verify --from`).
CREATE TABLE audit_heads (
    seal_no         bigint      NOT NULL,
    chain           text        NOT NULL CHECK (chain IN ('global', 'workspace')),
    -- The workspace of a workspace chain's head; NULL for the global chain.
    workspace_id    text,
    -- The head's number in its chain (seal_no for the global chain).
    chain_seq       bigint      NOT NULL,
    global_position bigint      NOT NULL,
    hash            bytea       NOT NULL CHECK (length(hash) = 32),
    sealed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (seal_no, chain),
    CHECK ((chain = 'global') = (workspace_id IS NULL))
);
CREATE INDEX audit_heads_workspace ON audit_heads (workspace_id, chain_seq DESC);

-- Results of `tenantflow verify`, one row per chain checked. The API shows a workspace the
-- latest row of its own chain; rows of the global chain (workspace_id NULL) name positions
-- of every workspace and are for operators only.
CREATE TABLE audit_verifications (
    verification_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id       text,
    verified_at        timestamptz NOT NULL DEFAULT now(),
    -- The kept head a suffix was verified from (`--from`), if any.
    from_position      bigint,
    -- The last sealed position the check reached, and how many events it recomputed.
    through_position   bigint,
    events_checked     bigint      NOT NULL,
    ok                 boolean     NOT NULL,
    -- The first bad event: altered, deleted, inserted, reordered or head_mismatch.
    first_bad_kind     text,
    first_bad_position bigint,
    first_bad          text,
    CHECK (ok = (first_bad_kind IS NULL))
);
CREATE INDEX audit_verifications_workspace ON audit_verifications (workspace_id, verified_at DESC);

-- API readers see only their workspace's chain (as on the rm_* tables, migration 000003).
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['audit_seals', 'audit_heads', 'audit_verifications'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY workspace_isolation ON %I USING (workspace_id = current_setting(''app.workspace'', true)) '
            'WITH CHECK (workspace_id = current_setting(''app.workspace'', true))', t);
        EXECUTE format('CREATE POLICY chain_writer ON %I TO CURRENT_USER USING (true) WITH CHECK (true)', t);
        EXECUTE format('GRANT SELECT ON %I TO tenantflow_reader', t);
    END LOOP;
END
$$;
