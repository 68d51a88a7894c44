-- A received message may be moved to a processed folder after its event (its own work row).
ALTER TABLE mail_work DROP CONSTRAINT mail_work_kind_check;
ALTER TABLE mail_work ADD CONSTRAINT mail_work_kind_check
    CHECK (kind IN ('fetch', 'subscription', 'test', 'catch_up', 'move'));
