-- The live consumers' read of the log (issue 17): the statement of `store::log::read_batch_for`,
-- in a function whose plan is made once per connection instead of at every batch.
--
-- Run unprepared, that statement was planned at every call: 0.3-0.5 ms of planning (over
-- every partition and its indexes) against 0.2-0.3 ms of execution for a batch of a few
-- events, the largest single cost of the task feed and the audit sealer under load. Left
-- to choose, PostgreSQL keeps planning it per call, since a custom plan for a position near
-- the end of the log looks cheaper than the generic one. The generic plan is the same plan
-- (no partition can be pruned by a (transaction, position) row comparison), and the
-- function's settings make it the ordered index scan whatever the statistics say, so a plan
-- made while the log was small cannot become a sort of the whole log once it has grown.
-- The function returns its rows through a tuplestore: fine for the live batches (at most
-- a few hundred rows); a rebuild's large batches keep the direct statement.
CREATE FUNCTION tenantflow_read_log(
    p_transaction_id text, p_position bigint, p_limit bigint,
    p_aggregates text[], p_events text[], p_all boolean)
RETURNS TABLE (
    transaction_id  bigint,
    global_position bigint,
    aggregate_type  text,
    aggregate_id    text,
    sequence        bigint,
    event_type      text,
    event_version   text,
    payload         jsonb,
    metadata        jsonb,
    recorded_at     timestamptz
)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_sort = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT e.transaction_id::text::bigint, e.global_position, e.aggregate_type, e.aggregate_id,
           e.sequence, e.event_type, e.event_version,
           CASE WHEN p_all OR e.aggregate_type = ANY(p_aggregates) OR e.event_type = ANY(p_events)
                THEN e.payload ELSE 'null'::jsonb END,
           CASE WHEN p_all OR e.aggregate_type = ANY(p_aggregates) OR e.event_type = ANY(p_events)
                THEN e.metadata ELSE '{}'::jsonb END,
           e.recorded_at
    FROM events e
    WHERE (e.transaction_id, e.global_position) > (p_transaction_id::xid8, p_position)
      AND e.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY e.transaction_id, e.global_position
    LIMIT p_limit;
END;
$$;
