//! The store's conformance suite: each test is written once and runs
//! against both backends, SQLite in a temporary folder and PostgreSQL in a
//! database created for the test and dropped after it (also when it
//! fails). PostgreSQL comes from `WARREN_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); if it does not answer,
//! the PostgreSQL half fails saying how to start it.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::{
    BranchName, CommitId, Job, JobQuery, JobResult, JobStatus, Outcome, RepoUrl, RunnerId,
    RunnerInfo, SCHEMA_VERSION,
};
// `Executor::execute` rather than `RawSql::execute`: its future is `Send`
// for every lifetime, so the test body can be spawned.
use sqlx::{Connection, Executor};
use warren_store as store;
use warren_store::{CommitMatch, Recorded, Store, StoreError, StoreSettings, StoreUrl};

const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Where one test's store lives.
struct Backend {
    url: StoreUrl,
    /// The SQLite store's folder (removed on drop).
    dir: Option<tempfile::TempDir>,
    /// The PostgreSQL database's URL as the driver takes it (for the
    /// tests' own statements).
    database: Option<String>,
}

impl Backend {
    async fn open(&self) -> Arc<dyn Store> {
        self.open_with(StoreSettings::default()).await
    }

    async fn open_with(&self, settings: StoreSettings) -> Arc<dyn Store> {
        store::open(&self.url, settings)
            .await
            .unwrap_or_else(|err| panic!("opening {}: {err}", self.url))
    }
}

/// Declares a test that runs on both backends: `name::sqlite` and
/// `name::postgres`.
macro_rules! conformance {
    ($(#[$meta:meta])* async fn $name:ident($backend:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$meta])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                on_sqlite(|$backend: Backend| async move $body).await
            }

            $(#[$meta])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                on_postgres(|$backend: Backend| async move $body).await
            }
        }
    };
}

async fn on_sqlite<F, Fut>(test: F)
where
    F: FnOnce(Backend) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let url = StoreUrl::sqlite(dir.path().join("warren.db"));
    test(Backend {
        url,
        dir: Some(dir),
        database: None,
    })
    .await
}

fn postgres_server() -> String {
    std::env::var("WARREN_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_POSTGRES.to_string())
}

/// The server's URL with another database.
fn with_database(server: &str, database: &str) -> String {
    let mut url = url::Url::parse(server).expect("WARREN_TEST_POSTGRES is a URL");
    url.set_path(database);
    url.to_string()
}

async fn admin() -> sqlx::PgConnection {
    let server = postgres_server();
    let connecting = sqlx::PgConnection::connect(&server);
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => panic!(
            "PostgreSQL does not answer at {} ({err}). Start it with scripts/ensure-postgres \
             (which installs Debian's postgresql package if needed), or point \
             WARREN_TEST_POSTGRES at a server where this user may create databases.",
            StoreUrl::parse(&server).map_or_else(|_| "WARREN_TEST_POSTGRES".into(), |u| u.to_string())
        ),
        Err(_) => panic!(
            "PostgreSQL did not answer within 10 s at WARREN_TEST_POSTGRES (default {DEFAULT_POSTGRES}); \
             start it with scripts/ensure-postgres"
        ),
    }
}

static DATABASES: AtomicU32 = AtomicU32::new(0);

/// Runs `test` on a database of its own, dropped afterwards whether the
/// test passed or panicked.
async fn on_postgres<F, Fut>(test: F)
where
    F: FnOnce(Backend) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let name = format!(
        "warren_test_{}_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed),
        model::now_ms() % 1_000_000
    );
    let mut admin = admin().await;
    // A name made of our own letters and digits: identifiers cannot be bound.
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("creating the test database");
    let database = with_database(&postgres_server(), &name);
    let url = StoreUrl::parse(&database).expect("test URL");
    let outcome = tokio::spawn(test(Backend {
        url,
        dir: None,
        database: Some(database),
    }))
    .await;
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("dropping the test database");
    let _ = admin.close().await;
    if let Err(err) = outcome {
        std::panic::resume_unwind(err.into_panic());
    }
}

fn repo(text: &str) -> RepoUrl {
    RepoUrl::parse(text).expect("repo")
}

fn branch(text: &str) -> BranchName {
    BranchName::parse(text).expect("branch")
}

fn commit(digit: char) -> CommitId {
    CommitId::parse(&digit.to_string().repeat(40)).expect("commit")
}

fn numbered_commit(n: u64) -> CommitId {
    CommitId::parse(&format!("{n:040x}")).expect("commit")
}

fn job(repo_path: &str, branch_name: &str, commit_id: CommitId) -> Job {
    Job::for_commit(&repo(repo_path), &branch(branch_name), &commit_id)
}

fn runner(id: &str) -> RunnerInfo {
    RunnerInfo {
        id: RunnerId::parse(id).expect("runner id"),
        host: "h".into(),
        connection: format!("conn-{id}"),
        sandbox: Default::default(),
        queues: Vec::new(),
    }
}

fn result(job: &Job, outcome: Outcome, by: &str) -> JobResult {
    JobResult {
        v: SCHEMA_VERSION,
        job: job.clone(),
        outcome,
        exit_code: Some(0),
        started_at_ms: 1,
        finished_at_ms: 2,
        duration_ms: 1,
        output: format!("output of {by}"),
        truncated: false,
        runner: runner(by),
        reason: None,
        plan: None,
        tests: None,
    }
}

fn page(limit: u32) -> JobQuery {
    JobQuery {
        limit,
        ..Default::default()
    }
}

conformance!(
    async fn one_outcome_per_job_and_duplicates_are_counted(backend) {
        let store = backend.open().await;
        let job = job("/r", "main", commit('a'));
        assert!(store.job_queued(&job).await.expect("queued").new);
        let started = store
            .job_started(&job, &runner("r1"), 10)
            .await
            .expect("started");
        assert_eq!(started.was, Some(JobStatus::Queued));
        let again = store
            .job_started(&job, &runner("r2"), 11)
            .await
            .expect("started again");
        assert_eq!(again.was, Some(JobStatus::Running));
        let again = again.record;
        assert_eq!(again.attempts, 2);
        assert_eq!(again.status, JobStatus::Running);
        assert_eq!(again.runner.as_ref().map(RunnerId::as_str), Some("r2"));
        assert_eq!(again.connection.as_deref(), Some("conn-r2"));
        let first = store
            .job_finished(&result(&job, Outcome::Passed, "r2"))
            .await
            .expect("result");
        assert!(
            matches!(first, Recorded::New { was: Some(JobStatus::Running), .. }),
            "{first:?}"
        );
        assert_eq!(first.record().status, JobStatus::Passed);
        let second = store
            .job_finished(&result(&job, Outcome::Failed, "r1"))
            .await
            .expect("result");
        assert!(!second.is_new(), "{second:?}");
        assert_eq!(second.record().duplicates, 1);
        assert_eq!(second.record().status, JobStatus::Passed);
        let dead = store.job_dead(&job, "x", 5).await.expect("dead");
        assert!(!dead.is_new(), "{dead:?}");
        let record = store.job(&job.id).await.expect("job").expect("exists");
        assert_eq!(record.status, JobStatus::Passed);
        assert_eq!(record.duplicates, 1);
        assert_eq!(record.attempts, 2);
        assert_eq!(
            store.log(&job.id).await.expect("log").as_deref(),
            Some("output of r2")
        );
        // A started event after the outcome does not reopen the job.
        let late = store
            .job_started(&job, &runner("r3"), 12)
            .await
            .expect("late");
        assert!(late.is_duplicate_execution());
        assert_eq!(late.record.attempts, 3);
        assert_eq!(late.record.status, JobStatus::Passed);
        assert_eq!(late.record.runner.as_ref().map(RunnerId::as_str), Some("r2"));
        let queued_again = store.job_queued(&job).await.expect("queued again");
        assert!(!queued_again.new);
        assert_eq!(queued_again.record.status, JobStatus::Passed);
    }
);

conformance!(
    async fn a_batch_of_results_is_recorded_in_order_in_one_transaction(backend) {
        let store = backend.open().await;
        let a = job("/r", "main", commit('a'));
        let b = job("/r", "main", commit('b'));
        store.job_queued(&a).await.expect("queued");
        store
            .runner_seen(&runner("r1"), Some(&a.id), 1)
            .await
            .expect("runner");
        store
            .runner_seen(&runner("r3"), None, 1)
            .await
            .expect("runner");
        // b is unknown until its result: it is recorded from the result.
        let recorded = store
            .jobs_finished(&[
                result(&a, Outcome::Passed, "r1"),
                result(&b, Outcome::Failed, "r2"),
                result(&a, Outcome::Failed, "r3"),
            ])
            .await
            .expect("batch");
        assert_eq!(recorded.len(), 3);
        assert!(recorded[0].is_new() && recorded[1].is_new(), "{recorded:?}");
        assert_eq!(recorded[0].record().status, JobStatus::Passed);
        assert_eq!(recorded[1].record().status, JobStatus::Failed);
        // The later result of a job in the same batch sees the earlier.
        assert!(!recorded[2].is_new(), "{recorded:?}");
        assert_eq!(recorded[2].record().duplicates, 1);
        assert_eq!(
            store.log(&a.id).await.expect("log").as_deref(),
            Some("output of r1")
        );
        assert_eq!(
            store.log(&b.id).await.expect("log").as_deref(),
            Some("output of r2")
        );
        // Outcomes count on their runners (a duplicate does not), and a
        // runner's current job is cleared by its outcome.
        let runners = store.runners().await.expect("runners");
        let of = |id: &str| {
            runners
                .iter()
                .find(|r| r.id.as_str() == id)
                .map(|r| (r.jobs_done, r.current_job.clone()))
        };
        assert_eq!(of("r1"), Some((1, None)));
        assert_eq!(of("r3"), Some((0, None)));

        // All or nothing: a result that cannot be recorded (its id names
        // another job) leaves the whole batch unrecorded.
        let c = job("/r", "main", commit('c'));
        let mut forged = job("/srv/forged", "dev", commit('d'));
        forged.id = a.id.clone();
        let err = store
            .jobs_finished(&[
                result(&c, Outcome::Passed, "r1"),
                result(&forged, Outcome::Failed, "r2"),
            ])
            .await
            .expect_err("a collision");
        assert!(matches!(err, StoreError::Collision { .. }), "{err}");
        assert!(store.job(&c.id).await.expect("read").is_none());
        let a_now = store.job(&a.id).await.expect("read").expect("a");
        assert_eq!((a_now.status, a_now.duplicates), (JobStatus::Passed, 1));
    }
);

