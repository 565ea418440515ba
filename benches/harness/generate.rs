//! The history generator of issue 19: a store holding `count` finished
//! jobs, as a long-lived Warren deployment would have them.
//!
//! Why SQL and not the dispatcher's own recording: recording a million
//! jobs through the broker at the measured ~100 jobs/s would take hours,
//! and it would measure the broker. The rows go instead through the real
//! schema (made by `warren migrate`), one `INSERT … SELECT` over a number
//! series, so every index, constraint and trigger of the store applies to
//! each row as it would to a recorded job. Then what a running dispatcher
//! leaves behind is left behind: the change rows the triggers wrote are
//! deleted (the announcer deletes them once announced), and PostgreSQL's
//! statistics are gathered (autovacuum does that after a bulk of writes).
//!
//! The history: one commit a second, each a pipeline of four jobs (`build`,
//! then `test`, `lint` and `docs` needing it); 80 % of the commits on one
//! monorepo, the rest spread over 20 services; 10 % on `dev`, 10 % on one
//! of 1,000 feature branches, the rest on `main`; about 5 % failed, 1 %
//! error, 0.3 % canceled, drawn by a hash of the job's number; every tenth job has a 2 KiB log.

use std::path::Path;
use std::process::Command;

use crate::common::PgDatabase;

/// Where the store is.
pub enum StoreAt<'a> {
    /// The SQLite file.
    Sqlite(&'a Path),
    /// A PostgreSQL database of the harness's own.
    Postgres(&'a PgDatabase),
}

impl StoreAt<'_> {
    /// Runs `sql` (statements separated by `;`) with the backend's
    /// command-line tool, failing with its message; its output.
    pub fn sql(&self, sql: &str) -> String {
        match self {
            StoreAt::Sqlite(path) => {
                // Waits for a writer (the dispatcher) rather than failing.
                let out = Command::new("sqlite3")
                    .args(["-cmd", ".timeout 5000"])
                    .arg(path)
                    .arg(sql)
                    .output()
                    .unwrap_or_else(|e| {
                        panic!("cannot run the sqlite3 command-line tool ({e}); install it: apt-get install -y sqlite3")
                    });
                assert!(
                    out.status.success(),
                    "sqlite3 failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            }
            StoreAt::Postgres(db) => db.query_value(sql),
        }
    }

    /// The number `sql`'s output ends with (a `count(*)`, a sum).
    pub fn count(&self, sql: &str) -> i64 {
        let out = self.sql(sql);
        out.lines()
            .rev()
            .find_map(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("no number in the answer to {sql:?}: {out:?}"))
    }
}

/// The repository most of the history belongs to.
pub const MONOREPO: &str = "/srv/git/monorepo";

/// The URL of service `n` (0 to 19): each holds 1 % of the history.
pub fn service(n: usize) -> String {
    format!("/srv/git/service-{n:02}")
}

/// The seq of the job `fraction` (0 to 1) of the way from the oldest.
pub fn seq_at(count: usize, fraction: f64) -> i64 {
    ((count as f64 * fraction) as i64).max(1)
}

/// One log's text: 32 lines of about 64 bytes.
fn log_text() -> String {
    (0..32)
        .map(|n| format!("test suite part {n:02}: 12 tests, 12 passed, 0 failed … ok\\n"))
        .collect()
}

/// The row of job `i` (from 0, oldest first), as SQL over `i`, `c` (its
/// commit: `i / 4`) and `k` (its place in the pipeline: `i % 4`).
/// `hex(value, width)` renders a number as zero-padded hex in the
/// backend's dialect.
fn select_jobs(hex: &dyn Fn(&str, usize) -> String, base_ms: u64) -> String {
    let id = format!("{} || {}", hex("c", 12), hex("k", 4));
    let pipeline = format!("{} || '0000'", hex("c", 12));
    let commit = format!("{} || {}", hex("(c + 1)", 8), hex("((c + 1) * 7919)", 32));
    format!(
        "SELECT {id}, \
           CASE WHEN c % 100 < 80 THEN '{MONOREPO}' \
                ELSE '/srv/git/service-' || lpad_2 END, \
           CASE WHEN c % 10 = 0 THEN 'dev' WHEN c % 10 = 1 THEN 'feature-' || (c % 1000) \
                ELSE 'main' END, \
           {commit}, \
           'Change ' || c || ' of the benchmark history', 'Warren Bench', \
           CASE WHEN HASH_OF_I < 50 THEN 'failed' WHEN HASH_OF_I < 60 THEN 'error' \
                WHEN HASH_OF_I < 63 THEN 'canceled' ELSE 'passed' END, \
           1, 0, 'runner-' || (i % 8), \
           {base_ms} + c * 1000, {base_ms} + c * 1000 + 40 + k * 5, \
           {base_ms} + c * 1000 + 1540 + (i % 7) * 100, 1500 + (i % 7) * 100, \
           CASE WHEN HASH_OF_I < 50 THEN 1 WHEN HASH_OF_I < 63 THEN NULL ELSE 0 END, \
           CASE WHEN HASH_OF_I >= 50 AND HASH_OF_I < 60 THEN 'the runner lost its lease three times' END, \
           CASE WHEN i % 10 = 0 THEN {log_len} ELSE 0 END, \
           'bwrap', \
           CASE k WHEN 0 THEN 'build' WHEN 1 THEN 'test' WHEN 2 THEN 'lint' ELSE 'docs' END, \
           {pipeline}, \
           CASE k WHEN 0 THEN '[]' ELSE '[\"build\"]' END",
        log_len = log_text().replace("\\n", "\n").len(),
    )
    .replace("HASH_OF_I", HASH)
}

/// A job's outcome is drawn from this, 0 to 999, a multiplicative hash
/// of `i` (so outcomes do not line up with repositories or branches).
const HASH: &str = "((i * 2654435761) % 4294967296 / 65536 % 1000)";

const JOB_COLUMNS: &str = "id, repo, branch, commit_id, subject, author, status, attempts, \
    duplicates, runner, enqueued_at_ms, started_at_ms, finished_at_ms, duration_ms, exit_code, \
    reason, log_bytes, sandbox, name, pipeline, needs";

/// Fills the (migrated, empty) store with `count` jobs (a multiple of 4),
/// the newest finishing about now.
pub fn fill(store: &StoreAt, count: usize) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let commits = count.div_ceil(4);
    let base_ms = now_ms.saturating_sub(commits as u64 * 1000 + 5000);
    let last = commits * 4 - 1;
    let sql = match store {
        StoreAt::Sqlite(_) => {
            let hex = |value: &str, width: usize| format!("printf('%0{width}x', {value})");
            let select =
                select_jobs(&hex, base_ms).replace("lpad_2", "printf('%02d', c % 100 - 80)");
            format!(
                "PRAGMA journal_mode=WAL;
                 BEGIN;
                 INSERT INTO jobs ({JOB_COLUMNS})
                 {select} FROM (
                   WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last})
                   SELECT i, i / 4 AS c, i % 4 AS k FROM n);
                 INSERT INTO job_logs (job_id, text)
                   SELECT id, replace('{log}', '\\n', char(10)) FROM jobs WHERE log_bytes > 0;
                 DELETE FROM job_changes;
                 COMMIT;
                 SELECT count(*) FROM jobs;",
                log = log_text(),
            )
        }
        StoreAt::Postgres(_) => {
            let hex = |value: &str, width: usize| {
                format!("lpad(to_hex(({value})::bigint), {width}, '0')")
            };
            let select =
                select_jobs(&hex, base_ms).replace("lpad_2", "lpad((c % 100 - 80)::text, 2, '0')");
            format!(
                "BEGIN;
                 INSERT INTO jobs ({JOB_COLUMNS})
                 {select} FROM (SELECT i, i / 4 AS c, i % 4 AS k
                                FROM generate_series(0::bigint, {last}::bigint) AS i) AS n;
                 INSERT INTO job_logs (job_id, text)
                   SELECT id, replace('{log}', '\\n', chr(10)) FROM jobs WHERE log_bytes > 0;
                 DELETE FROM job_changes;
                 COMMIT;
                 ANALYZE;
                 SELECT count(*) FROM jobs;",
                log = log_text(),
            )
        }
    };
    let rows = store.count(&sql);
    assert!(
        rows >= count as i64,
        "the store holds {rows} jobs, wanted {count}"
    );
}

