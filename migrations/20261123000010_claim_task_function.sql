-- Claiming a task: one statement that leases the most overdue free task and reads the
-- streams its run's steps decide on (the run, its tenant, its connection, its scope lock)
-- and the connection's newest vault row.
--
-- It is a function so that its plan is made once per connection and kept (planning the
-- statement cost more than running it), and so that the kept plan cannot be a sequential
-- scan: a plan made while `events` was small (a fresh service) would otherwise scan the
-- whole table at every claim once it has grown, until the next ANALYZE. Every access here
-- is a lookup by key, so sequential scans are switched off for this function only. (The
-- four streams are a VALUES list rather than an UNNEST of an array: the planner cannot
-- know an array's length, guesses ten rows, and would then keep re-planning every call.)
CREATE FUNCTION tenantflow_claim_task(p_owner text, p_lease_seconds double precision, p_types text[])
RETURNS TABLE (
    run_id              uuid,
    workspace_id        text,
    run_type            text,
    lease_until         timestamptz,
    aggregate_type      text,
    aggregate_id        text,
    sequence            bigint,
    payload             jsonb,
    idempotency_key     text,
    vault_id            uuid,
    vault_connection_id uuid,
    client_id           text,
    nonce               bytea,
    ciphertext          bytea
)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH claimed AS (
        UPDATE workflow_tasks t
        SET lease_owner = p_owner, lease_until = now() + make_interval(secs => p_lease_seconds),
            claims = t.claims + 1, updated_at = now()
        WHERE t.run_id = (
            SELECT w.run_id FROM workflow_tasks w
            WHERE w.due_at <= now() AND (w.lease_until IS NULL OR w.lease_until < now())
            ORDER BY w.due_at FOR UPDATE SKIP LOCKED LIMIT 1)
        RETURNING t.run_id, t.workspace_id, t.run_type, t.lease_until, t.tenant_id,
                  t.connection_id, t.lock_id)
    SELECT c.run_id, c.workspace_id, c.run_type, c.lease_until,
           e.aggregate_type, e.aggregate_id, e.sequence, e.payload,
           e.metadata ->> 'idempotency_key',
           v.id, v.connection_id, v.client_id, v.nonce, v.ciphertext
    FROM claimed c
    LEFT JOIN LATERAL (
        SELECT ev.aggregate_type, ev.aggregate_id, ev.sequence, ev.payload, ev.metadata
        FROM (VALUES (p_types[1], c.run_id::text), (p_types[2], c.tenant_id),
                     (p_types[3], c.connection_id), (p_types[4], c.lock_id)) AS s(t, i)
        JOIN events ev ON ev.aggregate_type = s.t AND ev.aggregate_id = s.i) e ON true
    LEFT JOIN LATERAL (
        SELECT cv.id, cv.connection_id, cv.client_id, cv.nonce, cv.ciphertext
        FROM credential_vault cv
        WHERE cv.connection_id = c.connection_id::uuid
        ORDER BY cv.created_at DESC LIMIT 1) v ON true
    ORDER BY e.aggregate_type, e.aggregate_id, e.sequence;
END;
$$;
