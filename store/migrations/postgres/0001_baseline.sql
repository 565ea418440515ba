-- The SQLite baseline's tables in PostgreSQL's types. Commit ids compare
-- byte by byte (COLLATE "C"), so an abbreviation's range uses the index.
CREATE TABLE jobs (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    repo TEXT NOT NULL,
    branch TEXT NOT NULL,
    commit_id TEXT COLLATE "C" NOT NULL,
    subject TEXT,
    author TEXT,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    duplicates BIGINT NOT NULL DEFAULT 0,
    runner TEXT,
    connection TEXT,
    enqueued_at_ms BIGINT,
    started_at_ms BIGINT,
    finished_at_ms BIGINT,
    duration_ms BIGINT,
    exit_code BIGINT,
    reason TEXT,
    truncated BOOLEAN NOT NULL DEFAULT FALSE,
    salt TEXT NOT NULL DEFAULT ''
);
CREATE INDEX jobs_by_status ON jobs(status, seq);
CREATE INDEX jobs_by_branch ON jobs(branch, seq);
CREATE INDEX jobs_by_commit ON jobs(commit_id);
CREATE TABLE runners (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    connection TEXT,
    current_job TEXT,
    last_seen_ms BIGINT NOT NULL,
    jobs_done BIGINT NOT NULL DEFAULT 0
);