conformance!(
    async fn live_output_grows_the_log_until_the_result_replaces_it(backend) {
        let store = backend.open().await;
        let job = job("/r", "main", commit('e'));
        let log = || {
            let store = store.clone();
            let id = job.id.clone();
            async move { store.log(&id).await.expect("log") }
        };
        // Unknown jobs get nothing.
        assert!(!store
            .append_live_output(&job.id, 0, "early")
            .await
            .expect("append"));
        assert_eq!(log().await, None);
        store.job_queued(&job).await.expect("queued");
        store
            .job_started(&job, &runner("r1"), 10)
            .await
            .expect("started");
        assert!(store
            .append_live_output(&job.id, 0, "one\n")
            .await
            .expect("append"));
        assert!(store
            .append_live_output(&job.id, 4, "two\n")
            .await
            .expect("append"));
        assert_eq!(log().await.as_deref(), Some("one\ntwo\n"));
        // Repeated or out-of-place pieces are skipped.
        assert!(!store
            .append_live_output(&job.id, 4, "two\n")
            .await
            .expect("append"));
        assert!(!store
            .append_live_output(&job.id, 99, "gap")
            .await
            .expect("append"));
        assert_eq!(log().await.as_deref(), Some("one\ntwo\n"));
        // Offsets count bytes, not characters.
        assert!(store
            .append_live_output(&job.id, 8, "é\n")
            .await
            .expect("append"));
        assert!(store
            .append_live_output(&job.id, 11, "ok\n")
            .await
            .expect("append"));
        assert_eq!(log().await.as_deref(), Some("one\ntwo\né\nok\n"));
        // A new attempt starts the log again.
        assert!(store
            .append_live_output(&job.id, 0, "again\n")
            .await
            .expect("append"));
        assert_eq!(log().await.as_deref(), Some("again\n"));
        store
            .job_finished(&result(&job, Outcome::Passed, "r1"))
            .await
            .expect("result");
        assert!(!store
            .append_live_output(&job.id, 0, "late")
            .await
            .expect("append"));
        assert!(!store
            .append_live_output(&job.id, 12, "late")
            .await
            .expect("append"));
        assert_eq!(log().await.as_deref(), Some("output of r1"));
    }
);

conformance!(
    async fn nul_bytes_are_kept_as_one_byte_each_so_offsets_still_line_up(backend) {
        let store = backend.open().await;
        let job = job("/r", "main", commit('9'));
        store
            .job_started(&job, &runner("r1"), 10)
            .await
            .expect("started");
        assert!(store
            .append_live_output(&job.id, 0, "a\0b")
            .await
            .expect("append"));
        assert!(store
            .append_live_output(&job.id, 3, "c")
            .await
            .expect("append after a NUL"));
        assert_eq!(
            store.log(&job.id).await.expect("log").as_deref(),
            Some("a\u{1a}bc")
        );
        let mut finished = result(&job, Outcome::Failed, "r1");
        finished.output = "binary\0junk".into();
        finished.reason = Some("why\0not".into());
        store.job_finished(&finished).await.expect("result");
        assert_eq!(
            store.log(&job.id).await.expect("log").as_deref(),
            Some("binary\u{1a}junk")
        );
        let record = store.job(&job.id).await.expect("job").expect("exists");
        assert_eq!(record.reason.as_deref(), Some("why\u{1a}not"));
    }
);

conformance!(
    async fn a_started_event_that_arrives_after_its_own_result_is_not_another_attempt(backend) {
        let store = backend.open().await;
        let job = job("/r", "main", commit('d'));
        // result() says started_at_ms = 1.
        store
            .job_finished(&result(&job, Outcome::Passed, "r1"))
            .await
            .expect("result");
        let late = store
            .job_started(&job, &runner("r1"), 1)
            .await
            .expect("started");
        assert!(late.same_execution);
        assert!(!late.is_duplicate_execution());
        assert_eq!(late.record.attempts, 1);
    }
);

conformance!(
    async fn results_before_the_queued_copy_and_dead_letters_are_recorded(backend) {
        let store = backend.open().await;
        let job = job("/r", "main", commit('b'));
        let recorded = store
            .job_finished(&result(&job, Outcome::Failed, "r1"))
            .await
            .expect("result");
        // Unknown until its result: counted from nothing.
        assert!(matches!(recorded, Recorded::New { was: None, .. }), "{recorded:?}");
        assert_eq!(recorded.record().attempts, 1);
        assert!(!store.job_queued(&job).await.expect("queued").new);
        assert_eq!(
            store.job(&job.id).await.expect("job").expect("exists").status,
            JobStatus::Failed
        );
        let poison = self::job("/r", "main", commit('c'));
        let dead = store
            .job_dead(&poison, "delivery limit", 1234)
            .await
            .expect("dead");
        assert!(matches!(dead, Recorded::New { was: None, .. }), "{dead:?}");
        let record = store.job(&poison.id).await.expect("job").expect("exists");
        assert_eq!(
            (record.status, record.reason.as_deref(), record.finished_at_ms),
            (JobStatus::Error, Some("delivery limit"), Some(1234))
        );
        assert_eq!(
            store.log(&poison.id).await.expect("log").as_deref(),
            Some("warren: delivery limit\n")
        );
        // A dead letter of a finished job changes nothing and counts nothing.
        let again = store.job_dead(&poison, "again", 5678).await.expect("dead");
        assert!(!again.is_new());
        assert_eq!(again.record().duplicates, 0);
        let totals = store.totals(&[]).await.expect("totals");
        assert_eq!(totals.dead_lettered, 1);
    }
);

conformance!(
    async fn a_known_id_naming_another_job_is_a_collision_whose_text_names_both(backend) {
        let store = backend.open().await;
        let real = job("/srv/real", "main", commit('a'));
        store.job_queued(&real).await.expect("queued");
        // Another job forged to carry the real one's id.
        let mut forged = job("/srv/forged", "dev", commit('b'));
        forged.id = real.id.clone();
        let expect_collision = |err: StoreError| {
            let text = err.to_string();
            assert!(matches!(err, StoreError::Collision { .. }), "{text}");
            assert!(
                text.contains(real.id.as_str())
                    && text.contains("/srv/real")
                    && text.contains("/srv/forged"),
                "{text}"
            );
        };
        expect_collision(store.job_queued(&forged).await.expect_err("queued"));
        expect_collision(
            store
                .job_started(&forged, &runner("r1"), 10)
                .await
                .expect_err("started"),
        );
        expect_collision(
            store
                .job_finished(&result(&forged, Outcome::Passed, "r1"))
                .await
                .expect_err("finished"),
        );
        expect_collision(store.job_dead(&forged, "x", 1).await.expect_err("dead"));
        // Nothing of the forged job was recorded.
        let record = store.job(&real.id).await.expect("job").expect("exists");
        assert_eq!(record.status, JobStatus::Queued);
        assert_eq!((record.attempts, record.duplicates), (0, 0));
        assert_eq!(store.log(&real.id).await.expect("log"), None);
        // A rerun of the same commit (another salt) is another job.
        let rerun = real.again("rerun-1");
        assert!(store.job_queued(&rerun).await.expect("rerun").new);
        let record = store.job(&rerun.id).await.expect("job").expect("exists");
        assert_eq!(record.salt, "rerun-1");
        assert_eq!(record.to_job().id, rerun.id);
    }
);

conformance!(
    async fn lists_newest_first_with_filters_and_keyset_pages(backend) {
        let store = backend.open().await;
        let mut ids = Vec::new();
        for i in 0..25u64 {
            let branch_name = if i % 2 == 0 { "main" } else { "dev" };
            let job = job("/r", branch_name, numbered_commit(i));
            store.job_queued(&job).await.expect("queued");
            if i % 3 == 0 {
                store
                    .job_started(&job, &runner("r1"), 100 + i)
                    .await
                    .expect("started");
            }
            ids.push(job.id);
        }
        let all = store.jobs(&page(100)).await.expect("jobs");
        assert_eq!(all.len(), 25);
        assert!(all.windows(2).all(|w| w[0].seq > w[1].seq));
        assert_eq!(all[0].id, ids[24]);
        // Walking the pages with `before` sees every job once, in order.
        let mut walked = Vec::new();
        let mut before = None;
        loop {
            let next = store
                .jobs(&JobQuery {
                    before,
                    limit: 7,
                    ..Default::default()
                })
                .await
                .expect("page");
            if next.is_empty() {
                break;
            }
            assert!(next.len() <= 7);
            before = next.last().map(|job| job.seq);
            walked.extend(next);
        }
        assert_eq!(walked, all);
        let main = store
            .jobs(&JobQuery {
                branch: Some(branch("main")),
                limit: 100,
                ..Default::default()
            })
            .await
            .expect("jobs");
        assert_eq!(main.len(), 13);
        assert!(main.iter().all(|job| job.branch == "main"));
        let running_main = store
            .jobs(&JobQuery {
                status: Some(JobStatus::Running),
                repo: None,
                branch: Some(branch("main")),
                before: Some(all[0].seq),
                limit: 100,
            })
            .await
            .expect("jobs");
        // i = 0, 6, 12, 18 (24 is excluded by `before`).
        assert_eq!(running_main.len(), 4);
        assert!(running_main
            .iter()
            .all(|job| job.status == JobStatus::Running && job.branch == "main"));
        // The limit is kept within 1 to 1000.
        assert_eq!(store.jobs(&page(0)).await.expect("jobs").len(), 1);
        assert_eq!(store.jobs(&page(5000)).await.expect("jobs").len(), 25);
        let running = store.running().await.expect("running");
        assert_eq!(running.len(), 9);
        assert!(running.iter().all(|job| job.status == JobStatus::Running));
    }
);

