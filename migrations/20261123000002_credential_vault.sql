-- Encrypted credentials live outside the event log (R1.4). Events only carry the
-- credential reference (id) and a keyed fingerprint. Rows are never updated: a rotation
-- inserts a new row, so history is kept.
CREATE TABLE credential_vault (
    id            uuid PRIMARY KEY,
    workspace_id  text        NOT NULL,
    connection_id uuid        NOT NULL,
    client_id     text        NOT NULL,
    -- AES-256-GCM: 12-byte nonce, ciphertext of the client secret (with tag).
    nonce         bytea       NOT NULL,
    ciphertext    bytea       NOT NULL,
    key_id        text        NOT NULL,
    fingerprint   text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text        NOT NULL
);

CREATE INDEX credential_vault_connection ON credential_vault (connection_id, created_at);

-- A scratch table for `tenantflow bench append`: the same columns, defaults and indexes as
-- `events` (but none of its triggers), filled with plain single-row INSERTs as the baseline.
CREATE TABLE bench_raw_inserts (LIKE events INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING INDEXES);
