-- Job changes to announce (issue 17): every change of a job's status
-- leaves a row here in the transaction that made it (see the PostgreSQL
-- migration of the same number; one dispatcher reads them).
CREATE TABLE job_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs
BEGIN
    INSERT INTO job_changes (job_id, status) VALUES (NEW.id, NEW.status);
END;
CREATE TRIGGER jobs_changed AFTER UPDATE OF status ON jobs
    WHEN OLD.status IS NOT NEW.status
BEGIN
    INSERT INTO job_changes (job_id, status) VALUES (NEW.id, NEW.status);
END;
