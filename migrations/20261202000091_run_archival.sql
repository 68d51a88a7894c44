-- Retention and archival of closed run histories (issue 13, item 3; store/src/archive.rs).

-- A workspace's retention of closed run histories, in days after the run completed.
-- Workspaces without a row keep them 90 days (store::archive::DEFAULT_RUN_RETENTION_DAYS).
CREATE TABLE run_retention (
    workspace_id text PRIMARY KEY,
    days         integer NOT NULL CHECK (days >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per archive segment written, verified and removed from `events`.
CREATE TABLE event_archives (
    archive_id     uuid PRIMARY KEY,
    file_name      text   NOT NULL UNIQUE,
    sha256         bytea  NOT NULL CHECK (length(sha256) = 32),
    events         bigint NOT NULL CHECK (events > 0),
    streams        bigint NOT NULL CHECK (streams > 0),
    first_position bigint NOT NULL,
    last_position  bigint NOT NULL,
    first_seal     bigint NOT NULL,
    last_seal      bigint NOT NULL,
    archived_at    timestamptz NOT NULL
);

-- The streams whose events are in an archive, not in `events`. Their seals stay in
-- `audit_seals`: verify walks the live chain past them on their seals.
CREATE TABLE archived_streams (
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    archive_id     uuid   NOT NULL REFERENCES event_archives,
    events         bigint NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
CREATE INDEX archived_streams_archive ON archived_streams (archive_id);

-- What the read models keep of an archived run: its `rm_runs` row as it was, and one
-- `rm_audit_log` row in place of its events' rows. Not a read model: a rebuild does not
-- replace it, it seeds the rebuilt tables from it (tenantflow_seed_archived_runs).
CREATE TABLE archived_runs (
    run_id       uuid  PRIMARY KEY,
    workspace_id text  NOT NULL,
    archive_id   uuid  NOT NULL REFERENCES event_archives,
    run_row      jsonb NOT NULL,
    audit_row    jsonb
);
CREATE INDEX archived_runs_archive ON archived_runs (archive_id);

-- The history stays append-only. The one exception is archival's: a DELETE of an event
-- whose stream is recorded in `archived_streams` for the archive named by the
-- transaction's `tenantflow.archive` setting, which only the archiver sets, after the
-- segment was written, fsynced and verified, in the transaction that records it. (DETACH
-- and DROP of a partition would need partitions holding only archivable streams; run
-- streams interleave with tenants' in every partition.)
CREATE OR REPLACE FUNCTION tenantflow_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (
        SELECT 1 FROM archived_streams a
        WHERE a.aggregate_type = OLD.aggregate_type AND a.aggregate_id = OLD.aggregate_id
          AND a.archive_id::text = current_setting('tenantflow.archive', true)) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'events are append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;

-- The live read models after an archive's removal: a run's steps go with its events, its
-- audit rows become the one summary row.
CREATE FUNCTION tenantflow_summarize_archived_runs(archive uuid) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM rm_run_steps s USING archived_runs a
        WHERE a.archive_id = archive AND s.run_id = a.run_id;
    DELETE FROM rm_audit_log l USING archived_streams a
        WHERE a.archive_id = archive AND l.aggregate_type = a.aggregate_type
          AND l.aggregate_id = a.aggregate_id;
    INSERT INTO rm_audit_log
        SELECT (jsonb_populate_record(NULL::rm_audit_log, a.audit_row)).*
        FROM archived_runs a WHERE a.archive_id = archive AND a.audit_row IS NOT NULL
        ON CONFLICT (global_position) DO NOTHING;
END;
$$;

-- A rebuild seeds its fresh copy of `rm_runs` and `rm_audit_log` (in schema `target`)
-- with the archived runs' summaries, which the log no longer holds the events of.
CREATE FUNCTION tenantflow_seed_archived_runs(target text, tbl text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    seeded bigint := 0;
BEGIN
    IF tbl = 'rm_runs' THEN
        EXECUTE format('INSERT INTO %I.rm_runs SELECT (jsonb_populate_record(NULL::%I.rm_runs, run_row)).* '
                       'FROM archived_runs ON CONFLICT DO NOTHING', target, target);
        GET DIAGNOSTICS seeded = ROW_COUNT;
    ELSIF tbl = 'rm_audit_log' THEN
        EXECUTE format('INSERT INTO %I.rm_audit_log SELECT (jsonb_populate_record(NULL::%I.rm_audit_log, audit_row)).* '
                       'FROM archived_runs WHERE audit_row IS NOT NULL ON CONFLICT DO NOTHING', target, target);
        GET DIAGNOSTICS seeded = ROW_COUNT;
    END IF;
    RETURN seeded;
END;
$$;