conformance!(
    async fn finished_before_is_the_previous_outcome_on_the_same_branch_by_finish_time(backend) {
        let store = backend.open().await;
        let finish = |job: Job, outcome: Outcome, at: u64| {
            let store = store.clone();
            async move {
                let mut r = result(&job, outcome, "r1");
                r.finished_at_ms = at;
                store.job_finished(&r).await.expect("result").into_record()
            }
        };
        let a = job("/r", "main", commit('1'));
        let b = job("/r", "main", commit('2'));
        let c = job("/r", "main", commit('3'));
        let other_branch = job("/r", "dev", commit('4'));
        let other_repo = job("/s", "main", commit('5'));
        let queued = job("/r", "main", commit('6'));
        store.job_queued(&queued).await.expect("queued");
        let a = finish(a, Outcome::Passed, 100).await;
        assert_eq!(store.finished_before(&a).await.expect("query"), None);
        // c is enqueued after b but finishes first.
        store.job_queued(&b).await.expect("queued");
        let c = finish(c, Outcome::Failed, 200).await;
        let b = finish(b, Outcome::Error, 300).await;
        finish(other_branch, Outcome::Failed, 250).await;
        finish(other_repo, Outcome::Failed, 250).await;
        let id = |r: Option<model::JobRecord>| r.map(|r| r.id);
        assert_eq!(
            id(store.finished_before(&c).await.expect("query")),
            Some(a.id.clone())
        );
        assert_eq!(
            id(store.finished_before(&b).await.expect("query")),
            Some(c.id.clone())
        );
        // The same finish time: the smaller seq is earlier.
        let d = finish(job("/r", "main", commit('7')), Outcome::Passed, 300).await;
        assert_eq!(id(store.finished_before(&d).await.expect("query")), Some(b.id));
    }
);

conformance!(
    async fn abbreviated_commits_find_the_newest_job_or_list_the_candidates(backend) {
        let store = backend.open().await;
        let first = job("/r", "main", commit('a'));
        store.job_queued(&first).await.expect("queued");
        let rerun = first.again("rerun-1");
        store.job_queued(&rerun).await.expect("queued");
        // Newest job of the commit, upper case or not.
        for prefix in ["aaaaaaa", "AAAAAAAAAA", &"a".repeat(40)] {
            match store.job_by_commit(prefix).await.expect("lookup") {
                CommitMatch::One(record) => assert_eq!(record.id, rerun.id, "{prefix}"),
                other => panic!("{prefix}: {other:?}"),
            }
        }
        for prefix in ["aaaaaa", "zzzzzzz", "aaaaaaa'", "bbbbbbb"] {
            assert_eq!(
                store.job_by_commit(prefix).await.expect("lookup"),
                CommitMatch::None,
                "{prefix}"
            );
        }
        // Twelve commits sharing a prefix: eleven are listed.
        for i in 0..12u64 {
            let commit_id = CommitId::parse(&format!("fff{i:037x}")).expect("commit");
            store
                .job_queued(&job("/r", "main", commit_id))
                .await
                .expect("queued");
        }
        match store.job_by_commit("fff0000").await.expect("lookup") {
            CommitMatch::Several(commits) => {
                assert_eq!(commits.len(), store::AMBIGUOUS_LISTED + 1);
                assert!(commits.windows(2).all(|w| w[0] < w[1]));
                assert!(commits.iter().all(|c| c.as_str().starts_with("fff0000")));
            }
            other => panic!("{other:?}"),
        }
    }
);

conformance!(
    async fn logs_never_grow_past_the_output_cap(backend) {
        let cap = 1000;
        let store = backend
            .open_with(StoreSettings {
                output_cap: cap,
                ..Default::default()
            })
            .await;
        let live = job("/r", "main", commit('a'));
        store
            .job_started(&live, &runner("r1"), 10)
            .await
            .expect("started");
        let piece = "é".repeat(300); // 600 bytes
        assert!(store
            .append_live_output(&live.id, 0, &piece)
            .await
            .expect("append"));
        // Cut to fit, on a character boundary; what follows is skipped.
        assert!(store
            .append_live_output(&live.id, 600, &piece)
            .await
            .expect("append"));
        let kept = store.log(&live.id).await.expect("log").expect("some");
        assert_eq!(kept.len(), 1000);
        assert!(!store
            .append_live_output(&live.id, 1200, "more")
            .await
            .expect("append"));
        assert_eq!(
            store.log(&live.id).await.expect("log").expect("some").len(),
            1000
        );

        let big = job("/r", "main", commit('b'));
        let mut finished = result(&big, Outcome::Failed, "r1");
        finished.output = "x".repeat(5000);
        let record = store
            .job_finished(&finished)
            .await
            .expect("result")
            .into_record();
        assert!(record.truncated);
        let log = store.log(&big.id).await.expect("log").expect("some");
        assert!(log.len() <= cap, "{}", log.len());
        assert!(log.starts_with("xxxx") && log.contains("cap of 1000 bytes"), "{log}");

        let small = job("/r", "main", commit('c'));
        let record = store
            .job_finished(&result(&small, Outcome::Passed, "r1"))
            .await
            .expect("result")
            .into_record();
        assert!(!record.truncated);
    }
);

conformance!(
    async fn runners_are_upserted_by_heartbeats_and_count_their_outcomes(backend) {
        let store = backend.open().await;
        let job = job("/r", "main", commit('a'));
        store
            .runner_seen(&runner("r1"), None, 5)
            .await
            .expect("heartbeat");
        store
            .job_started(&job, &runner("r1"), 10)
            .await
            .expect("started");
        store
            .runner_seen(&runner("r1"), Some(&job.id), 20)
            .await
            .expect("heartbeat");
        let runners = store.runners().await.expect("runners");
        assert_eq!(runners.len(), 1);
        assert_eq!(runners[0].current_job.as_ref(), Some(&job.id));
        assert_eq!((runners[0].last_seen_ms, runners[0].jobs_done), (20, 0));
        store
            .job_finished(&result(&job, Outcome::Passed, "r1"))
            .await
            .expect("result");
        store
            .runner_seen(&runner("r2"), None, 30)
            .await
            .expect("heartbeat");
        let runners = store.runners().await.expect("runners");
        assert_eq!(
            runners
                .iter()
                .map(|r| (r.id.as_str(), r.current_job.is_none(), r.jobs_done))
                .collect::<Vec<_>>(),
            vec![("r1", true, 1), ("r2", true, 0)]
        );
    }
);

conformance!(
    async fn totals_count_every_status_duplicates_dead_letters_and_histograms(backend) {
        let store = backend.open().await;
        let buckets = [0.25, 0.5, 1.0];
        let empty = store.totals(&buckets).await.expect("totals");
        assert_eq!(empty.jobs.len(), JobStatus::ALL.len());
        assert!(empty.jobs.iter().all(|(_, n)| *n == 0));
        assert_eq!(empty.duration.buckets, vec![(0.25, 0), (0.5, 0), (1.0, 0)]);

        let fast = job("/r", "main", commit('a'));
        store.job_queued(&fast).await.expect("queued");
        let mut passed = result(&fast, Outcome::Passed, "r1");
        passed.started_at_ms = fast.enqueued_at_ms + 100;
        passed.finished_at_ms = fast.enqueued_at_ms + 400;
        passed.duration_ms = 300;
        store.job_finished(&passed).await.expect("result");
        store.job_finished(&passed).await.expect("duplicate");
        store.job_finished(&passed).await.expect("duplicate");
        let slow = job("/r", "main", commit('b'));
        let mut failed = result(&slow, Outcome::Failed, "r1");
        failed.duration_ms = 800;
        store.job_finished(&failed).await.expect("result");
        store
            .job_queued(&job("/r", "main", commit('c')))
            .await
            .expect("queued");
        store
            .job_started(&job("/r", "main", commit('d')), &runner("r2"), 1)
            .await
            .expect("started");
        store
            .job_dead(&job("/r", "main", commit('e')), "dead-lettered", 9)
            .await
            .expect("dead");

        let totals = store.totals(&buckets).await.expect("totals");
        let counts: Vec<(JobStatus, i64)> = totals.jobs.clone();
        assert_eq!(
            counts,
            vec![
                (JobStatus::Waiting, 0),
                (JobStatus::Queued, 1),
                (JobStatus::Running, 1),
                (JobStatus::Passed, 1),
                (JobStatus::Failed, 1),
                (JobStatus::Error, 1),
                (JobStatus::Timeout, 0),
                (JobStatus::Skipped, 0),
                (JobStatus::Canceled, 0),
            ]
        );
        assert_eq!(totals.count(JobStatus::Timeout), 0);
        // The gauges' one-status counts agree with the totals.
        for (status, n) in counts {
            assert_eq!(store.count(status).await.expect("count"), n, "{status}");
        }
        assert_eq!(totals.duplicates, 2);
        assert_eq!(totals.dead_lettered, 1);
        assert_eq!(totals.duration.count, 2);
        assert_eq!(totals.duration.buckets, vec![(0.25, 0), (0.5, 1), (1.0, 2)]);
        assert!((totals.duration.sum_seconds - 1.1).abs() < 1e-9);
        // Only `fast` started after it was enqueued (`slow`'s result says
        // it started at 1 ms after the epoch, `d` at 1 ms too).
        assert_eq!(totals.queue_wait.count, 1);
        assert_eq!(totals.queue_wait.buckets, vec![(0.25, 1), (0.5, 1), (1.0, 1)]);
        assert!((totals.queue_wait.sum_seconds - 0.1).abs() < 1e-9);
    }
);

