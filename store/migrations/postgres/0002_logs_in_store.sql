-- Logs live in the store, so any dispatcher serves any log; each job keeps
-- its log's length in bytes (live output appends only where the log ends).
-- Dead letters are marked by a flag rather than recognised by their reason.
ALTER TABLE jobs ADD COLUMN log_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN dead_lettered BOOLEAN NOT NULL DEFAULT FALSE;
CREATE TABLE job_logs (
    job_id TEXT PRIMARY KEY REFERENCES jobs(id),
    text TEXT NOT NULL
);
-- The notifier's "previous outcome on this branch".
CREATE INDEX jobs_by_branch_finished ON jobs(repo, branch, finished_at_ms);
