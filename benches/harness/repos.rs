//! Real git repositories for the scenarios: a small project, and many
//! commits made at once with `git fast-import` (a thousand `git commit`s
//! would take longer than the benchmark they feed).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::{git, Repo};

/// A small repository (a README, a package with a dozen modules and a test
/// folder: ~20 files) with one commit on `main`.
pub fn small_repo(at: &Path) -> Repo {
    let repo = Repo::new(at.to_path_buf());
    repo.write(
        "README.md",
        "# bench\n\nA small project for Warren's benchmarks.\n",
    );
    for i in 0..12 {
        repo.write(
            &format!("pkg/module_{i}.py"),
            &format!(
                "\"\"\"Module {i}.\"\"\"\n\n\ndef value():\n    return {i}\n\n\n{}",
                "# padding line for a realistic file size\n".repeat(20)
            ),
        );
    }
    repo.write("pkg/__init__.py", "");
    for i in 0..4 {
        repo.write(
            &format!("tests/test_{i}.py"),
            &format!("import unittest\n\n\nclass T(unittest.TestCase):\n    def test_{i}(self):\n        self.assertTrue(True)\n"),
        );
    }
    repo.write("value.txt", "value=0\n");
    repo.commit("initial");
    repo
}

/// Adds `count` commits on `main` (each changing `value.txt`) in one
/// `git fast-import`, and returns their ids, oldest first.
pub fn add_commits(repo: &Path, count: usize, label: &str) -> Vec<String> {
    if count == 0 {
        return Vec::new();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let has_main = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-parse", "--verify", "--quiet", "refs/heads/main"])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let mut stream = Vec::new();
    for i in 1..=count {
        let message = format!("{label} {i}\n");
        let content = format!("value={label}-{i}\n");
        write!(
            stream,
            "commit refs/heads/main\nmark :{i}\ncommitter Warren Bench <bench@warren.invalid> {now} +0000\ndata {}\n{message}",
            message.len()
        )
        .expect("write");
        if i == 1 && has_main {
            stream.extend_from_slice(b"from refs/heads/main^0\n");
        }
        write!(
            stream,
            "M 100644 inline value.txt\ndata {}\n{content}\n",
            content.len()
        )
        .expect("write");
    }
    let marks = tempfile::NamedTempFile::new().expect("marks file");
    let mut child = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["fast-import", "--quiet"])
        .arg(format!("--export-marks={}", marks.path().display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("git fast-import");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&stream)
        .expect("feed git fast-import");
    assert!(
        child.wait().expect("git fast-import").success(),
        "git fast-import failed"
    );
    let marks = std::fs::read_to_string(marks.path()).expect("marks");
    let mut commits: Vec<(usize, String)> = marks
        .lines()
        .filter_map(|l| {
            let (mark, id) = l.split_once(' ')?;
            Some((mark.trim_start_matches(':').parse().ok()?, id.to_string()))
        })
        .collect();
    commits.sort();
    assert_eq!(commits.len(), count, "fast-import made every commit");
    commits.into_iter().map(|(_, id)| id).collect()
}

/// When a commit was made: `git commit` started and returned (epoch ms).
/// The branch moves in between, shortly before git returns.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    pub started: f64,
    pub returned: f64,
}

/// Makes an (empty) commit with `git commit`; returns its id and when.
pub fn commit_now(repo: &Repo, message: &str) -> (String, Committed) {
    let started = now_ms();
    git(
        &repo.path,
        &[
            "commit",
            "-q",
            "--allow-empty",
            "--no-verify",
            "-m",
            message,
        ],
    );
    let returned = now_ms();
    (
        git(&repo.path, &["rev-parse", "HEAD"]),
        Committed { started, returned },
    )
}

/// Milliseconds since the Unix epoch, with sub-millisecond precision.
pub fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// The repository location the observer puts in its jobs (canonical path).
pub fn location(repo: &Path) -> String {
    std::fs::canonicalize(repo)
        .expect("canonical path")
        .to_str()
        .expect("utf8 path")
        .to_string()
}