conformance!(
    async fn migrations_apply_once_and_check_changes_nothing(backend) {
        // Before anything: everything pending, and --check creates nothing.
        let check = store::migrate(&backend.url, true).await.expect("check");
        assert!(check.applied.is_empty(), "{check}");
        assert_eq!(check.pending.len() as i64, check.known);
        assert!(check.to_string().contains("pending"), "{check}");
        if let Some(dir) = &backend.dir {
            assert!(!dir.path().join("warren.db").exists());
        }
        let check = store::migrate(&backend.url, true).await.expect("check");
        assert!(check.applied.is_empty(), "--check changed the store: {check}");

        let applied = store::migrate(&backend.url, false).await.expect("migrate");
        assert_eq!(applied.pending.len() as i64, applied.known);
        let again = store::migrate(&backend.url, false).await.expect("migrate");
        assert!(again.pending.is_empty(), "{again}");
        assert_eq!(again.applied.len() as i64, again.known);
        assert_eq!(again.applied[0].name, "baseline");
        assert!(again.to_string().contains("nothing pending"), "{again}");

        // Opening a migrated store keeps its jobs.
        let store = backend.open().await;
        let job = job("/r", "main", commit('a'));
        store.job_queued(&job).await.expect("queued");
        store.close().await;
        let store = backend.open().await;
        assert!(store.job(&job.id).await.expect("job").is_some());
        assert!(store.writable().await);
        let check = store::migrate(&backend.url, true).await.expect("check");
        assert!(check.pending.is_empty(), "{check}");
    }
);

conformance!(
    async fn a_store_migrated_by_a_newer_warren_is_refused_in_words(backend) {
        let store = backend.open().await;
        store.close().await;
        drop(store);
        let newer = known_version(&backend).await + 3;
        execute(
            &backend,
            "INSERT INTO warren_migrations (version, name, checksum, applied_at_ms) \
             SELECT MAX(version) + 3, 'from_the_future', 'x', 0 FROM warren_migrations",
        )
        .await;
        let expected = format!(
            "the store's schema is at version {newer} but this warren knows up to {}: upgrade warren",
            newer - 3
        );
        let err = store::open(&backend.url, StoreSettings::default())
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains(&expected), "{err}");
        let err = store::migrate(&backend.url, true).await.expect_err("check");
        assert!(err.to_string().contains(&expected), "{err}");
        let err = store::migrate(&backend.url, false)
            .await
            .expect_err("migrate");
        assert!(err.to_string().contains(&expected), "{err}");
    }
);

conformance!(
    async fn a_migration_whose_text_changed_since_it_was_applied_is_refused(backend) {
        backend.open().await.close().await;
        execute(
            &backend,
            "UPDATE warren_migrations SET checksum = 'edited' WHERE version = 1",
        )
        .await;
        let err = store::open(&backend.url, StoreSettings::default())
            .await
            .err()
            .expect("refused");
        assert!(matches!(err, StoreError::MigrationChanged { version: 1, .. }), "{err}");
    }
);

conformance!(
    async fn two_stores_on_one_database_record_each_outcome_once(backend) {
        // Two dispatchers consuming the same results: every result is
        // delivered to both, concurrently.
        let settings = StoreSettings {
            max_connections: 6,
            ..Default::default()
        };
        let stores = [
            backend.open_with(settings.clone()).await,
            backend.open_with(settings).await,
        ];
        const JOBS: u64 = 12;
        const RESULTS: usize = 4;
        let jobs: Vec<Job> = (0..JOBS)
            .map(|i| job("/r", "main", numbered_commit(i)))
            .collect();
        // Known and running, as results find them: the race is on the
        // outcome, not on recording the job.
        for job in &jobs {
            stores[0].job_queued(job).await.expect("queued");
            stores[1]
                .job_started(job, &runner("r0"), 1)
                .await
                .expect("started");
        }
        let start = Arc::new(tokio::sync::Barrier::new(
            JOBS as usize * RESULTS * stores.len(),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for job in &jobs {
            for n in 0..RESULTS {
                let outcome = Outcome::ALL[n % Outcome::ALL.len()];
                let result = result(job, outcome, &format!("r{n}"));
                for store in &stores {
                    let (store, result, start) = (store.clone(), result.clone(), start.clone());
                    tasks.spawn(async move {
                        start.wait().await;
                        let recorded = store.job_finished(&result).await.expect("result");
                        (result, recorded)
                    });
                }
            }
        }
        let mut new = std::collections::HashMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (result, recorded) = joined.expect("task");
            if let Recorded::New { record, .. } = recorded {
                let earlier = new.insert(record.id.clone(), (result, record));
                assert!(earlier.is_none(), "two outcomes recorded for one job");
            }
        }
        assert_eq!(new.len(), jobs.len(), "every job has its outcome");
        for job in &jobs {
            let (result, at_recording) = &new[&job.id];
            let record = stores[1].job(&job.id).await.expect("job").expect("exists");
            assert_eq!(record.status, JobStatus::from(result.outcome));
            assert_eq!(record.status, at_recording.status);
            assert_eq!(record.runner.as_ref(), Some(&result.runner.id));
            assert_eq!(record.duplicates as usize, RESULTS * 2 - 1);
            assert_eq!(
                stores[0].log(&job.id).await.expect("log").as_deref(),
                Some(result.output.as_str())
            );
        }
        let totals = stores[0].totals(&[]).await.expect("totals");
        assert_eq!(totals.duplicates as usize, jobs.len() * (RESULTS * 2 - 1));
    }
);

conformance!(
    async fn the_store_reports_whether_it_can_write(backend) {
        let store = backend.open().await;
        assert!(store.writable().await);
        store.close().await;
        // A closed pool cannot write, and says so rather than hanging.
        assert!(!store.writable().await);
    }
);

conformance!(
    async fn dispatchers_opening_a_new_store_together_migrate_it_once(backend) {
        let opening = (0..4).map(|_| store::open(&backend.url, StoreSettings::default()));
        let stores = futures::future::join_all(opening).await;
        for store in stores {
            let store = store.unwrap_or_else(|err| panic!("{err}"));
            store.close().await;
        }
        let check = store::migrate(&backend.url, true).await.expect("check");
        assert!(check.pending.is_empty(), "{check}");
        assert_eq!(check.applied.len() as i64, check.known, "{check}");
    }
);

conformance!(
    async fn a_row_this_warren_cannot_read_is_an_error_that_says_what(backend) {
        let store = backend.open().await;
        let job = job("/r", "main", commit('a'));
        store.job_queued(&job).await.expect("queued");
        execute(&backend, "UPDATE jobs SET status = 'exploded'").await;
        let err = store.job(&job.id).await.expect_err("unreadable");
        let text = err.to_string();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{text}");
        assert!(text.contains("exploded"), "{text}");
        let err = store.totals(&[]).await.expect_err("unreadable");
        assert!(err.to_string().contains("exploded"), "{err}");
    }
);

/// The newest migration this build knows, as `--check` reports it.
async fn known_version(backend: &Backend) -> i64 {
    store::migrate(&backend.url, true)
        .await
        .expect("check")
        .known
}

/// Runs a statement of the test's own on the backend's database (no
/// values in it come from outside the test).
async fn execute(backend: &Backend, sql: &str) {
    if let Some(dir) = &backend.dir {
        let options =
            sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("warren.db"));
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .expect("sqlite");
        conn.execute(sqlx::raw_sql(sql)).await.expect(sql);
        let _ = conn.close().await;
    } else {
        let database = backend.database.as_deref().expect("a PostgreSQL backend");
        let mut conn = sqlx::PgConnection::connect(database)
            .await
            .expect("postgres");
        conn.execute(sqlx::raw_sql(sql)).await.expect(sql);
        let _ = conn.close().await;
    }
}

/// The store the dispatcher's own SQLite code made before migrations and
/// before logs lived in the store: its schema, word for word.
const SCHEMA_BEFORE_MIGRATIONS: &str = "
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
";

