-- Pipelines (issue 16): each job has a name in its commit's pipeline, the
-- planning job it belongs to (its own id for a commit's first job), the
-- queue it goes to, what it needs, and what it runs (the plan's spec, as
-- JSON, to publish it when its needs have ended). Jobs recorded before
-- are pipelines of one job named "test" on the default queue.
ALTER TABLE jobs ADD COLUMN name TEXT NOT NULL DEFAULT 'test';
ALTER TABLE jobs ADD COLUMN pipeline TEXT;
ALTER TABLE jobs ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
ALTER TABLE jobs ADD COLUMN needs TEXT NOT NULL DEFAULT '[]';
ALTER TABLE jobs ADD COLUMN allow_failure INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN spec TEXT;
UPDATE jobs SET pipeline = id WHERE pipeline IS NULL;
CREATE INDEX jobs_by_pipeline ON jobs(pipeline, seq);
-- "queued behind N jobs": the queued jobs of one queue, oldest first.
CREATE INDEX jobs_by_queue ON jobs(queue, status, seq);
-- The queues each runner serves, so a job on a queue nobody serves says so.
ALTER TABLE runners ADD COLUMN queues TEXT NOT NULL DEFAULT '["default"]';
-- The outbox: jobs a transition released, written in the same transaction,
-- published with confirms by the dispatcher, then marked sent. A row
-- unsent when a dispatcher dies is published by the next one.
CREATE TABLE outbox (
    job_id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    sent_ms BIGINT
);
CREATE INDEX outbox_unsent ON outbox(created_ms) WHERE sent_ms IS NULL;
