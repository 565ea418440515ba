-- The repository registry: what to build and how to hear about it. Secrets
-- are never stored: the entries name environment variables.
CREATE TABLE repos (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    -- A JSON array of branch patterns; empty: the HEAD branch.
    branches TEXT NOT NULL DEFAULT '[]',
    poll_secs DOUBLE PRECISION,
    webhook_secret_env TEXT,
    status_kind TEXT,
    status_api TEXT,
    status_repo TEXT,
    status_token_env TEXT,
    updated_at_ms BIGINT NOT NULL
);
-- One URL has one name, so its commits are queued once.
CREATE UNIQUE INDEX repos_by_url ON repos(url);
-- `GET /api/jobs?repo=NAME`, newest first.
CREATE INDEX jobs_by_repo ON jobs(repo, seq);
