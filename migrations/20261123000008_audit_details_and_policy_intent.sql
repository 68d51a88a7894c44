-- Additive only (expand): two read-model facts the API shows.
--
-- rm_audit_log.details: the safe facts of an event an auditor asks about (R3.6): a step's
-- summary, a run's summary counts (a resync's policy_count and unchanged flag), a
-- snapshot's id and policy count. Never policies, secrets or Graph payloads. NULL for
-- other events, and for rows written before this migration until
-- `tenantflow rebuild audit_log` replays them.
ALTER TABLE rm_audit_log ADD COLUMN details jsonb;

-- rm_tenants.intent_*: the tenant's policy intent, seeded by an import (R3.4): the
-- snapshot it came from, its hash, and when it was seeded. NULL until the first import.
ALTER TABLE rm_tenants
    ADD COLUMN intent_snapshot_id uuid,
    ADD COLUMN intent_hash        text,
    ADD COLUMN intent_seeded_at   timestamptz;