/// The commit of [`big_pipeline`].
pub const BIG_PIPELINE_COMMIT: &str = "b16b16b16b16b16b16b16b16b16b16b16b16b16b";

/// Adds, as the newest commit on `main` of the monorepo, a finished
/// pipeline of 64 jobs: the planning job, `build` (a matrix of 8),
/// `test` (48, each needing every build), `lint` (6) and `package`
/// (needing every test and lint) over 8 runners, for the commit page's
/// benchmark (issue 20). Returns the commit.
pub fn big_pipeline(store: &StoreAt) -> &'static str {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let names =
        |job: &str, n: usize| -> Vec<String> { (1..=n).map(|i| format!("{job} ({i})")).collect() };
    let builds = names("build", 8);
    let tests = names("test", 48);
    let lints = names("lint", 6);
    let json = |list: &[String]| {
        let quoted: Vec<String> = list.iter().map(|n| format!("\"{n}\"")).collect();
        format!("[{}]", quoted.join(","))
    };
    let mut jobs: Vec<(String, String)> = vec![("plan".into(), "[]".into())];
    jobs.extend(builds.iter().map(|n| (n.clone(), "[]".to_string())));
    jobs.extend(tests.iter().map(|n| (n.clone(), json(&builds))));
    jobs.extend(lints.iter().map(|n| (n.clone(), "[]".to_string())));
    let mut before_package = tests.clone();
    before_package.extend(lints.iter().cloned());
    jobs.push(("package".into(), json(&before_package)));
    let pipeline = "b16b16b16b160000";
    let start = now_ms - 120_000;
    let rows: Vec<String> = jobs
        .iter()
        .enumerate()
        .map(|(k, (name, needs))| {
            let id = if k == 0 {
                pipeline.to_string()
            } else {
                format!("b16b16b16b16{k:04x}")
            };
            let stage = match name.split(' ').next() {
                Some("plan") => 0,
                Some("build") | Some("lint") => 1,
                Some("test") => 2,
                _ => 3,
            };
            let queued = start + stage * 20_000;
            let started = queued + 50 + (k as i64 % 8) * 400;
            let finished = started + 3_000 + (k as i64 * 7_919 % 9) * 1_000;
            format!(
                "('{id}', '{MONOREPO}', 'main', '{BIG_PIPELINE_COMMIT}', 'A pipeline of 64 jobs', \
                 'Warren Bench', 'passed', 1, 0, 'runner-{runner}', {queued}, {started}, {finished}, \
                 {duration}, 0, NULL, 0, 'bwrap', '{name}', '{pipeline}', '{needs}')",
                runner = k % 8,
                duration = finished - started,
            )
        })
        .collect();
    store.sql(&format!(
        "BEGIN; INSERT INTO jobs ({JOB_COLUMNS}) VALUES {}; DELETE FROM job_changes; COMMIT; \
         SELECT count(*) FROM jobs WHERE pipeline = '{pipeline}';",
        rows.join(", ")
    ));
    BIG_PIPELINE_COMMIT
}
