-- Logs live in the store, so any dispatcher serves any log; each job keeps
-- its log's length in bytes (live output appends only where the log ends).
-- Dead letters are marked by a flag rather than recognised by their reason.
ALTER TABLE jobs ADD COLUMN log_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN dead_lettered INTEGER NOT NULL DEFAULT 0;
-- Stores from before the flag: the dead letters /metrics counted then.
UPDATE jobs SET dead_lettered = 1 WHERE status = 'error' AND reason LIKE 'dead-lettered%';
CREATE TABLE job_logs (
    job_id TEXT PRIMARY KEY REFERENCES jobs(id),
    text TEXT NOT NULL
);
-- The notifier's "previous outcome on this branch".
CREATE INDEX jobs_by_branch_finished ON jobs(repo, branch, finished_at_ms);
