-- Drift alerts can be acknowledged (issue 16): who and when, from `AlertAcknowledged`.
-- Additive: existing rows stay open (both NULL).
ALTER TABLE rm_alerts
    ADD COLUMN acknowledged_at timestamptz,
    ADD COLUMN acknowledged_by text;
