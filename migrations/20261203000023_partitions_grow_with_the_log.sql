-- Partitions grow with the log (issue 17; docs/SCALING.md, "How many partitions").
--
-- A statement that reads the log by stream (a run's claim, a command's load) or in the
-- global order (a consumer's batch) cannot be pruned to the partitions that hold its rows:
-- the log is partitioned by position. Under PostgreSQL 15 a cached plan locks every
-- partition and opens a scan on each, so every partition costs each such statement a
-- little, for ever: `bench resync --partitions` measured about 3 ms of machine CPU a run
-- with 3 partitions, about 4 with 33 and 6-10 with 103. At a fixed 5,000,000 positions a
-- partition a 5,000-tenant fleet makes a hundred partitions in under a year.
--
-- From now on a new partition is as large as every position before it, and at least
-- `partition_size` (`grows`, the default): their number grows with the logarithm of the
-- log (a billion events: about 9 partitions at the default size). `grows = false` keeps
-- every new partition at `partition_size`, as before (what `store::partitions::resize`
-- sets; tests use it for small partitions). Existing partitions keep their ranges.

ALTER TABLE event_partitioning ADD COLUMN grows boolean NOT NULL DEFAULT true;

DROP FUNCTION tenantflow_ensure_event_partitions(bigint, bigint);
CREATE FUNCTION tenantflow_ensure_event_partitions(
    room bigint DEFAULT 0, resize bigint DEFAULT NULL, grow boolean DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    size bigint;
    ahead integer;
    growing boolean;
    handed_out bigint;
    next_from bigint;
    part_size bigint;
    part record;
    occupied boolean;
    part_name text;
    created integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tenantflow_event_partitions'));
    IF resize IS NOT NULL THEN
        UPDATE event_partitioning SET partition_size = resize;
    END IF;
    IF grow IS NOT NULL THEN
        UPDATE event_partitioning SET grows = grow;
    END IF;
    SELECT partition_size, partitions_ahead, grows INTO size, ahead, growing FROM event_partitioning;
    handed_out := coalesce(pg_sequence_last_value(pg_get_serial_sequence('events', 'global_position')::regclass), 0);
    IF resize IS NOT NULL OR grow IS NOT NULL THEN
        -- Recut the empty partitions ahead by the new rule.
        FOR part IN SELECT * FROM event_partitions WHERE from_position > handed_out ORDER BY from_position DESC LOOP
            EXECUTE format('LOCK TABLE events IN ACCESS EXCLUSIVE MODE');
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I)', part.name) INTO occupied;
            EXIT WHEN occupied;
            EXECUTE format('DROP TABLE %I', part.name);
            DELETE FROM event_partitions WHERE name = part.name;
        END LOOP;
    END IF;
    SELECT max(to_position) INTO next_from FROM event_partitions;
    -- Cover what was handed out, `room`, and `ahead` partitions' worth beyond (a growing
    -- partition's worth being the log so far).
    WHILE next_from <= handed_out + room
            + ahead * (CASE WHEN growing THEN greatest(size, handed_out + room) ELSE size END) LOOP
        part_size := CASE WHEN growing THEN greatest(size, next_from - 1) ELSE size END;
        part_name := format('events_%s', lpad(next_from::text, 12, '0'));
        EXECUTE format('CREATE TABLE %I (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part_name);
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (global_position IS NOT NULL AND global_position >= %s AND global_position < %s)',
            part_name, part_name || '_bound', next_from, next_from + part_size);
        EXECUTE format('ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)', part_name, next_from, next_from + part_size);
        INSERT INTO event_partitions (name, from_position, to_position) VALUES (part_name, next_from, next_from + part_size);
        next_from := next_from + part_size;
        created := created + 1;
    END LOOP;
    RETURN created;
END;
$$;
