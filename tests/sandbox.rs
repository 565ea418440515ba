//! Issue 14: jobs in a sandbox. Each attack is a real job (a commit's
//! `.warren-test`) run by the real `warren runner` against the real broker
//! and dispatcher, once on a runner without the sandbox, where the attack
//! works (so the test can fail), and once on a runner with `--sandbox
//! bwrap`, where it must not. Plus: ordinary Python and `cargo test` jobs
//! pass inside the sandbox, and the runner's start-up choices.
//!
//! bubblewrap must be installed (`scripts/ensure-tools` installs it): these
//! tests fail, never skip, without it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use broker::message::encode;
use broker::Names;
use common::*;
use model::Job;
use serde_json::Value;

/// Within this, every job of these tests ends.
const JOB_WITHIN: Duration = Duration::from_secs(120);

/// Fails (never skips) when bubblewrap is missing.
fn require_bwrap() {
    let found = Command::new("bwrap").arg("--version").output();
    assert!(
        found.is_ok_and(|out| out.status.success()),
        "bwrap is not installed: run scripts/ensure-tools (Debian: apt-get install bubblewrap)"
    );
}

/// A dispatcher and one runner in a namespace of their own. Fields drop
/// in this order: the processes first, then the namespace (deleted once
/// nothing can declare it again), then the scratch folder.
struct Rig {
    dispatcher: Dispatcher,
    runner: Proc,
    workdir: PathBuf,
    ns: Namespace,
    scratch: Scratch,
}

impl Rig {
    fn start(test: &str, flags: &[&str]) -> Rig {
        Rig::start_with_env(test, flags, &[])
    }

    fn start_with_env(test: &str, flags: &[&str], env: &[(&str, &str)]) -> Rig {
        require_bwrap();
        let ns = Namespace::new(test);
        let scratch = Scratch::new();
        let dispatcher = Dispatcher::start(&ns, &scratch, &[]);
        // Not `common::runner`, which picks `--sandbox none` when the flags
        // name no sandbox: here no flag means the runner's own default.
        let workdir = scratch.join("r1-work");
        let mut args = vec![
            "runner",
            "--id",
            "r1",
            "--workdir",
            workdir.to_str().expect("utf8"),
        ];
        args.extend_from_slice(flags);
        let runner = Proc::spawn("r1", &ns, &scratch, &args, env);
        let api = dispatcher.api();
        wait_for("the runner to consume", Duration::from_secs(30), || {
            api.get_json("/api/runners")
                .ok()
                .filter(|r| r.as_array().is_some_and(|a| !a.is_empty()))
        });
        Rig {
            ns,
            scratch,
            dispatcher,
            runner,
            workdir,
        }
    }

    fn repo(&self, name: &str) -> Repo {
        Repo::new(self.scratch.join(name))
    }

    /// Commits `script` as the repository's test command, publishes a job
    /// for it and returns the job once it has an outcome.
    fn run(&self, repo: &Repo, script: &str) -> Value {
        repo.write(".warren-test", script);
        let commit = repo.commit("a job");
        self.run_commit(repo, &commit)
    }

    fn run_commit(&self, repo: &Repo, commit: &str) -> Value {
        let job = Job::try_new(repo.path_str(), "main", commit).expect("a valid job");
        let names = Names::new(self.ns.name.clone());
        publish_raw(
            &self.ns,
            &[(names.jobs_exchange(), String::new(), encode(&job))],
        );
        let jobs = self
            .dispatcher
            .api()
            .wait_terminal(&[commit.to_string()], JOB_WITHIN);
        one_job(&jobs, commit)
    }

    fn log(&self, job: &Value) -> String {
        self.dispatcher
            .api()
            .log(job["id"].as_str().expect("a job id"))
    }

    /// The job passed; its log otherwise.
    fn assert_passed(&self, job: &Value, what: &str) {
        assert_eq!(
            job["status"],
            "passed",
            "{what}: {job}\n{}\nrunner log:\n{}",
            self.log(job),
            self.runner.log_text()
        );
    }

