-- Auditors read the event streams through the API as tenantflow_reader; row-level security
-- confines them to their workspace (from each event's metadata). The owner that appends
-- events is not subject to these policies (RLS is enabled, not forced).
GRANT SELECT ON events TO tenantflow_reader;
ALTER TABLE events ENABLE ROW LEVEL SECURITY;
CREATE POLICY workspace_isolation ON events FOR SELECT TO tenantflow_reader
    USING (metadata ->> 'workspace' = current_setting('app.workspace', true));
