-- The schema of the store before migrations existed (the dispatcher's own
-- SQLite code made it with these very statements), so a store made then
-- is adopted as it is and one made now starts the same.
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    repo TEXT NOT NULL,
    branch TEXT NOT NULL,
    commit_id TEXT NOT NULL,
    subject TEXT,
    author TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    runner TEXT,
    connection TEXT,
    enqueued_at_ms INTEGER,
    started_at_ms INTEGER,
    finished_at_ms INTEGER,
    duration_ms INTEGER,
    exit_code INTEGER,
    reason TEXT,
    truncated INTEGER NOT NULL DEFAULT 0,
    salt TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status, seq);
CREATE INDEX IF NOT EXISTS jobs_by_branch ON jobs(branch, seq);
CREATE INDEX IF NOT EXISTS jobs_by_commit ON jobs(commit_id);
CREATE TABLE IF NOT EXISTS runners (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    connection TEXT,
    current_job TEXT,
    last_seen_ms INTEGER NOT NULL,
    jobs_done INTEGER NOT NULL DEFAULT 0
);
