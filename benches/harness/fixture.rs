//! One Warren deployment for a scenario: a namespace, a dispatcher, runners
//! (with the per-job timing lines on), optionally an observer, and the
//! harness's own broker connection — all real processes of the real binary,
//! killed and deleted on drop through the integration tests' fixtures.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::{wait_for, Dispatcher, Namespace, Proc, Scratch};
use crate::harness::bus::{default_url, Bus};
use crate::harness::logs::{self, Line};

/// Runners log their per-job timings at debug level.
pub const RUNNER_LOG: &str = "info,warren_runner=debug";

/// How a deployment is set up.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    pub runners: usize,
    pub runner_args: Vec<String>,
    pub dispatcher_args: Vec<String>,
    /// Broker URL; `WARREN_AMQP_URL`, or the shared broker on 5672, when
    /// `None`.
    pub amqp_url: Option<String>,
}

impl Setup {
    pub fn new(runners: usize, test_command: &str) -> Setup {
        Setup {
            runners,
            runner_args: vec!["--test-command".into(), test_command.into()],
            ..Setup::default()
        }
    }

    pub fn runner_args(mut self, args: &[&str]) -> Setup {
        self.runner_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn dispatcher_args(mut self, args: &[&str]) -> Setup {
        self.dispatcher_args
            .extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn url(mut self, url: &str) -> Setup {
        self.amqp_url = Some(url.to_string());
        self
    }
}

/// A running deployment. Fields drop in order: processes first, then the
/// harness's connection, then the namespace is deleted.
pub struct Warren {
    pub runners: Vec<Proc>,
    pub observer: Option<Proc>,
    pub dispatcher: Dispatcher,
    pub bus: Bus,
    pub setup: Setup,
    pub ns: Namespace,
    pub scratch: Scratch,
    next_runner: usize,
}

impl Warren {
    /// Starts the dispatcher and the runners and waits until every runner
    /// consumes the work queue.
    pub fn start(name: &str, setup: Setup) -> Warren {
        let ns = Namespace::new(name);
        let scratch = Scratch::new();
        let url = setup.amqp_url.clone().unwrap_or_else(default_url);
        let bus = Bus::open(&ns.name, &url);
        let mut dispatcher_args: Vec<&str> = vec!["--amqp-url", &url];
        dispatcher_args.extend(setup.dispatcher_args.iter().map(String::as_str));
        let dispatcher = Dispatcher::start(&ns, &scratch, &dispatcher_args);
        let mut warren = Warren {
            runners: Vec::new(),
            observer: None,
            dispatcher,
            bus,
            setup,
            ns,
            scratch,
            next_runner: 1,
        };
        for _ in 0..warren.setup.runners {
            warren.add_runner();
        }
        warren.wait_for_runners(warren.setup.runners);
        warren
    }

    fn url(&self) -> String {
        self.setup.amqp_url.clone().unwrap_or_else(default_url)
    }

    /// Starts one more runner (not waiting for it); returns its index.
    pub fn add_runner(&mut self) -> usize {
        let name = format!("r{}", self.next_runner);
        self.next_runner += 1;
        let workdir = self.scratch.join(&format!("{name}-work"));
        let url = self.url();
        let mut args: Vec<&str> = vec![
            "runner",
            "--id",
            &name,
            "--workdir",
            workdir.to_str().expect("utf8"),
            "--amqp-url",
            &url,
        ];
        args.extend(self.setup.runner_args.iter().map(String::as_str));
        let proc = Proc::spawn(
            &name,
            &self.ns,
            &self.scratch,
            &args,
            &[("RUST_LOG", RUNNER_LOG)],
        );
        self.runners.push(proc);
        self.runners.len() - 1
    }

    pub fn wait_for_runners(&self, count: usize) {
        self.bus
            .wait_for_runners(count as u32, Duration::from_secs(60));
    }

    /// Replaces runner `index` (killed already, or now) with a fresh one
    /// and waits until it consumes.
    pub fn replace_runner(&mut self, index: usize) {
        let mut old = self.runners.remove(index);
        old.kill();
        self.add_runner();
        self.wait_for_runners(self.runners.len());
    }

    /// Starts an observer on `repo` polling every `interval` seconds.
    pub fn start_observer(&mut self, repo: &str, interval: &str) {
        let state = self.scratch.join("observer-state.json");
        let url = self.url();
        let args = [
            "observer",
            "--interval",
            interval,
            "--state",
            state.to_str().expect("utf8"),
            "--amqp-url",
            &url,
            repo,
        ];
        self.observer = Some(Proc::spawn("observer", &self.ns, &self.scratch, &args, &[]));
    }

    /// Starts an observer for the dispatcher's registry (no REPO), with
    /// its webhooks on `hooks` (`127.0.0.1:PORT`) and `env` (the webhook
    /// secrets) in its environment; waits until the webhooks answer.
    /// Returns `http://HOOKS`.
    pub fn start_registry_observer(&mut self, env: &[(&str, &str)]) -> String {
        let state = self.scratch.join("observer-state");
        let hooks = format!("127.0.0.1:{}", crate::common::free_port());
        let url = self.url();
        let args = [
            "observer",
            "--server",
            &self.dispatcher.url,
            "--state-dir",
            state.to_str().expect("utf8"),
            "--hooks-http",
            &hooks,
            "--amqp-url",
            &url,
        ];
        self.observer = Some(Proc::spawn("observer", &self.ns, &self.scratch, &args, env));
        let base = format!("http://{hooks}");
        let client = reqwest::blocking::Client::new();
        wait_for("the observer's webhooks", Duration::from_secs(30), || {
            client.post(format!("{base}/hooks")).send().ok()
        });
        base
    }

    /// Puts a repository in the dispatcher's registry (`PUT
    /// /api/repos/NAME`, as `warren repo add` does).
    pub fn register(
        &self,
        name: &str,
        url: &str,
        poll_secs: Option<f64>,
        secret_env: Option<&str>,
    ) {
        let entry = serde_json::json!({
            "name": name,
            "url": url,
            "branches": [],
            "poll_secs": poll_secs,
            "webhook_secret_env": secret_env,
        });
        let answer = reqwest::blocking::Client::new()
            .put(format!("{}/api/repos/{name}", self.dispatcher.url))
            .json(&entry)
            .send()
            .expect("PUT /api/repos");
        assert!(
            answer.status().is_success(),
            "registering {name}: {}",
            answer.status()
        );
    }

    pub fn dispatcher_log(&self) -> PathBuf {
        self.dispatcher.proc.log.clone()
    }

    /// Waits until the dispatcher has recorded an outcome for every job in
    /// `ids`; returns when each was recorded (epoch ms, from its log).
    pub fn wait_recorded(&self, ids: &[String], within: Duration) -> HashMap<String, f64> {
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let log = self.dispatcher_log();
        let deadline = Instant::now() + within;
        loop {
            // Counting is cheap; parse only when enough lines are there.
            if logs::count(&log, "job finished") >= wanted.len() {
                let found: HashMap<String, f64> = logs::read(&log)
                    .into_iter()
                    .filter(|l| l.message == "job finished")
                    .filter_map(|l| {
                        let job = l.field("job")?;
                        wanted.contains(job).then(|| (job.to_string(), l.at_ms))
                    })
                    .collect();
                if found.len() == wanted.len() {
                    return found;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {} outcomes to be recorded (logs in {})",
                wanted.len(),
                self.scratch.path().display()
            );
            // Outcomes are timed from the log, so polling slower for big
            // batches loses nothing and leaves the CPU to Warren.
            let pause = if wanted.len() > 5 { 100 } else { 20 };
            std::thread::sleep(Duration::from_millis(pause));
        }
    }

    /// Waits until some runner logs `message` for `job`; returns the runner's
    /// index and the line.
    pub fn wait_runner_line(
        &self,
        message: &str,
        job: &str,
        after_ms: f64,
        within: Duration,
    ) -> (usize, Line) {
        wait_for(
            &format!("a runner to log {message:?} for job {job}"),
            within,
            || {
                self.runners.iter().enumerate().find_map(|(i, r)| {
                    logs::read(&r.log)
                        .into_iter()
                        .find(|l| l.is(message, job) && l.at_ms >= after_ms)
                        .map(|l| (i, l))
                })
            },
        )
    }

    /// Every parsed line of every runner (current and replaced ones alike,
    /// from their log files in the scratch dir).
    pub fn all_runner_lines(&self) -> Vec<Line> {
        let mut lines = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.scratch.path()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with('r') && name.ends_with(".log") {
                    lines.extend(logs::read(&entry.path()));
                }
            }
        }
        lines
    }

    /// Jobs as the API shows them, by id.
    pub fn api_jobs(&self) -> HashMap<String, serde_json::Value> {
        self.dispatcher
            .api()
            .jobs()
            .into_iter()
            .filter_map(|j| Some((j["id"].as_str()?.to_string(), j)))
            .collect()
    }

    /// The pids of the dispatcher and the runners.
    pub fn pids(&self) -> (i32, Vec<i32>) {
        (
            self.dispatcher.proc.pid(),
            self.runners.iter().map(Proc::pid).collect(),
        )
    }
}
