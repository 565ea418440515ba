//! The files of a job's repository the runner itself reads after the
//! checkout: `.warren-test` (the test command) and `.warren.yml` (the
//! repository's configuration and pipeline). Both come from the commit
//! under test, so they are untrusted input, read by the runner outside the
//! sandbox: each is read only if it is a regular file at the checkout's
//! root (a symlink is refused, never followed: it could point at anything
//! the runner's user can read, whose content would then be shown in the
//! job's log), in UTF-8, of at most [`MAX_REPO_FILE_BYTES`]
//! (`.warren-test`) or [`MAX_CONFIG_FILE_BYTES`] (`.warren.yml`, which
//! may describe a pipeline of 256 jobs).
//!
//! `.warren.yml` has three keys: `network` (see [`RepoConfig`]), `jobs`,
//! the pipeline (see [`crate::pipeline`]), and `cancel_superseded` (a
//! newer push of a branch cancels its older pipelines' unfinished jobs): without `jobs`, a commit is one
//! job running `.warren-test` (or the runner's default command). Unknown
//! keys are an error, not ignored: a runner that does not know a key
//! cannot do what the repository asked for with it, and a job must never
//! run with less than it asked for (say, a later key that narrows what a
//! job may reach) just because its runner is older. Every error names the
//! line (`.warren.yml is not valid: line 7: jobs.test.timeout: …`).

use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use crate::pipeline::{self, Pipeline, RawJobs};

/// The test command file at a repository's root.
pub const REPO_COMMAND_FILE: &str = ".warren-test";
/// The configuration file at a repository's root.
pub const REPO_CONFIG_FILE: &str = ".warren.yml";
/// The largest `.warren-test` the runner reads.
pub const MAX_REPO_FILE_BYTES: u64 = 64 * 1024;
/// The largest `.warren.yml` the runner reads.
pub const MAX_CONFIG_FILE_BYTES: u64 = 256 * 1024;

/// A repository's `.warren.yml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoConfig {
    /// `false`: the job gets a network namespace of its own (only a
    /// loopback), whatever the runner's `--network`. `true` (the default)
    /// gives a job no more than its runner's `--network` allows. It
    /// applies to every job of the pipeline.
    pub network: bool,
    /// The `jobs:` section, checked; None without one.
    pub jobs: Option<Pipeline>,
}

/// `.warren.yml` as the parser reads it.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with network, jobs, cancel_superseded and flaky (all optional)"
)]
struct RawConfig {
    #[serde(default = "yes")]
    network: bool,
    #[serde(default)]
    cancel_superseded: bool,
    /// What a flaky test makes of a split job: `fail` (the default) or
    /// `pass`.
    #[serde(default)]
    flaky: model::split::FlakyPolicy,
    /// `jobs:` with nothing under it is an empty section (an error), not
    /// an absent one.
    #[serde(default, deserialize_with = "present")]
    jobs: Option<RawJobs>,
}

fn yes() -> bool {
    true
}

fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<RawJobs>, D::Error> {
    RawJobs::deserialize(deserializer).map(Some)
}

impl Default for RepoConfig {
    fn default() -> Self {
        RepoConfig {
            network: true,
            jobs: None,
        }
    }
}

impl RepoConfig {
    /// Parses the text of a `.warren.yml`, its pipeline checked. An empty
    /// file (or one of comments only) is the default. Err: a reason for
    /// the job's `error` (`.warren.yml is not valid: line N: field: …`),
    /// which names the field (or the unknown key) and the line.
    pub fn parse(text: &str) -> Result<RepoConfig, String> {
        let blank = text.lines().all(|line| {
            let line = line.trim();
            line.is_empty() || line.starts_with('#') || line == "---"
        });
        if blank {
            return Ok(RepoConfig::default());
        }
        let raw: RawConfig = serde_norway::from_str(text).map_err(|e| pipeline::yaml_error(&e))?;
        let jobs = match raw.jobs {
            None => None,
            Some(jobs) => {
                let mut pipeline = Pipeline::build(jobs, text)?;
                pipeline.cancel_superseded = raw.cancel_superseded;
                pipeline.set_flaky(raw.flaky);
                Some(pipeline)
            }
        };
        Ok(RepoConfig {
            network: raw.network,
            jobs,
        })
    }

    /// Reads and parses `.warren.yml` in `checkout`; missing is the
    /// default. Err: a reason for the job's `error`, naming the file.
    pub fn read(checkout: &Path) -> Result<RepoConfig, String> {
        match read_repo_file_up_to(checkout, REPO_CONFIG_FILE, MAX_CONFIG_FILE_BYTES)? {
            None => Ok(RepoConfig::default()),
            Some(text) => RepoConfig::parse(&text),
        }
    }
}

/// The content of the file `name` at the root of `checkout`, or None when
/// there is none. Err (a reason naming the file) when it is a symlink, not
/// a regular file, larger than [`MAX_REPO_FILE_BYTES`], not UTF-8, or
/// cannot be read.
pub fn read_repo_file(checkout: &Path, name: &str) -> Result<Option<String>, String> {
    read_repo_file_up_to(checkout, name, MAX_REPO_FILE_BYTES)
}

