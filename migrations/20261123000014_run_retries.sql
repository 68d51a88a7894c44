-- A run started again by `retryRun` names the run it retries (its RunQueued's `retry_of`).
-- Added empty: runs queued before retries existed retry nothing, and a rebuild fills the
-- column from the events.
ALTER TABLE rm_runs ADD COLUMN retry_of uuid;
