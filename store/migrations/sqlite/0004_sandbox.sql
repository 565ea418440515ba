-- How each runner isolates its jobs, and how each job was run (issue 14):
-- the dashboard and `warren runners` say which ran without a sandbox.
-- Runners and jobs recorded before: no sandbox existed.
ALTER TABLE runners ADD COLUMN sandbox TEXT NOT NULL DEFAULT 'none';
ALTER TABLE jobs ADD COLUMN sandbox TEXT;
