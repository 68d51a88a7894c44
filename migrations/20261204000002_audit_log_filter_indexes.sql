-- The audit log's filters by who acted and by what happened, for a workspace that kept years
-- of events (issue 17; docs/SCALING.md, "The audit log's filters over years of events").
--
-- `auditLog` pages newest first by position. A filter on a rare actor or action read the
-- workspace's rows from the newest until it had a page, or to the end: on 3,000,000 rows
-- (2,700,000 in one workspace) a person's ten actions took 278 ms and a rare event type
-- 198 ms, growing with the history. Each index below holds one filter's rows in the page's
-- order, so a page reads its own rows: 0.30 and 0.23 ms.
CREATE INDEX rm_audit_log_actor ON rm_audit_log (workspace_id, actor, global_position DESC);
CREATE INDEX rm_audit_log_action ON rm_audit_log (workspace_id, action, global_position DESC);
