//! Warren's benchmark harness (issue 7): scenarios that run the real
//! `warren` binary against the real RabbitMQ and real git repositories, and
//! a report (console table and BENCHMARKS.md) with median, p95 and max of
//! every measurement against the targets.
//!
//! Used by `benches/scenarios.rs` (`cargo bench --bench scenarios`, full
//! size) and by `tests/bench_smoke.rs` (every scenario once, tiny). Both
//! crates include the integration tests' fixtures as `crate::common`.

#![allow(dead_code)]

pub mod analysis;
pub mod bus;
pub mod fixture;
pub mod generate;
pub mod logs;
pub mod markdown;
pub mod node;
pub mod report;
pub mod repos;
pub mod scenario;
pub mod stats;
pub mod system;

pub use report::Report;

/// How big each scenario is.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Observer intervals (seconds) and commits measured at each.
    pub latency: Vec<(f64, usize)>,
    /// Jobs measured one at a time, each a new commit the runner must fetch.
    pub overhead_fetch: usize,
    /// Jobs queued at once for commits the runner already has.
    pub overhead_warm: usize,
    /// Jobs published at once for the throughput runs.
    pub throughput_jobs: usize,
    pub throughput_runners: Vec<usize>,
    /// Drains per runner count.
    pub throughput_repeats: usize,
    /// Commits pushed at once through the observer, and runners draining.
    pub observer_burst: Option<(usize, usize)>,
    pub kill_samples: usize,
    pub stop_samples: usize,
    pub restart_samples: usize,
    /// The broker stays down a random 0 to this many seconds per restart.
    pub restart_extra_down: f64,
    /// Boot the private broker node while the SIGKILL and SIGSTOP parts
    /// run (quicker; the full run keeps them apart, undisturbed).
    pub overlap_node_start: bool,
    /// Seconds of idle measured, in windows of `idle_window` seconds.
    pub idle_secs: f64,
    pub idle_window: f64,
    /// Jobs in the dispatcher's store for the API scenario.
    pub store_jobs: usize,
    /// Requests per API endpoint.
    pub api_requests: usize,
    /// Pushes of one commit each, timed webhook → job start.
    pub hook_pushes: usize,
    /// Commits in one push (20 listed, the rest read from the
    /// repository), and pushes.
    pub push_burst: (usize, usize),
    /// Many repositories polled by one registry observer.
    pub many_repos: ManyRepos,
    /// Jobs (test command `true`) run with each sandbox setting.
    pub sandbox_jobs: usize,
    /// Chain pipelines (ten jobs each) measured per runner count, after
    /// one warm-up, and those runner counts.
    pub pipeline_chains: usize,
    pub pipeline_chain_runners: Vec<usize>,
    /// Fan-out pipelines measured (after one warm-up), the side of their
    /// square matrix, and the runners sharing them.
    pub pipeline_fanouts: usize,
    pub pipeline_matrix_side: usize,
    pub pipeline_fanout_runners: usize,
    /// The split suite: tests, and the unit of their durations in ms (see
    /// `scenario::splitting::suite`: about 1,000 units for 200 tests).
    pub split_suite: (usize, f64),
    /// Jobs in the large store (a multiple of 4), and requests timed per
    /// endpoint on it.
    pub million_jobs: usize,
    pub million_requests: usize,
    /// Dashboard page loads timed on it.
    pub million_renders: usize,
    /// Results waiting in the dispatcher's queue when it starts.
    pub prefilled_results: usize,
    /// Commits a watched branch moves by at once.
    pub branch_moves_by: usize,
}

/// Repositories registered and polled by one observer, and how long its
/// CPU and memory are measured.
#[derive(Debug, Clone)]
pub struct ManyRepos {
    pub count: usize,
    pub poll_secs: f64,
    /// Seconds measured once every head is published, in windows of
    /// `step_secs`.
    pub window_secs: f64,
    pub step_secs: f64,
}

impl Sizes {
    /// What `cargo bench --bench scenarios` runs (about 8 minutes on a
    /// 2-core machine).
    pub fn full() -> Sizes {
        Sizes {
            latency: vec![(1.0, 24), (0.2, 30)],
            overhead_fetch: 25,
            overhead_warm: 40,
            throughput_jobs: 1000,
            throughput_runners: vec![1, 2, 4, 8],
            throughput_repeats: 2,
            observer_burst: Some((1000, 4)),
            kill_samples: 5,
            stop_samples: 4,
            restart_samples: 3,
            restart_extra_down: 5.0,
            overlap_node_start: false,
            idle_secs: 10.0,
            idle_window: 2.0,
            store_jobs: 100_000,
            api_requests: 40,
            hook_pushes: 30,
            push_burst: (1000, 3),
            many_repos: ManyRepos {
                count: 200,
                poll_secs: 30.0,
                window_secs: 90.0,
                step_secs: 10.0,
            },
            sandbox_jobs: 40,
            pipeline_chains: 5,
            pipeline_chain_runners: vec![1, 2],
            pipeline_fanouts: 2,
            pipeline_matrix_side: 8,
            pipeline_fanout_runners: 4,
            split_suite: (200, 60.0),
            million_jobs: 1_000_000,
            million_requests: 200,
            million_renders: 20,
            prefilled_results: 20_000,
            branch_moves_by: 10_000,
        }
    }

    /// Every scenario once, tiny (the smoke test).
    pub fn smoke() -> Sizes {
        Sizes {
            latency: vec![(0.2, 2)],
            overhead_fetch: 2,
            overhead_warm: 3,
            throughput_jobs: 12,
            throughput_runners: vec![1, 2],
            throughput_repeats: 1,
            observer_burst: Some((6, 2)),
            kill_samples: 1,
            stop_samples: 1,
            restart_samples: 1,
            restart_extra_down: 1.0,
            overlap_node_start: true,
            idle_secs: 2.0,
            idle_window: 1.0,
            store_jobs: 2_000,
            api_requests: 3,
            hook_pushes: 3,
            // Over GitHub's 20, so the rest is read from the repository.
            push_burst: (30, 1),
            many_repos: ManyRepos {
                count: 10,
                poll_secs: 1.0,
                window_secs: 2.0,
                step_secs: 1.0,
            },
            sandbox_jobs: 3,
            pipeline_chains: 1,
            pipeline_chain_runners: vec![1],
            pipeline_fanouts: 1,
            pipeline_matrix_side: 2,
            pipeline_fanout_runners: 2,
            split_suite: (40, 2.0),
            million_jobs: 4_000,
            million_requests: 5,
            million_renders: 2,
            prefilled_results: 50,
            branch_moves_by: 20,
        }
    }
}

/// A small deterministic random generator (xorshift), for commit timing.
pub struct Random(u64);

impl Random {
    pub fn new() -> Random {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Random(seed | 1)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Default for Random {
    fn default() -> Self {
        Random::new()
    }
}
