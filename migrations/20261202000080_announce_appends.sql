-- Appends are announced on `tenantflow_events` by the process that committed them (one
-- coalescing task per process), no longer by a trigger: PostgreSQL serialises the commits
-- of notifying transactions on the notification queue's lock, which halved the insert rate
-- of concurrent writers (docs/BENCHMARKS.md). Consumers still poll for anything else.
DROP TRIGGER events_notify ON events;
DROP FUNCTION tenantflow_notify_events();