/// [`read_repo_file`] with a cap of `max` bytes.
pub fn read_repo_file_up_to(
    checkout: &Path,
    name: &str,
    max: u64,
) -> Result<Option<String>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = checkout.join(name);
    // O_NOFOLLOW: a symlink as the last component fails with ELOOP instead
    // of being opened; O_NONBLOCK: a FIFO does not block the open.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path);
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(format!(
                "{name} is a symbolic link; the runner does not follow links in a repository's own files"
            ))
        }
        Err(e) => return Err(format!("cannot read {name}: {e}")),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if !meta.file_type().is_file() {
        return Err(format!("{name} is not a regular file"));
    }
    let too_large = || format!("{name} is larger than {max} bytes");
    if meta.len() > max {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(too_large());
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| format!("{name} is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_is_true_unless_the_file_says_false() {
        let parse = |text: &str| RepoConfig::parse(text).map(|c| c.network);
        assert_eq!(parse("network: false\n"), Ok(false));
        assert_eq!(parse("network: true\n"), Ok(true));
        assert_eq!(parse("# nothing yet\n"), Ok(true));
        assert_eq!(parse(""), Ok(true));
        assert_eq!(parse("---\n"), Ok(true));
        assert_eq!(parse("{}"), Ok(true));
        assert_eq!(parse("# ci\nnetwork: false # offline\n"), Ok(false));
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        let err = RepoConfig::parse("network: false\npipelines: [build]\n").unwrap_err();
        assert!(err.contains("unknown field `pipelines`"), "{err}");
        let err = RepoConfig::parse("Network: false\n").unwrap_err();
        assert!(err.contains("Network"), "{err}");
    }

    #[test]
    fn a_malformed_file_is_an_error() {
        for text in [
            "network: no\n",
            "network: \"false\"\n",
            "network: 0\n",
            "network:\n",
            "network: [false]\n",
            "- network: false\n",
            "network: false\nnetwork: true\n",
            "network: false\n  : [\n",
            "just words\n",
        ] {
            assert!(RepoConfig::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn repository_files_are_read_sealed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        assert_eq!(read_repo_file(root, REPO_CONFIG_FILE), Ok(None));
        assert_eq!(RepoConfig::read(root), Ok(RepoConfig::default()));

        std::fs::write(root.join(REPO_CONFIG_FILE), "network: false\n").expect("write");
        assert_eq!(
            RepoConfig::read(root),
            Ok(RepoConfig {
                network: false,
                jobs: None
            })
        );

        std::fs::write(root.join(REPO_CONFIG_FILE), "network: maybe\n").expect("write");
        let err = RepoConfig::read(root).unwrap_err();
        assert!(err.starts_with(".warren.yml is not valid: "), "{err}");

        // A symlink is refused, whether it points in or out of the checkout.
        let secret = tempfile::NamedTempFile::new().expect("secret");
        std::fs::write(secret.path(), "RUNNER-SECRET").expect("write");
        std::os::unix::fs::symlink(secret.path(), root.join(REPO_COMMAND_FILE)).expect("link");
        let err = read_repo_file(root, REPO_COMMAND_FILE).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(!err.contains("RUNNER-SECRET"), "{err}");
        std::fs::remove_file(root.join(REPO_CONFIG_FILE)).expect("rm");
        std::os::unix::fs::symlink(REPO_COMMAND_FILE, root.join(REPO_CONFIG_FILE)).expect("link");
        assert!(RepoConfig::read(root)
            .unwrap_err()
            .contains("symbolic link"));

        // Not a regular file, too large, not text.
        std::fs::create_dir(root.join("dir")).expect("mkdir");
        let err = read_repo_file(root, "dir").unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        let big = "x".repeat(MAX_REPO_FILE_BYTES as usize + 1);
        std::fs::write(root.join("big"), big).expect("write");
        let err = read_repo_file(root, "big").unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        std::fs::write(root.join("binary"), [0xff, 0xfe, 0x00]).expect("write");
        let err = read_repo_file(root, "binary").unwrap_err();
        assert!(err.contains("UTF-8"), "{err}");
        let fits = "y".repeat(MAX_REPO_FILE_BYTES as usize);
        std::fs::write(root.join("fits"), &fits).expect("write");
        assert_eq!(read_repo_file(root, "fits"), Ok(Some(fits)));
    }

    #[test]
    fn a_warren_yml_may_have_256_kib_and_no_more() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        // A pipeline of 200 KiB: over the .warren-test cap, under the file's.
        let mut text = String::from("network: true\njobs:\n  big:\n    run: echo big\n");
        while text.len() < 200 * 1024 {
            text.push_str("# padding padding padding padding padding padding padding\n");
        }
        std::fs::write(root.join(REPO_CONFIG_FILE), &text).expect("write");
        let config = RepoConfig::read(root).expect("read");
        assert!(config.jobs.is_some());
        assert!(read_repo_file(root, REPO_CONFIG_FILE)
            .unwrap_err()
            .contains("larger than 65536 bytes"));

        while text.len() < 300 * 1024 {
            text.push_str("# padding padding padding padding padding padding padding\n");
        }
        std::fs::write(root.join(REPO_CONFIG_FILE), &text).expect("write");
        let err = RepoConfig::read(root).unwrap_err();
        assert_eq!(err, ".warren.yml is larger than 262144 bytes");
    }
}