#[tokio::test]
async fn a_sqlite_store_from_before_migrations_keeps_its_jobs_and_imports_its_log_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("warren.db");
    let passed = job("/r", "main", commit('a'));
    let dead = job("/r", "main", commit('b'));
    let running = job("/r", "main", commit('c'));
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&db)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let mut old = sqlx::SqliteConnection::connect_with(&options)
            .await
            .expect("old store");
        sqlx::raw_sql(SCHEMA_BEFORE_MIGRATIONS)
            .execute(&mut old)
            .await
            .expect("old schema");
        for (job, status, reason) in [
            (&passed, "passed", None),
            (
                &dead,
                "error",
                Some("dead-lettered after 5 deliveries (--delivery-limit 5)"),
            ),
            (&running, "running", None),
        ] {
            sqlx::query(
                "INSERT INTO jobs (id, repo, branch, commit_id, status, attempts, reason, enqueued_at_ms)
                 VALUES ($1, $2, $3, $4, $5, 1, $6, 1)",
            )
            .bind(job.id.as_str())
            .bind(job.repo.as_str())
            .bind(job.branch.as_str())
            .bind(job.commit.as_str())
            .bind(status)
            .bind(reason)
            .execute(&mut old)
            .await
            .expect("old job");
        }
        let _ = old.close().await;
    }
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).expect("logs");
    std::fs::write(logs.join(format!("{}.log", passed.id)), "the old log\n").expect("log");
    std::fs::write(logs.join(format!("{}.log", running.id)), "live so far\n").expect("log");
    std::fs::write(logs.join("0123456789abcdef.log"), "of no job").expect("log");
    std::fs::write(logs.join("notes.txt"), "not a log").expect("file");

    let url = StoreUrl::sqlite(&db);
    let check = store::migrate(&url, true).await.expect("check");
    assert!(check.applied.is_empty(), "{check}");
    assert_eq!(check.log_files, 3, "{check}");
    assert!(logs.is_dir(), "--check imported the logs");

    let store = store::open(&url, StoreSettings::default())
        .await
        .expect("open");
    assert_eq!(store.jobs(&page(10)).await.expect("jobs").len(), 3);
    let record = store.job(&passed.id).await.expect("job").expect("kept");
    assert_eq!(record.status, JobStatus::Passed);
    assert_eq!(
        store.log(&passed.id).await.expect("log").as_deref(),
        Some("the old log\n")
    );
    assert!(!logs.exists());
    assert!(dir.path().join("logs.imported").is_dir());
    // The dead letter of then is counted as one now.
    assert_eq!(store.totals(&[]).await.expect("totals").dead_lettered, 1);
    // A job that was running goes on appending where its file ended.
    assert!(store
        .append_live_output(&running.id, 12, "and more\n")
        .await
        .expect("append"));
    assert_eq!(
        store.log(&running.id).await.expect("log").as_deref(),
        Some("live so far\nand more\n")
    );
    store.close().await;
    let check = store::migrate(&url, true).await.expect("check");
    assert!(check.pending.is_empty(), "{check}");
    assert_eq!(check.log_files, 0, "{check}");
}

/// A listener that accepts connections and never says a word.
async fn silent_server() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (port, task)
}

#[tokio::test]
async fn a_server_that_accepts_and_never_answers_fails_the_open_within_the_connect_timeout() {
    let (port, server) = silent_server().await;
    let url = StoreUrl::parse(&format!(
        "postgres://warren:quiet-secret-42@127.0.0.1:{port}/warren"
    ))
    .expect("url");
    let started = Instant::now();
    let opening = store::open(
        &url,
        StoreSettings {
            connect_timeout: Duration::from_millis(500),
            ..Default::default()
        },
    );
    let err = tokio::time::timeout(Duration::from_secs(10), opening)
        .await
        .expect("the open hung")
        .err()
        .expect("no server, no store");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, StoreError::TimedOut { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("did not answer within 500 ms"), "{text}");
    assert!(text.contains("postgres://warren:***@127.0.0.1"), "{text}");
    assert!(!text.contains("quiet-secret-42"), "{text}");
    server.abort();
}

#[tokio::test]
async fn the_password_never_appears_in_an_error_even_when_the_server_repeats_it() {
    // Trust authentication takes any password, so the server answers the
    // next thing: the database does not exist, named in its message. Name
    // the database after the password and the server's text carries it.
    let secret = "pw4warren7f3c";
    let mut url = url::Url::parse(&postgres_server()).expect("server URL");
    url.set_password(Some(secret)).expect("password");
    url.set_path(secret);
    // Without the protection: the driver's own message has the secret.
    let raw = sqlx::PgConnection::connect(url.as_str())
        .await
        .expect_err("no such database")
        .to_string();
    assert!(
        raw.contains(secret),
        "the probe no longer carries the secret: {raw}"
    );
    // Through the store: never.
    let store_url = StoreUrl::parse(url.as_str()).expect("url");
    let err = store::open(&store_url, StoreSettings::default())
        .await
        .err()
        .expect("no such database");
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains(secret), "{text}");
        assert!(text.contains("***"), "{text}");
    }
    let err = store::migrate(&store_url, true).await.expect_err("check");
    assert!(!format!("{err} {err:?}").contains(secret), "{err}");
    // A port where nothing listens: refused, quickly, without the secret.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let refused =
        StoreUrl::parse(&format!("postgres://u:{secret}@127.0.0.1:{closed}/d")).expect("url");
    let err = store::open(&refused, StoreSettings::default())
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, StoreError::Connect { .. }), "{err}");
    assert!(
        !format!("{err} {err:?} {refused:?} {refused}").contains(secret),
        "{err}"
    );
}

conformance!(
    async fn the_registry_adds_replaces_lists_and_removes_repositories(backend) {
        use model::{ForgeKind, Repo, RepoName, StatusTarget};
        let store = backend.open().await;
        assert!(store.repos().await.expect("repos").is_empty());
        let app = Repo {
            name: RepoName::parse("app").expect("name"),
            url: repo("https://example.org/app.git"),
            branches: vec!["main".into(), "release/*".into()],
            poll_secs: Some(30.0),
            webhook_secret_env: Some("APP_SECRET".into()),
            status: Some(StatusTarget {
                kind: ForgeKind::GitLab,
                api: "https://gitlab.example.org/api/v4".into(),
                repo: "42".into(),
                token_env: "GITLAB_TOKEN".into(),
            }),
        };
        let lib = Repo {
            name: RepoName::parse("lib").expect("name"),
            url: repo("/srv/git/lib"),
            branches: Vec::new(),
            poll_secs: None,
            webhook_secret_env: None,
            status: None,
        };
        assert!(store.put_repo(&lib).await.expect("put"), "new");
        assert!(store.put_repo(&app).await.expect("put"), "new");
        assert_eq!(store.repos().await.expect("repos"), vec![app.clone(), lib.clone()]);
        // The same name again replaces the entry.
        let mut moved = app.clone();
        moved.url = repo("https://example.org/moved.git");
        moved.status = None;
        assert!(!store.put_repo(&moved).await.expect("put"), "replaced");
        assert_eq!(store.repo(&app.name).await.expect("repo"), Some(moved));
        assert!(store.remove_repo(&app.name).await.expect("remove"));
        assert!(!store.remove_repo(&app.name).await.expect("remove"), "gone");
        assert_eq!(store.repos().await.expect("repos"), vec![lib]);
    }
);

