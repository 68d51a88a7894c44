-- The engine writes a step's events, its run's checkpoint and (when the run ends) the freed
-- scope in one statement instead of a transaction of BEGIN, two statements and COMMIT
-- (issue 17: three round trips less for every write of a run). The checkpoint's UPDATE is
-- a data-modifying CTE of that statement; when it matches no row (another runner holds the
-- task, or a person's command moved the checkpoint) this function raises, so the statement
-- and every write in it roll back. SQLSTATE TF409 tells the engine it was that refusal
-- (a conflict: it reads the run again), not a failure.
CREATE FUNCTION tenantflow_checkpoint_written(p_rows bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    IF p_rows <> 1 THEN
        RAISE EXCEPTION 'the run''s checkpoint moved since it was read; nothing was written'
            USING ERRCODE = 'TF409';
    END IF;
    RETURN true;
END;
$$;
