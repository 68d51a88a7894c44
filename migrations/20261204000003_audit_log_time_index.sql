-- The audit log's time window, for a workspace that kept years of events (issue 17;
-- docs/SCALING.md, "The audit log's filters over years of events").
--
-- `auditLog(filter: {recordedAfter, recordedBefore})` pages newest first by position, and
-- PostgreSQL, which cannot know that positions and times rise together, read the workspace
-- from its newest row back to the window: a day a year and a half back took 202-235 ms on
-- 3,000,000 rows, growing with the history. The API now first reads the window's own rows
-- through this index, up to a bound, and orders them (api/src/graphql/query.rs,
-- `WINDOW_ROWS`): 2.2 ms for that day.
--
-- A block range index: the rows are written in the log's order, so each range of pages
-- holds a short span of times, and the index is a few hundred kilobytes for millions of
-- rows (176 kB at 3,000,000), cheap to keep on every insert. `minmax_multi` keeps a range
-- useful when a few of its rows are far from the rest (an archived run's rows written
-- again); `autosummarize` summarizes each range as it fills, so the newest rows are not
-- read for every window.
CREATE INDEX rm_audit_log_recorded ON rm_audit_log
    USING brin (recorded_at timestamptz_minmax_multi_ops) WITH (autosummarize = on);