conformance!(
    async fn jobs_are_listed_by_repository(backend) {
        let store = backend.open().await;
        for (n, path) in ["/a", "/b", "/a"].iter().enumerate() {
            store
                .job_queued(&job(path, "main", numbered_commit(n as u64)))
                .await
                .expect("queued");
        }
        let of_a = store
            .jobs(&JobQuery {
                repo: Some(repo("/a")),
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("jobs");
        assert_eq!(of_a.len(), 2);
        assert!(of_a.iter().all(|j| j.repo == repo("/a")));
    }
);

conformance!(
    async fn each_runner_and_each_job_says_how_it_was_sandboxed(backend) {
        use model::Sandbox;
        let store = backend.open().await;
        let job = job("/r", "main", commit('c'));
        store.job_queued(&job).await.expect("queued");
        assert_eq!(store.job(&job.id).await.expect("job").expect("known").sandbox, None);
        let mut sandboxed = runner("r1");
        sandboxed.sandbox = Sandbox::Bwrap;
        let started = store.job_started(&job, &sandboxed, 10).await.expect("started");
        assert_eq!(started.record.sandbox, Some(Sandbox::Bwrap));
        // The result of an execution on a runner without one says so.
        let recorded = store
            .job_finished(&result(&job, Outcome::Passed, "r2"))
            .await
            .expect("result");
        assert_eq!(recorded.record().sandbox, Some(Sandbox::Off));
        let runners = store.runners().await.expect("runners");
        let by_id = |id: &str| runners.iter().find(|r| r.id.as_str() == id).map(|r| r.sandbox);
        assert_eq!(by_id("r1"), Some(Sandbox::Bwrap));
        store.runner_seen(&runner("r1"), None, 20).await.expect("seen");
        let runners = store.runners().await.expect("runners");
        assert_eq!(
            runners.iter().find(|r| r.id.as_str() == "r1").map(|r| r.sandbox),
            Some(Sandbox::Off),
            "the runner's latest word"
        );
    }
);

fn spec(name: &str, needs: &[&str], queue: &str, allow_failure: bool) -> model::JobSpec {
    model::JobSpec {
        name: name.into(),
        run: format!("echo {name}"),
        env: Default::default(),
        matrix: Default::default(),
        timeout_ms: None,
        queue: queue.parse().expect("queue"),
        needs: needs.iter().map(|n| n.to_string()).collect(),
        allow_failure,
        split: None,
    }
}

fn planned(result: &Recorded, name: &str) -> model::JobRecord {
    let Recorded::New { pipeline, .. } = result else {
        panic!("not new: {result:?}");
    };
    pipeline
        .iter()
        .find(|job| job.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("no job {name} in {pipeline:?}"))
}

conformance!(
    async fn a_plan_records_its_jobs_releases_them_through_the_outbox_and_skips_after_a_failure(backend) {
        let store = backend.open().await;
        let first = job("/r", "main", commit('a'));
        store.job_queued(&first).await.expect("queued");
        let mut planning = result(&first, Outcome::Passed, "r1");
        planning.plan = Some(model::Plan::new(vec![
                spec("lint", &[], "default", false),
                spec("build", &[], "arm", false),
                spec("test", &["lint", "build"], "default", false),
                spec("docs", &["test"], "default", true),
                spec("deploy", &["docs"], "default", false),
                spec("bench", &["lint"], "gpu", false),
            ]));
        let recorded = store.job_finished(&planning).await.expect("plan");
        assert_eq!(recorded.record().name, "plan");
        assert_eq!(recorded.record().status, JobStatus::Passed);
        let lint = planned(&recorded, "lint");
        let build = planned(&recorded, "build");
        assert_eq!(lint.status, JobStatus::Queued);
        assert_eq!(build.status, JobStatus::Queued);
        assert_eq!(build.queue.as_str(), "arm");
        assert_eq!(planned(&recorded, "test").status, JobStatus::Waiting);
        assert_eq!(planned(&recorded, "test").needs, vec!["lint", "build"]);
        assert_eq!(lint.pipeline, first.id);

        // The released jobs are in the outbox until marked sent, as the
        // job messages the runners will take.
        let outbox = store.outbox_pending(100).await.expect("outbox");
        let mut ids: Vec<_> = outbox.iter().map(|o| o.job.clone()).collect();
        ids.sort();
        let mut expected = vec![lint.id.clone(), build.id.clone()];
        expected.sort();
        assert_eq!(ids, expected);
        for out in &outbox {
            let job: Job = serde_json::from_str(&out.body).expect("a job message");
            use model::Message;
            job.validate().expect("valid");
            assert_eq!(job.id, out.job);
            assert_eq!(job.pipeline.as_ref(), Some(&first.id));
            store.outbox_sent(&out.job, 5).await.expect("sent");
        }
        assert!(store.outbox_pending(100).await.expect("outbox").is_empty());
        assert_eq!(
            store
                .queued_ahead(&"default".parse().expect("queue"), lint.seq + 1000)
                .await
                .expect("ahead"),
            1
        );

        // lint passes: test still waits for build; bench is released.
        let lint_job = lint.to_job();
        let after_lint = store
            .job_finished(&result(&lint_job, Outcome::Passed, "r1"))
            .await
            .expect("lint");
        assert_eq!(planned(&after_lint, "bench").status, JobStatus::Queued);
        let Recorded::New { pipeline, .. } = &after_lint else { unreachable!() };
        assert_eq!(pipeline.len(), 1, "{pipeline:?}");
        let bench = planned(&after_lint, "bench");
        // build passes: test is released.
        let after_build = store
            .job_finished(&result(&build.to_job(), Outcome::Passed, "r2"))
            .await
            .expect("build");
        let test = planned(&after_build, "test");
        assert_eq!(test.status, JobStatus::Queued);
        // test fails: docs (allowed to fail) and deploy are skipped, and
        // say why.
        let after_test = store
            .job_finished(&result(&test.to_job(), Outcome::Failed, "r2"))
            .await
            .expect("test");
        let docs = planned(&after_test, "docs");
        let deploy = planned(&after_test, "deploy");
        assert_eq!(docs.status, JobStatus::Skipped);
        assert_eq!(deploy.status, JobStatus::Skipped);
        assert_eq!(docs.reason.as_deref(), Some("skipped: test did not pass"));
        assert_eq!(deploy.reason.as_deref(), Some("skipped: docs did not pass"));
        let log = store.log(&deploy.id).await.expect("log").expect("a log");
        assert!(log.contains("skipped"), "{log}");
        // A job that is dead-lettered advances its pipeline too.
        let dead = store
            .job_dead(&bench.to_job(), "poison", 9)
            .await
            .expect("dead");
        assert!(dead.is_new());

        let all = store.pipeline(&first.id).await.expect("pipeline");
        assert_eq!(all.len(), 7);
        assert!(all.iter().all(|job| job.status.is_terminal()), "{all:?}");
        let statuses: Vec<_> = all.iter().map(|j| (j.name.as_str(), j.status)).collect();
        assert!(statuses.contains(&("bench", JobStatus::Error)), "{statuses:?}");
        // A second copy of the plan's result changes nothing.
        let again = store.job_finished(&planning).await.expect("again");
        assert!(!again.is_new());
        assert_eq!(store.pipeline(&first.id).await.expect("pipeline").len(), 7);
    }
);

conformance!(
    async fn two_stores_finishing_the_needs_of_a_job_at_once_release_it_once(backend) {
        // Two dispatchers record the two needs of one job at the same
        // moment: whichever commits second must see the first and release
        // the job; it is released (and put in the outbox) exactly once.
        let stores = [backend.open().await, backend.open().await];
        for round in 0..8u64 {
            let first = job("/r", "main", numbered_commit(round));
            let mut planning = result(&first, Outcome::Passed, "r1");
            planning.plan = Some(model::Plan::new(vec![
                    spec("a", &[], "default", false),
                    spec("b", &[], "default", false),
                    spec("c", &["a", "b"], "default", false),
                ]));
            let recorded = stores[0].job_finished(&planning).await.expect("plan");
            let a = planned(&recorded, "a").to_job();
            let b = planned(&recorded, "b").to_job();
            let (result_a, result_b) = (
                result(&a, Outcome::Passed, "r1"),
                result(&b, Outcome::Passed, "r2"),
            );
            let (ra, rb) = tokio::join!(
                stores[0].job_finished(&result_a),
                stores[1].job_finished(&result_b),
            );
            let released: usize = [ra.expect("a"), rb.expect("b")]
                .iter()
                .map(|r| match r {
                    Recorded::New { pipeline, .. } => pipeline.iter().filter(|j| j.name == "c").count(),
                    Recorded::Duplicate(_) => 0,
                })
                .sum();
            assert_eq!(released, 1, "round {round}");
            let c = stores[1]
                .pipeline(&first.id)
                .await
                .expect("pipeline")
                .into_iter()
                .find(|j| j.name == "c")
                .expect("c");
            assert_eq!(c.status, JobStatus::Queued);
        }
        let outbox = stores[0].outbox_pending(1000).await.expect("outbox");
        assert_eq!(outbox.len(), 8 * 3);
    }
);

conformance!(
    async fn a_batch_holding_every_need_of_a_job_releases_it_once(backend) {
        // The outcomes of a batch are written together, then each result's
        // pipeline is advanced in order: the job needing both is released
        // by one of them, once, and a failed need in the same batch skips
        // its dependent.
        let store = backend.open().await;
        let first = job("/r", "main", commit('a'));
        let mut planning = result(&first, Outcome::Passed, "r1");
        planning.plan = Some(model::Plan::new(vec![
                spec("a", &[], "default", false),
                spec("b", &[], "default", false),
                spec("c", &["a", "b"], "default", false),
                spec("d", &[], "default", false),
                spec("e", &["d"], "default", false),
            ]));
        let recorded = store.job_finished(&planning).await.expect("plan");
        let [a, b, d] = ["a", "b", "d"].map(|name| planned(&recorded, name).to_job());
        let recorded = store
            .jobs_finished(&[
                result(&a, Outcome::Passed, "r1"),
                result(&d, Outcome::Failed, "r2"),
                result(&b, Outcome::Passed, "r2"),
                result(&a, Outcome::Passed, "r3"),
            ])
            .await
            .expect("batch");
        let changed = |name: &str| -> usize {
            recorded
                .iter()
                .map(|r| match r {
                    Recorded::New { pipeline, .. } => pipeline.iter().filter(|j| j.name == name).count(),
                    Recorded::Duplicate(_) => 0,
                })
                .sum()
        };
        assert_eq!(changed("c"), 1, "{recorded:?}");
        assert_eq!(changed("e"), 1, "{recorded:?}");
        assert!(!recorded[3].is_new(), "the second result of a: {recorded:?}");
        assert_eq!(
            statuses(store.as_ref(), &first).await,
            vec![
                ("plan".to_string(), JobStatus::Passed),
                ("a".to_string(), JobStatus::Passed),
                ("b".to_string(), JobStatus::Passed),
                ("c".to_string(), JobStatus::Queued),
                ("d".to_string(), JobStatus::Failed),
                ("e".to_string(), JobStatus::Skipped),
            ]
        );
        let outbox = store.outbox_pending(100).await.expect("outbox");
        assert_eq!(outbox.len(), 4, "a, b, d, then c: {outbox:?}");
    }
);

/// The pipeline of `first` as (name, status), oldest first.
async fn statuses(store: &dyn store::Store, first: &Job) -> Vec<(String, JobStatus)> {
    store
        .pipeline(&first.id)
        .await
        .expect("pipeline")
        .into_iter()
        .map(|job| (job.name, job.status))
        .collect()
}

conformance!(
    async fn canceling_stops_queued_running_and_waiting_jobs_skips_dependents_and_drops_unsent_rows(backend) {
        let store = backend.open().await;
        let first = job("/r", "main", commit('c'));
        let mut planning = result(&first, Outcome::Passed, "r1");
        planning.plan = Some(model::Plan::new(vec![
            spec("a", &[], "default", false),
            spec("b", &[], "default", false),
            spec("c", &["a"], "default", false),
            spec("d", &["c"], "default", false),
            spec("e", &["b"], "default", false),
        ]));
        let recorded = store.job_finished(&planning).await.expect("plan");
        let (a, b) = (planned(&recorded, "a"), planned(&recorded, "b"));
        assert_eq!(store.outbox_pending(100).await.expect("outbox").len(), 2);
        // a runs; b is released but its outbox row is not sent yet.
        store.outbox_sent(&a.id, 5).await.expect("sent");
        store
            .job_started(&a.to_job(), &runner("r1"), 10)
            .await
            .expect("started");

        // Canceling a (running): it is canceled, c and d (waiting on it)
        // are skipped; b and e are untouched.
        let changed = store
            .jobs_canceled(std::slice::from_ref(&a.id), "canceled by hand", 20)
            .await
            .expect("cancel");
        let names: Vec<(&str, JobStatus)> =
            changed.iter().map(|j| (j.name.as_str(), j.status)).collect();
        assert_eq!(
            names,
            vec![
                ("a", JobStatus::Canceled),
                ("c", JobStatus::Skipped),
                ("d", JobStatus::Skipped),
            ]
        );
        let canceled = &changed[0];
        assert_eq!(canceled.reason.as_deref(), Some("canceled by hand"));
        assert_eq!(canceled.finished_at_ms, Some(20));
        assert_eq!(canceled.runner, Some(runner("r1").id), "the runner is kept");
        assert_eq!(changed[1].reason.as_deref(), Some("skipped: a did not pass"));
        let log = store.log(&a.id).await.expect("log").expect("a log");
        assert!(log.contains("canceled by hand"), "{log}");
        // Its result, when the runner finishes anyway, is a duplicate.
        let late = store
            .job_finished(&result(&a.to_job(), Outcome::Passed, "r1"))
            .await
            .expect("late");
        assert!(!late.is_new());
        assert_eq!(late.record().status, JobStatus::Canceled);
        // A runner that takes a canceled job is a duplicate execution.
        let started = store
            .job_started(&a.to_job(), &runner("r2"), 30)
            .await
            .expect("started");
        assert!(started.is_duplicate_execution());

        // Canceling b (queued, not yet published) and e (waiting): b's
        // outbox row is dropped, e is canceled rather than skipped; an
        // ended job (a) is left alone.
        let e = store
            .pipeline(&first.id)
            .await
            .expect("pipeline")
            .into_iter()
            .find(|j| j.name == "e")
            .expect("e");
        let changed = store
            .jobs_canceled(&[e.id.clone(), b.id.clone(), a.id.clone()], "stop", 40)
            .await
            .expect("cancel");
        let mut names: Vec<(&str, JobStatus)> =
            changed.iter().map(|j| (j.name.as_str(), j.status)).collect();
        names.sort();
        assert_eq!(
            names,
            vec![("b", JobStatus::Canceled), ("e", JobStatus::Canceled)]
        );
        assert!(store.outbox_pending(100).await.expect("outbox").is_empty());
        // Nothing left to cancel: nothing changes.
        let again = store
            .jobs_canceled(std::slice::from_ref(&b.id), "stop", 50)
            .await
            .expect("cancel");
        assert!(again.is_empty());

        let all = store.pipeline(&first.id).await.expect("pipeline");
        assert!(all.iter().all(|j| j.status.is_terminal()), "{all:?}");
        assert_eq!(
            model::pipeline::verdict_of(&first.id, &all),
            Some(model::Verdict::Canceled)
        );
        // A planning job canceled before it planned: its plan never lands.
        let other = job("/r", "main", commit('d'));
        store.job_queued(&other).await.expect("queued");
        let changed = store
            .jobs_canceled(std::slice::from_ref(&other.id), "stop", 60)
            .await
            .expect("cancel");
        assert_eq!(changed.len(), 1);
        let mut late_plan = result(&other, Outcome::Passed, "r1");
        late_plan.plan = Some(model::Plan::new(vec![spec("a", &[], "default", false)]));
        assert!(!store.job_finished(&late_plan).await.expect("plan").is_new());
        assert_eq!(store.pipeline(&other.id).await.expect("pipeline").len(), 1);
    }
);

conformance!(
    async fn rerunning_failed_jobs_copies_them_and_their_skipped_dependents_and_releases_what_can_run(backend) {
        let store = backend.open().await;
        let first = job("/r", "main", commit('f'));
        let mut planning = result(&first, Outcome::Passed, "r1");
        planning.plan = Some(model::Plan::new(vec![
            spec("lint", &[], "default", false),
            spec("test", &[], "default", false),
            spec("build", &["lint", "test"], "default", false),
            spec("docs", &["build"], "default", false),
        ]));
        let recorded = store.job_finished(&planning).await.expect("plan");
        let (lint, test) = (planned(&recorded, "lint"), planned(&recorded, "test"));
        store
            .job_finished(&result(&lint.to_job(), Outcome::Passed, "r1"))
            .await
            .expect("lint");
        store
            .job_finished(&result(&test.to_job(), Outcome::Failed, "r1"))
            .await
            .expect("test");
        let all = store.pipeline(&first.id).await.expect("pipeline");
        assert_eq!(
            model::pipeline::verdict_of(&first.id, &all),
            Some(model::Verdict::Failed)
        );
        for out in store.outbox_pending(100).await.expect("outbox") {
            store.outbox_sent(&out.job, 5).await.expect("sent");
        }

        // test (failed), build and docs (skipped) get new copies; lint
        // (passed) does not. test's copy needs nothing: released; the
        // others wait for it.
        let copies = store
            .rerun_failed(&first.id, "rerun-1")
            .await
            .expect("rerun");
        let mut names: Vec<(&str, JobStatus)> =
            copies.iter().map(|j| (j.name.as_str(), j.status)).collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                ("build", JobStatus::Waiting),
                ("docs", JobStatus::Waiting),
                ("test", JobStatus::Queued),
            ]
        );
        let test2 = copies.iter().find(|j| j.name == "test").expect("test");
        assert_ne!(test2.id, test.id);
        assert_eq!(test2.pipeline, first.id);
        assert_eq!(test2.salt, "rerun-1");
        let job2 = test2.to_job();
        use model::Message;
        job2.validate().expect("a valid job message");
        let outbox = store.outbox_pending(100).await.expect("outbox");
        assert_eq!(
            outbox.iter().map(|o| o.job.clone()).collect::<Vec<_>>(),
            vec![test2.id.clone()]
        );
        let all = store.pipeline(&first.id).await.expect("pipeline");
        assert_eq!(all.len(), 8, "the old jobs stay: {all:?}");
        assert_eq!(
            model::pipeline::verdict_of(&first.id, &all),
            Some(model::Verdict::Running)
        );

        // The copy passes: build's copy is released (lint passed before);
        // then build and docs pass and the commit passes.
        let after = store
            .job_finished(&result(&job2, Outcome::Passed, "r2"))
            .await
            .expect("test again");
        let build2 = planned(&after, "build");
        assert_eq!(build2.status, JobStatus::Queued);
        assert_eq!(build2.salt, "rerun-1");
        let after = store
            .job_finished(&result(&build2.to_job(), Outcome::Passed, "r2"))
            .await
            .expect("build");
        let docs2 = planned(&after, "docs");
        store
            .job_finished(&result(&docs2.to_job(), Outcome::Passed, "r2"))
            .await
            .expect("docs");
        let all = store.pipeline(&first.id).await.expect("pipeline");
        assert_eq!(
            model::pipeline::verdict_of(&first.id, &all),
            Some(model::Verdict::Passed)
        );
        // Nothing failed now: nothing to run again.
        assert!(store
            .rerun_failed(&first.id, "rerun-2")
            .await
            .expect("rerun")
            .is_empty());
        let names: Vec<(String, JobStatus)> = statuses(store.as_ref(), &first).await;
        assert_eq!(names.len(), 8, "{names:?}");
    }
);