    /// The job did not pass (the attempt failed).
    fn assert_not_passed(&self, job: &Value, what: &str) {
        assert_ne!(
            job["status"],
            "passed",
            "{what} should have failed in the sandbox: {job}\n{}",
            self.log(job)
        );
    }
}

fn sandboxed() -> Vec<&'static str> {
    vec!["--sandbox", "bwrap"]
}

fn unsandboxed() -> Vec<&'static str> {
    vec!["--sandbox", "none"]
}

/// A word of this test run's own, for file and process names.
fn tag() -> String {
    format!(
        "{}{}",
        std::process::id() % 1000,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_micros() % 1000)
            .unwrap_or(0)
    )
}

#[test]
fn a_job_cannot_read_another_repositorys_clone() {
    let attack = |flags: Vec<&str>| {
        let rig = Rig::start("sandbox-read-clone", &flags);
        let other = rig.repo("other");
        other.write("secret.txt", "OTHER-REPO-SECRET\n");
        // Repository B's job leaves its clone in the runner's workdir.
        let b = rig.run(&other, "true");
        rig.assert_passed(&b, "the other repository's job");
        let mine = rig.repo("mine");
        let script = format!(
            "grep -h OTHER-REPO-SECRET ../*/secret.txt {}/repos/*/secret.txt",
            rig.workdir.display()
        );
        let job = rig.run(&mine, &script);
        (rig.log(&job), job, rig)
    };
    let (log, job, rig) = attack(unsandboxed());
    rig.assert_passed(&job, "without the sandbox the other clone is readable");
    assert!(log.contains("OTHER-REPO-SECRET"), "{log}");
    drop(rig);
    let (log, job, rig) = attack(sandboxed());
    rig.assert_not_passed(&job, "reading the other clone");
    assert_eq!(job["status"], "failed", "{job}");
    assert!(!log.contains("OTHER-REPO-SECRET\n"), "{log}");
}

#[test]
fn a_job_cannot_write_to_the_runners_working_folder() {
    let attack = |flags: Vec<&str>| {
        let rig = Rig::start("sandbox-write-workdir", &flags);
        let repo = rig.repo("repo");
        let planted = rig.workdir.join("planted");
        let beside = rig.workdir.join("repos").join("beside");
        let script = format!(
            "echo x > ../beside; echo x > {} && test -e {}",
            planted.display(),
            planted.display()
        );
        let job = rig.run(&repo, &script);
        let wrote = (planted.exists(), beside.exists());
        (job, wrote, rig)
    };
    let (job, wrote, rig) = attack(unsandboxed());
    rig.assert_passed(&job, "without the sandbox the workdir is writable");
    assert_eq!(wrote, (true, true));
    drop(rig);
    let (job, wrote, rig) = attack(sandboxed());
    rig.assert_not_passed(&job, "writing to the runner's workdir");
    assert_eq!(
        wrote,
        (false, false),
        "nothing reached the runner's workdir"
    );
}

#[test]
fn a_file_left_in_tmp_or_home_is_gone_for_the_next_job() {
    let tag = tag();
    let in_tmp = PathBuf::from(format!("/tmp/warren-left-{tag}"));
    let home = PathBuf::from(std::env::var("HOME").expect("HOME"));
    let in_home = home.join(format!(".warren-left-{tag}"));
    let cleanup = || {
        let _ = std::fs::remove_file(&in_tmp);
        let _ = std::fs::remove_file(&in_home);
    };
    let attack = |flags: Vec<&str>| {
        cleanup();
        let rig = Rig::start("sandbox-tmp", &flags);
        let repo = rig.repo("repo");
        let leave = format!(
            "echo left > /tmp/warren-left-{tag} && echo left > \"$HOME/.warren-left-{tag}\""
        );
        let first = rig.run(&repo, &leave);
        rig.assert_passed(&first, "leaving files");
        let find =
            format!("test -e /tmp/warren-left-{tag} && test -e \"$HOME/.warren-left-{tag}\"");
        let second = rig.run(&repo, &find);
        let on_host = (in_tmp.exists(), in_home.exists());
        (second, on_host, rig)
    };
    let (job, on_host, rig) = attack(unsandboxed());
    rig.assert_passed(&job, "without the sandbox the next job finds the files");
    assert_eq!(on_host, (true, true));
    drop(rig);
    let (job, on_host, rig) = attack(sandboxed());
    cleanup();
    rig.assert_not_passed(&job, "finding the files of the job before");
    assert_eq!(
        on_host,
        (false, false),
        "nothing reached the host's /tmp or HOME"
    );
}

