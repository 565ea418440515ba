-- Test splitting (issue 18): each test's smoothed time per repository,
-- which the coordinator cuts batches by, and each test's result in a
-- split job (the parent), merged over its batch and its retry.
CREATE TABLE test_timings (
    repo TEXT NOT NULL,
    test TEXT NOT NULL,
    ms BIGINT NOT NULL,
    runs BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (repo, test)
);
CREATE TABLE test_results (
    job_id TEXT NOT NULL,
    test TEXT NOT NULL,
    status TEXT NOT NULL,
    duration_ms BIGINT NOT NULL,
    runner TEXT NOT NULL,
    batch TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    PRIMARY KEY (job_id, test)
);