conformance!(
    async fn a_plan_that_cancels_superseded_pipelines_cancels_the_older_ones_of_its_branch_only(backend) {
        let store = backend.open().await;
        let old = job("/r", "main", commit('1'));
        let mut planning = result(&old, Outcome::Passed, "r1");
        planning.plan = Some(model::Plan::new(vec![
            spec("a", &[], "default", false),
            spec("b", &["a"], "default", false),
        ]));
        let recorded = store.job_finished(&planning).await.expect("plan");
        let a = planned(&recorded, "a");
        store
            .job_started(&a.to_job(), &runner("r1"), 10)
            .await
            .expect("started");
        // Another branch's pipeline, and a planning job of main not
        // planned yet.
        let other_branch = job("/r", "feature", commit('2'));
        store.job_queued(&other_branch).await.expect("queued");
        let unplanned = job("/r", "main", commit('3'));
        store.job_queued(&unplanned).await.expect("queued");

        let new = job("/r", "main", commit('4'));
        store.job_queued(&new).await.expect("queued");
        let mut planning = result(&new, Outcome::Passed, "r1");
        let mut plan = model::Plan::new(vec![spec("a", &[], "default", false)]);
        plan.cancel_superseded = true;
        planning.plan = Some(plan);
        let recorded = store.job_finished(&planning).await.expect("plan");
        let Recorded::New { pipeline, .. } = &recorded else {
            panic!("not new")
        };
        let mut changed: Vec<(String, JobStatus)> = pipeline
            .iter()
            .filter(|j| j.pipeline != new.id)
            .map(|j| (format!("{}:{}", &j.commit.as_str()[..1], j.name), j.status))
            .collect();
        changed.sort();
        assert_eq!(
            changed,
            vec![
                ("1:a".to_string(), JobStatus::Canceled),
                ("1:b".to_string(), JobStatus::Canceled),
                ("3:test".to_string(), JobStatus::Canceled),
            ]
        );
        let reason = format!("canceled: superseded by {}", commit('4'));
        let a = store.job(&a.id).await.expect("job").expect("a");
        assert_eq!(a.reason.as_deref(), Some(reason.as_str()));
        assert_eq!(
            store.job(&other_branch.id).await.expect("job").expect("other").status,
            JobStatus::Queued
        );
        assert_eq!(
            statuses(store.as_ref(), &new).await,
            vec![
                ("plan".to_string(), JobStatus::Passed),
                ("a".to_string(), JobStatus::Queued)
            ]
        );
    }
);

