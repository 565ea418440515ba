-- Job changes to announce (issue 17): every change of a job's status
-- leaves a row here in the transaction that made it. A trigger writes it,
-- so no path that changes a status can forget to. The dispatcher holding
-- the duties done once reads the rows in order, hands them to the
-- notifier and the commit-status reporter, and deletes them; rows left by
-- a holder that died are taken by the next. So notifications and commit
-- statuses are decided by one dispatcher, whichever recorded the change.
CREATE TABLE job_changes (
    seq BIGSERIAL PRIMARY KEY,
    job_id TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE FUNCTION job_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_changes (job_id, status) VALUES (NEW.id, NEW.status);
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION job_changed();
CREATE TRIGGER jobs_changed AFTER UPDATE OF status ON jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION job_changed();
