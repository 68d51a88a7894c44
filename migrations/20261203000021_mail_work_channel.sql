-- Mail work announces itself (issue 17). The mail worker woke on every commit of the log
-- and asked for due mail work each time: a statement per commit, nearly always finding
-- nothing (a fleet resync made one per run). Now every statement that queues mail work
-- notifies `tenantflow_mail` (store::log::MAIL_CHANNEL), delivered when it commits, and the
-- worker listens there; work due later (renewal timers, retries) it finds by its poll, as
-- before. A statement trigger, so no path that queues work can forget to notify; an
-- INSERT ... ON CONFLICT DO UPDATE fires it too.
CREATE FUNCTION tenantflow_mail_work_queued() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('tenantflow_mail', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER mail_work_queued
    AFTER INSERT ON mail_work
    FOR EACH STATEMENT EXECUTE FUNCTION tenantflow_mail_work_queued();