conformance!(
    async fn one_store_of_a_database_leads_and_another_takes_over_when_it_closes(backend) {
        let first = backend.open().await;
        let second = backend.open().await;
        assert!(first.try_lead().await, "the first to ask leads");
        assert!(first.try_lead().await, "and keeps leading");
        let postgres = backend.database.is_some();
        if !postgres {
            // One dispatcher per SQLite file: every store leads.
            assert!(second.try_lead().await);
            return;
        }
        assert!(!second.try_lead().await, "one leader at a time");
        first.close().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !second.try_lead().await {
            assert!(Instant::now() < deadline, "the second never took over");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(second.try_lead().await);
    }
);

conformance!(
    /// Issue 17: every change of a job's status, by any path (a result, a
    /// plan's waiting jobs, a release, a skip), leaves one change to
    /// announce, in the order made; a duplicate result leaves none; the
    /// changes announced are gone, the others stay.
    async fn every_status_change_leaves_one_change_to_announce_in_order(backend) {
        let store = backend.open().await;
        let first = job("/r", "main", commit('c'));
        store.job_queued(&first).await.expect("queued");
        store.job_started(&first, &runner("r1"), 5).await.expect("started");
        let mut planning = result(&first, Outcome::Passed, "r1");
        planning.plan = Some(model::Plan::new(vec![
            spec("test", &[], "default", false),
            spec("build", &["test"], "default", false),
        ]));
        let recorded = store.job_finished(&planning).await.expect("plan");
        let test = planned(&recorded, "test");
        let build = planned(&recorded, "build");
        store
            .job_finished(&result(&test.to_job(), Outcome::Failed, "r1"))
            .await
            .expect("test");
        // A second result of a finished job changes no status.
        store
            .job_finished(&result(&first, Outcome::Failed, "r2"))
            .await
            .expect("duplicate");

        let changes = store.changes_pending(100).await.expect("changes");
        // Each job's changes, in the order they were numbered.
        let of = |id: &model::JobId| -> Vec<JobStatus> {
            changes.iter().filter(|c| &c.job.id == id).map(|c| c.status).collect()
        };
        assert_eq!(
            of(&first.id),
            vec![JobStatus::Queued, JobStatus::Running, JobStatus::Passed]
        );
        // test needs nothing: planned, then released in the same
        // transaction.
        assert_eq!(
            of(&test.id),
            vec![JobStatus::Waiting, JobStatus::Queued, JobStatus::Failed]
        );
        assert_eq!(of(&build.id), vec![JobStatus::Waiting, JobStatus::Skipped]);
        assert_eq!(changes.len(), 8, "nothing else: {changes:?}");
        let seqs: Vec<i64> = changes.iter().map(|c| c.seq).collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(seqs, sorted, "numbered in order, each once");
        // Each change carries the job as it stands now.
        assert!(changes
            .iter()
            .filter(|c| c.job.id == build.id)
            .all(|c| c.job.status == JobStatus::Skipped));

        store.changes_announced(&seqs[..2]).await.expect("announced");
        let left = store.changes_pending(100).await.expect("changes");
        assert_eq!(
            left.iter().map(|c| c.seq).collect::<Vec<_>>(),
            seqs[2..].to_vec()
        );
        store.changes_announced(&[]).await.expect("nothing to delete");
    }
);

conformance!(
    /// Issue 18: a batch's test outcomes are merged per split job (a
    /// failure then a pass on the retry is flaky, attempts counted) and
    /// each test's time is smoothed per repository (skipped ones keep
    /// theirs).
    async fn test_outcomes_merge_per_split_job_and_timings_smooth_per_repository(backend) {
        use model::split::{TestId, TestOutcome, TestStatus};
        let store = backend.open().await;
        let parent = job("/r", "main", commit('a'));
        let batch = job("/r", "main", commit('b'));
        let retry = job("/r", "main", commit('d'));
        let repo = RepoUrl::parse("/r").expect("repo");
        let id = |t: &str| TestId::from_line(t).expect("test id");
        let outcome = |t: &str, status, duration_ms| TestOutcome {
            test: id(t),
            status,
            duration_ms,
        };
        let run = |batch: &model::JobId, runner: &'static str, outcomes: Vec<TestOutcome>| {
            let store = store.clone();
            let (parent, repo, batch) = (parent.id.clone(), repo.clone(), batch.clone());
            async move {
                store
                    .record_tests(&store::TestsRun {
                        parent: &parent,
                        repo: &repo,
                        batch: &batch,
                        runner,
                        outcomes: &outcomes,
                        at_ms: 7,
                    })
                    .await
                    .expect("record")
            }
        };
        run(
            &batch.id,
            "r1",
            vec![
                outcome("t::a", TestStatus::Passed, 1000),
                outcome("t::b", TestStatus::Failed, 200),
                outcome("t::c", TestStatus::Skipped, 0),
            ],
        )
        .await;
        run(&retry.id, "r2", vec![outcome("t::b", TestStatus::Passed, 400)]).await;

        let tests = store.tests_of(&parent.id).await.expect("tests");
        let got: Vec<(&str, TestStatus, u64, &str, u32)> = tests
            .iter()
            .map(|t| {
                (
                    t.test.as_str(),
                    t.status,
                    t.duration_ms,
                    t.runner.as_str(),
                    t.attempts,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("t::a", TestStatus::Passed, 1000, "r1", 1),
                ("t::b", TestStatus::Flaky, 400, "r2", 2),
                ("t::c", TestStatus::Skipped, 0, "r1", 1),
            ]
        );
        assert_eq!(tests[1].batch, retry.id.to_string());
        let timings = store.test_timings(&repo).await.expect("timings");
        assert_eq!(timings.get(&id("t::a")), Some(&1000));
        // 200, then 400 weighing 0.3.
        assert_eq!(timings.get(&id("t::b")), Some(&260));
        assert_eq!(timings.get(&id("t::c")), None);
        let other = RepoUrl::parse("/other").expect("repo");
        assert!(store.test_timings(&other).await.expect("timings").is_empty());
        assert!(store.tests_of(&batch.id).await.expect("tests").is_empty());
    }
);

conformance!(
    /// Jobs released together leave the outbox in the order they were
    /// recorded (a split's batches are recorded longest first), not in the
    /// order of their ids.
    async fn jobs_released_together_leave_the_outbox_in_the_order_recorded(backend) {
        let store = backend.open().await;
        let first = job("/r", "main", commit('e'));
        let names: Vec<String> = (0..12).rev().map(|i| format!("j{i:02}")).collect();
        let mut planning = result(&first, Outcome::Passed, "r1");
        planning.plan = Some(model::Plan::new(
            names.iter().map(|n| spec(n, &[], "default", false)).collect(),
        ));
        store.job_finished(&planning).await.expect("plan");
        let mut out = Vec::new();
        for row in store.outbox_pending(100).await.expect("outbox") {
            let job = store.job(&row.job).await.expect("read").expect("stored");
            out.push(job.name);
        }
        assert_eq!(out, names);
    }
);

conformance!(
    /// Issue 19: retention prunes finished jobs beyond the newest N, or
    /// older than D days, oldest first, in batches, with their logs; never
    /// a job of a pipeline that has a job not yet ended.
    async fn pruning_keeps_the_newest_jobs_and_whole_running_pipelines(backend) {
        let store = backend.open().await;
        // The oldest commit's pipeline has a job still running: the whole
        // pipeline stays, its finished planning job too.
        let planning = job("/r", "main", commit('0'));
        let mut plan_result = result(&planning, Outcome::Passed, "r1");
        plan_result.finished_at_ms = 500;
        plan_result.plan = Some(model::Plan::new(vec![spec("slow", &[], "default", false)]));
        let recorded = store.job_finished(&plan_result).await.expect("plan");
        let slow = planned(&recorded, "slow");
        store
            .job_started(&slow.to_job(), &runner("r1"), 5)
            .await
            .expect("started");
        let digits = ['1', '2', '3', '4', '5', '6'];
        let mut ids = Vec::new();
        for (i, digit) in digits.iter().enumerate() {
            let job = job("/r", "main", commit(*digit));
            let mut finished = result(&job, Outcome::Passed, "r1");
            // Each finished a day after the one before.
            finished.finished_at_ms = 1_000 + i as u64 * 86_400_000;
            store.job_finished(&finished).await.expect("finish");
            ids.push(job.id);
        }
        let now = 1_000 + 6 * 86_400_000;

        let none = store::Retention::default();
        assert_eq!(store.prune(&none, now, 100).await.expect("prune"), 0);
        // Keep the newest 4 jobs (of 8): of the 4 older ones the planning
        // job and its running job stay, the next 2 go, in one batch of 2.
        let keep4 = store::Retention {
            keep_jobs: Some(4),
            keep_days: None,
        };
        assert_eq!(store.prune(&keep4, now, 1).await.expect("prune"), 1);
        assert_eq!(store.prune(&keep4, now, 2).await.expect("prune"), 1);
        assert_eq!(store.prune(&keep4, now, 2).await.expect("prune"), 0);
        for (i, id) in ids.iter().enumerate() {
            let kept = store.job(id).await.expect("read").is_some();
            assert_eq!(kept, i >= 2, "job {i}");
            assert_eq!(store.log(id).await.expect("log").is_some(), i >= 2, "log {i}");
        }
        assert!(store.job(&planning.id).await.expect("read").is_some());
        assert!(store.job(&slow.id).await.expect("read").is_some());
        // Keep 2 days: those that finished more than 2 days before now go.
        let two_days = store::Retention {
            keep_jobs: None,
            keep_days: Some(2),
        };
        // ids[2] and ids[3] finished 4 and 3 days before now.
        assert_eq!(store.prune(&two_days, now, 100).await.expect("prune"), 2);
        assert!(store.job(&ids[3]).await.expect("read").is_none());
        assert!(store.job(&ids[4]).await.expect("read").is_some());
        assert!(store.job(&planning.id).await.expect("read").is_some());
    }
);
