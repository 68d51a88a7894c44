-- Takes back migration 20261203000021. Its trigger's NOTIFY made every transaction that
-- queues mail work (the webhook's among them) take the notification queue's lock at commit
-- and hold it through the commit's flush, so those commits ran one at a time: the reason
-- appends are announced after their commit (store::bus::Announcer), never inside it. The
-- mail worker wakes on every commit of the log again. Migrations are never edited or removed
-- once on main, so this one undoes the other.
DROP TRIGGER mail_work_queued ON mail_work;
DROP FUNCTION tenantflow_mail_work_queued();
