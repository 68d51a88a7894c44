-- The event log, partitioned by global position (issue 13, item 2). Ranges of positions,
-- not of time: positions are what the log is read, sealed and archived by, a partition's
-- size in events is what an operator sizes (the row count of a range is its width), and a
-- position is known before the row is written, so a partition is created ahead of the
-- appends that fill it (docs/ARCHITECTURE.md, "The partitioned log").
--
-- The existing log is moved, not copied: the table is renamed and attached as the first
-- partition (positions up to the last one handed out), keeping its rows and its indexes.
-- What a big log pays for is one pass for the stream key (below) and one index build for
-- the per-stream index, whose unique form cannot exist on a partitioned table.

ALTER TABLE events RENAME TO events_moved;
ALTER TABLE events_moved RENAME CONSTRAINT events_pkey TO events_moved_pkey;
ALTER INDEX events_global_order RENAME TO events_moved_global_order;
ALTER INDEX events_event_type RENAME TO events_moved_event_type;
ALTER INDEX events_recorded_at RENAME TO events_moved_recorded_at;
ALTER INDEX events_workspace RENAME TO events_moved_workspace;
ALTER INDEX events_tenants_by_workspace RENAME TO events_moved_tenants_by_workspace;
ALTER INDEX events_archived_tenants RENAME TO events_moved_archived_tenants;
DROP TRIGGER events_append_only ON events_moved;
DROP POLICY workspace_isolation ON events_moved;
ALTER TABLE events_moved DISABLE ROW LEVEL SECURITY;
REVOKE SELECT ON events_moved FROM tenantflow_reader;

-- Where the moved log ends: every position handed out so far, used or not.
CREATE TEMP TABLE moved_log_end ON COMMIT DROP AS
SELECT greatest(
           coalesce((SELECT max(global_position) FROM events_moved), 0),
           coalesce(pg_sequence_last_value(pg_get_serial_sequence('events_moved', 'global_position')::regclass), 0)
       ) + 1 AS bound;

-- Dropping the identity drops its sequence; the partitioned table's own continues from
-- the moved log's end (set below).
ALTER TABLE events_moved ALTER COLUMN global_position DROP IDENTITY;