#[test]
fn a_job_cannot_see_its_runners_process_or_environment() {
    let canary = format!("runner-canary-{}", tag());
    let attack = |flags: Vec<&str>| {
        let rig = Rig::start_with_env(
            "sandbox-proc",
            &flags,
            &[("WARREN_TEST_CANARY", canary.as_str())],
        );
        let repo = rig.repo("repo");
        let pid = rig.runner.pid();
        // The runner by its pid, and by walking every process in sight.
        let script = format!(
            "tr '\\0' '\\n' < /proc/{pid}/environ | grep {canary} && \
             for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep 'warren[ ]runner'"
        );
        let job = rig.run(&repo, &script);
        (rig.log(&job), job, rig)
    };
    let (log, job, rig) = attack(unsandboxed());
    rig.assert_passed(
        &job,
        "without the sandbox the runner's environment is readable",
    );
    assert!(
        log.contains(&format!("WARREN_TEST_CANARY={canary}")),
        "{log}"
    );
    drop(rig);
    let (log, job, rig) = attack(sandboxed());
    rig.assert_not_passed(&job, "reading the runner's environment");
    assert!(!log.contains(&format!("CANARY={canary}")), "{log}");
}

#[test]
fn no_process_of_a_job_outlives_it() {
    let tag = tag();
    for flags in [unsandboxed(), sandboxed()] {
        let rig = Rig::start("sandbox-daemons", &flags);
        let repo = rig.repo("repo");
        // A setsid daemon and a double-forked one; the job checks that both
        // run before it ends (so the probe itself works).
        let script = format!(
            "setsid sleep 98{tag}1 < /dev/null > /dev/null 2>&1 &
             (sleep 98{tag}2 < /dev/null > /dev/null 2>&1 &)
             for i in 1 2 3 4 5 6 7 8 9 10; do
               n=$(for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -c '^sleep 98{tag}')
               [ \"$n\" = 2 ] && exit 0
               sleep 0.2
             done
             exit 1"
        );
        let job = rig.run(&repo, &script);
        rig.assert_passed(&job, "both daemons were running during the job");
        wait_for(
            &format!("the job's daemons to be gone ({flags:?})"),
            Duration::from_secs(10),
            || {
                processes_starting_with(&format!("sleep 98{tag}"))
                    .is_empty()
                    .then_some(())
            },
        );
    }
}

#[test]
fn a_job_on_a_runner_without_network_cannot_reach_the_broker() {
    let probe = "python3 -c \"import socket; socket.create_connection(('127.0.0.1', 5672), 3); print('reached the broker')\"";
    let attack = |network: &str| {
        let rig = Rig::start(
            "sandbox-network",
            &["--sandbox", "bwrap", "--network", network],
        );
        let repo = rig.repo("repo");
        let job = rig.run(&repo, probe);
        (job, rig)
    };
    let (job, rig) = attack("host");
    rig.assert_passed(&job, "with the host's network the broker is reachable");
    drop(rig);
    let (job, rig) = attack("none");
    rig.assert_not_passed(&job, "reaching the broker with --network none");
    assert_eq!(job["status"], "failed", "{job}");
}

#[test]
fn a_job_that_asks_for_no_network_cannot_reach_the_broker_on_a_host_network_runner() {
    let probe = "python3 -c \"import socket; socket.create_connection(('127.0.0.1', 5672), 3); print('reached', 'the broker')\"";
    let rig = Rig::start(
        "sandbox-job-network",
        &["--sandbox", "bwrap", "--network", "host"],
    );
    let repo = rig.repo("repo");
    // The same probe on the same runner: without the line it reaches the
    // broker (so the test can fail)...
    repo.write(".warren.yml", "# no network key: the default, true\n");
    let job = rig.run(&repo, probe);
    rig.assert_passed(
        &job,
        "with the runner's host network the broker is reachable",
    );
    assert!(rig.log(&job).contains("reached the broker"));
    // ...with it, the job has a network of its own.
    repo.write(".warren.yml", "network: false\n");
    let job = rig.run(&repo, probe);
    rig.assert_not_passed(&job, "reaching the broker with network: false");
    assert_eq!(job["status"], "failed", "{job}");
    let log = rig.log(&job);
    assert!(!log.contains("reached the broker"), "{log}");
    assert!(
        log.contains("network none (network: false in .warren.yml)"),
        "{log}"
    );
    // And the next job without the line has the network again.
    repo.write(".warren.yml", "network: true\n");
    let job = rig.run(&repo, probe);
    rig.assert_passed(&job, "network: true after a job with network: false");
}

#[test]
fn a_job_that_asks_for_no_network_is_an_error_on_a_runner_without_a_sandbox() {
    let rig = Rig::start("sandbox-job-network-none", &unsandboxed());
    let repo = rig.repo("repo");
    let marker = rig.scratch.join("it-ran");
    repo.write(".warren.yml", "network: false\n");
    let job = rig.run(&repo, &format!("touch {}", marker.display()));
    assert_eq!(job["status"], "error", "{job}\n{}", rig.log(&job));
    let reason = "network: false needs a runner with a sandbox (this one runs jobs without one)";
    assert!(
        job["reason"].as_str().is_some_and(|r| r.contains(reason)),
        "{job}"
    );
    assert!(rig.log(&job).contains(reason), "{}", rig.log(&job));
    assert!(!marker.exists(), "the test command never ran");
    // The runner goes on: the same repository without the line passes.
    repo.write(".warren.yml", "network: true\n");
    let job = rig.run(&repo, &format!("touch {}", marker.display()));
    rig.assert_passed(&job, "network: true on a runner without a sandbox");
    assert!(marker.exists());
}

#[test]
fn a_bad_warren_yml_is_an_error_that_says_why() {
    let rig = Rig::start("sandbox-bad-yml", &sandboxed());
    let repo = rig.repo("repo");
    let reason_of = |job: &Value| job["reason"].as_str().unwrap_or_default().to_string();
    repo.write(".warren.yml", "network: false\npipelines: [build]\n");
    let job = rig.run(&repo, "true");
    assert_eq!(job["status"], "error", "{job}");
    let reason = reason_of(&job);
    assert!(
        reason.starts_with(".warren.yml is not valid") && reason.contains("pipelines"),
        "names the unknown key: {job}"
    );
    repo.write(".warren.yml", "network: [\n");
    let job = rig.run(&repo, "true");
    assert_eq!(job["status"], "error", "{job}");
    assert!(
        reason_of(&job).starts_with(".warren.yml is not valid"),
        "{job}"
    );
    // A symlink to a file of the runner's is refused, its content unread.
    let secret = rig.scratch.join("runner-secret");
    std::fs::write(&secret, "RUNNER-ONLY-SECRET\n").expect("write");
    std::fs::remove_file(repo.path.join(".warren.yml")).expect("rm");
    std::fs::remove_file(repo.path.join(".warren-test")).expect("rm");
    std::os::unix::fs::symlink(&secret, repo.path.join(".warren-test")).expect("symlink");
    let commit = repo.commit("a linked test command");
    let job = rig.run_commit(&repo, &commit);
    assert_eq!(job["status"], "error", "{job}");
    assert!(reason_of(&job).contains("symbolic link"), "{job}");
    assert!(
        !rig.log(&job).contains("RUNNER-ONLY-SECRET"),
        "{}",
        rig.log(&job)
    );
}

#[test]
fn a_job_cannot_allocate_past_its_memory_limit() {
    // Writes every byte: a gigabyte really used, not only reserved.
    let hog = "python3 -c \"b = bytearray(b'x') * (1 << 30); print(len(b))\"";
    let rig = Rig::start("sandbox-memory-control", &sandboxed());
    let repo = rig.repo("repo");
    let job = rig.run(&repo, hog);
    rig.assert_passed(&job, "without a memory limit a gigabyte is fine");
    drop(rig);
    let mut flags = sandboxed();
    flags.extend(["--job-memory", "200M"]);
    let rig = Rig::start("sandbox-memory", &flags);
    let repo = rig.repo("repo");
    let job = rig.run(&repo, hog);
    rig.assert_not_passed(&job, "allocating 1 GiB under --job-memory 200M");
    assert_eq!(job["status"], "failed", "{job}");
    let log = rig.log(&job);
    assert!(
        log.contains("memory limit") || log.contains("MemoryError"),
        "the log says why: {log}"
    );
    // The next job runs normally, and the job's cgroup is gone.
    let job = rig.run(&repo, "echo fine");
    rig.assert_passed(&job, "the job after");
    let pid = rig.runner.pid();
    let leftover = std::fs::read_dir("/sys/fs/cgroup/memory")
        .ok()
        .map(|_| cgroup_jobs_of(Path::new("/sys/fs/cgroup/memory"), pid))
        .unwrap_or_default();
    assert!(leftover.is_empty(), "job cgroups left: {leftover:?}");
}

/// `job-*` cgroup folders under a `warren-*-<pid>` folder anywhere below
/// `root` (two levels deep at most: the runner's own cgroup, then ours).
fn cgroup_jobs_of(root: &Path, pid: i32) -> Vec<PathBuf> {
    let suffix = format!("-{pid}");
    let mut found = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("warren-") && name.ends_with(&suffix) {
                for job in std::fs::read_dir(entry.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if job.file_name().to_string_lossy().starts_with("job-") {
                        found.push(job.path());
                    }
                }
            } else if depth < 3 {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    found
}

#[test]
fn a_job_cannot_start_more_processes_than_its_limit() {
    let forks = "for i in $(seq 1 40); do sleep 5 & done; wait";
    let mut flags = sandboxed();
    flags.extend(["--job-pids", "16", "--job-timeout", "30"]);
    let rig = Rig::start("sandbox-pids", &flags);
    let repo = rig.repo("repo");
    let job = rig.run(&repo, forks);
    rig.assert_not_passed(&job, "forty processes under --job-pids 16");
    let job = rig.run(&repo, "for i in $(seq 1 5); do sleep 0.1 & done; wait");
    rig.assert_passed(&job, "a few processes under the limit");
}

#[test]
fn a_python_unittest_job_passes_in_the_sandbox() {
    let rig = Rig::start("sandbox-python", &sandboxed());
    let repo = rig.repo("repo");
    repo.write(
        "tests/test_sum.py",
        "import os, tempfile, unittest\n\n\
         class Sum(unittest.TestCase):\n    \
             def test_sum(self):\n        self.assertEqual(sum([1, 2, 3]), 6)\n\n    \
             def test_writes_where_it_may(self):\n        \
                 with tempfile.NamedTemporaryFile(dir='/tmp') as f:\n            f.write(b'x')\n        \
                 with open(os.path.join(os.environ['HOME'], 'cache'), 'w') as f:\n            f.write('x')\n        \
                 with open('out.txt', 'w') as f:\n            f.write('x')\n",
    );
    let commit = repo.commit("python tests");
    let job = rig.run_commit(&repo, &commit);
    rig.assert_passed(&job, "a Python unittest job");
    let log = rig.log(&job);
    assert!(log.contains("Ran 2 tests"), "{log}");
    assert!(
        log.contains("sandbox bwrap"),
        "the log says how it ran: {log}"
    );
}

#[test]
fn a_cargo_test_job_passes_in_the_sandbox() {
    let home = PathBuf::from(std::env::var("HOME").expect("HOME"));
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| home.join(".cargo"));
    let rustup_home = std::env::var("RUSTUP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| home.join(".rustup"));
    let (cargo_home, rustup_home) = (
        cargo_home.to_str().expect("utf8").to_string(),
        rustup_home.to_str().expect("utf8").to_string(),
    );
    let mut flags = sandboxed();
    flags.extend(["--network", "none"]);
    for path in [&cargo_home, &rustup_home] {
        if Path::new(path).exists() {
            flags.extend(["--sandbox-ro", path.as_str()]);
        }
    }
    let rig = Rig::start("sandbox-cargo", &flags);
    let repo = rig.repo("tiny");
    repo.write(
        "Cargo.toml",
        "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    );
    repo.write(
        "src/lib.rs",
        "pub fn add(a: u32, b: u32) -> u32 { a + b }\n\n\
         #[cfg(test)]\nmod tests {\n    #[test]\n    fn adds() { assert_eq!(super::add(2, 2), 4); }\n}\n",
    );
    let job = rig.run(&repo, "cargo test --offline");
    rig.assert_passed(&job, "a cargo test job");
    let log = rig.log(&job);
    assert!(log.contains("test tests::adds ... ok"), "{log}");
}

#[test]
fn the_runner_says_how_it_runs_jobs_at_start() {
    require_bwrap();
    let scratch = Scratch::new();
    // An explicit sandbox that cannot work is one line at start, naming the flag.
    let out = Command::new(WARREN)
        .args(["runner", "--sandbox", "bwrap", "--workdir"])
        .arg(scratch.join("w"))
        .env("PATH", "/nonexistent")
        .env("WARREN_NAMESPACE", "wt-sandbox-unused")
        .output()
        .expect("run warren");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--sandbox bwrap"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    // So is --network none without a sandbox.
    let out = Command::new(WARREN)
        .args([
            "runner",
            "--sandbox",
            "none",
            "--network",
            "none",
            "--workdir",
        ])
        .arg(scratch.join("w"))
        .env("WARREN_NAMESPACE", "wt-sandbox-unused")
        .output()
        .expect("run warren");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--network none"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

    // The default, where bwrap works: the sandbox.
    let rig = Rig::start("sandbox-default", &[]);
    let repo = rig.repo("repo");
    let job = rig.run(&repo, "test ! -e /proc/1/environ || ! grep -q WARREN /proc/1/environ; test \"$PWD\" = /warren/checkout");
    rig.assert_passed(&job, "a job under the default sandbox");
    assert!(rig.log(&job).contains("sandbox bwrap"));
    drop(rig);
    // The default, where bwrap is missing: none, with a warning.
    let ns = Namespace::new("sandbox-fallback");
    let scratch = Scratch::new();
    let path = format!("/nonexistent:{}", std::env::var("PATH").unwrap_or_default())
        .split(':')
        .filter(|dir| !Path::new(dir).join("bwrap").exists())
        .collect::<Vec<_>>()
        .join(":");
    let workdir = scratch.join("r1-work");
    let runner = Proc::spawn(
        "r1",
        &ns,
        &scratch,
        &["runner", "--workdir", workdir.to_str().expect("utf8")],
        &[("PATH", path.as_str())],
    );
    wait_for("the fallback warning", Duration::from_secs(30), || {
        let log = runner.log_text();
        (log.contains("WITHOUT a sandbox") && log.contains("not installed")).then_some(())
    });
}
