-- The write side's own lookup of streams by owner: the streams a command path must find
-- without a read model (which may lag), e.g. every contact of a client when a sync decides
-- who to link, or every tenant mapping of a workspace. A row is inserted in the same
-- transaction as the event that creates the stream, so the index and the log never
-- disagree; rows are never updated or deleted (streams are never deleted either).
CREATE TABLE stream_index (
    workspace_id   text NOT NULL,
    aggregate_type text NOT NULL,
    -- The owner the stream is listed under ('' for none): a contact's client id.
    parent_id      text NOT NULL DEFAULT '',
    aggregate_id   text NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

CREATE INDEX stream_index_by_parent ON stream_index (workspace_id, aggregate_type, parent_id);