CREATE TABLE events (
    aggregate_type  text   NOT NULL,
    aggregate_id    text   NOT NULL,
    sequence        bigint NOT NULL CONSTRAINT events_sequence_check CHECK (sequence >= 0),
    event_type      text   NOT NULL,
    event_version   text   NOT NULL,
    payload         jsonb  NOT NULL,
    metadata        jsonb  NOT NULL,
    global_position bigint GENERATED ALWAYS AS IDENTITY,
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at     timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (global_position);

SELECT setval(pg_get_serial_sequence('events', 'global_position'), bound, false) FROM moved_log_end;

-- The same indexes as before (the moved table's are attached, not rebuilt), except the
-- stream's: a unique index of a partitioned table must include the partition key, so the
-- per-stream uniqueness moves to `stream_sequences` and this one only finds a stream's
-- events (one probe per partition).
CREATE UNIQUE INDEX events_global_order ON events (transaction_id, global_position);
CREATE INDEX events_event_type ON events (event_type, global_position);
CREATE INDEX events_recorded_at ON events (recorded_at);
CREATE INDEX events_workspace ON events ((metadata ->> 'workspace'), global_position);
CREATE INDEX events_stream ON events (aggregate_type, aggregate_id, sequence);
-- The fan-out's lookups of a workspace's tenants (migration 000007).
CREATE INDEX events_tenants_by_workspace ON events ((metadata ->> 'workspace'), aggregate_id)
    WHERE aggregate_type = 'tenant' AND sequence = 1;
CREATE INDEX events_archived_tenants ON events (aggregate_id)
    WHERE aggregate_type = 'tenant' AND event_type = 'TenantArchived';

-- Optimistic concurrency across partitions: every event's (stream, sequence), in one
-- table that is not partitioned, whose primary key refuses a sequence taken by a committed
-- or concurrent append exactly as the old primary key of `events` did (a unique violation,
-- 23505, which the command bus and postgres-es read as a conflict). Filled by the
-- statement trigger below in the appending transaction, so the two never disagree; two
-- appends of the same stream and sequence serialise on this key wherever their rows land.
CREATE TABLE stream_sequences (
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

INSERT INTO stream_sequences (aggregate_type, aggregate_id, sequence)
SELECT aggregate_type, aggregate_id, sequence FROM events_moved;

CREATE FUNCTION tenantflow_claim_stream_sequences() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stream_sequences (aggregate_type, aggregate_id, sequence)
    SELECT aggregate_type, aggregate_id, sequence FROM appended;
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_claim_sequences
    AFTER INSERT ON events REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION tenantflow_claim_stream_sequences();

-- Append-only, as before (migration 000001); a row trigger of the partitioned table is
-- cloned to every partition, present and future. Archival's narrow exception: migration
-- 000091.
CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION tenantflow_events_append_only();

-- The partition bound is checked without scanning twice: a constraint proving it lets the
-- attach skip its own scan.
DO $$
DECLARE b bigint := (SELECT bound FROM moved_log_end);
BEGIN
    EXECUTE format('ALTER TABLE events_moved ADD CONSTRAINT events_moved_bound CHECK (global_position IS NOT NULL AND global_position < %s)', b);
    EXECUTE format('ALTER TABLE events ATTACH PARTITION events_moved FOR VALUES FROM (MINVALUE) TO (%s)', b);
    ALTER TABLE events_moved DROP CONSTRAINT events_moved_bound;
END
$$;
ALTER TABLE events_moved DROP CONSTRAINT events_moved_pkey;

GRANT SELECT ON events TO tenantflow_reader;
ALTER TABLE events ENABLE ROW LEVEL SECURITY;
CREATE POLICY workspace_isolation ON events FOR SELECT TO tenantflow_reader
    USING (metadata ->> 'workspace' = current_setting('app.workspace', true));

-- How partitions are cut: `partition_size` positions each, `partitions_ahead` of them
-- kept empty beyond the last position handed out. One row.
CREATE TABLE event_partitioning (
    one              boolean PRIMARY KEY DEFAULT true CHECK (one),
    partition_size   bigint  NOT NULL DEFAULT 5000000 CHECK (partition_size > 0),
    partitions_ahead integer NOT NULL DEFAULT 2 CHECK (partitions_ahead > 0)
);
INSERT INTO event_partitioning DEFAULT VALUES;

-- The partitions, by range [from_position, to_position).
CREATE TABLE event_partitions (
    name          text PRIMARY KEY,
    from_position bigint NOT NULL,
    to_position   bigint NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (from_position < to_position)
);
INSERT INTO event_partitions (name, from_position, to_position)
SELECT 'events_moved', 0, bound FROM moved_log_end;

-- Partition maintenance: makes partitions cover every position up to the last one handed
-- out plus `room` plus `partitions_ahead` partitions. A new partition is made as a table
-- and attached (which locks `events` only against other schema changes, not against
-- appends or reads). With `resize`, the partition size changes first and the empty
-- partitions ahead are cut again (that drops them: a short exclusive lock on `events`).
-- Returns how many partitions it created. An append beyond the last partition fails
-- (there is no default partition, whose rows would have to move when their range is
-- created); the bus names that error.
CREATE FUNCTION tenantflow_ensure_event_partitions(room bigint DEFAULT 0, resize bigint DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    size bigint;
    ahead integer;
    handed_out bigint;
    next_from bigint;
    part record;
    occupied boolean;
    part_name text;
    created integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tenantflow_event_partitions'));
    IF resize IS NOT NULL THEN
        UPDATE event_partitioning SET partition_size = resize;
    END IF;
    SELECT partition_size, partitions_ahead INTO size, ahead FROM event_partitioning;
    handed_out := coalesce(pg_sequence_last_value(pg_get_serial_sequence('events', 'global_position')::regclass), 0);
    IF resize IS NOT NULL THEN
        FOR part IN SELECT * FROM event_partitions WHERE from_position > handed_out ORDER BY from_position DESC LOOP
            EXECUTE format('LOCK TABLE events IN ACCESS EXCLUSIVE MODE');
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I)', part.name) INTO occupied;
            EXIT WHEN occupied;
            EXECUTE format('DROP TABLE %I', part.name);
            DELETE FROM event_partitions WHERE name = part.name;
        END LOOP;
    END IF;
    SELECT max(to_position) INTO next_from FROM event_partitions;
    WHILE next_from <= handed_out + room + size * ahead LOOP
        part_name := format('events_%s', lpad(next_from::text, 12, '0'));
        EXECUTE format('CREATE TABLE %I (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part_name);
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (global_position IS NOT NULL AND global_position >= %s AND global_position < %s)',
            part_name, part_name || '_bound', next_from, next_from + size);
        EXECUTE format('ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)', part_name, next_from, next_from + size);
        INSERT INTO event_partitions (name, from_position, to_position) VALUES (part_name, next_from, next_from + size);
        next_from := next_from + size;
        created := created + 1;
    END LOOP;
    RETURN created;
END;
$$;

SELECT tenantflow_ensure_event_partitions();
