//! The job sandbox (`--sandbox bwrap|none`, issue 14): with bubblewrap,
//! each test runs in new mount, PID, IPC and UTS namespaces (and a new
//! network namespace with `--network none`) where it sees the system
//! read-only, its own checkout read-write at [`CHECKOUT`], a private `/tmp`
//! and `HOME` (both tmpfs, gone with the job), `/proc` of its own PID
//! namespace, a minimal `/dev`, the paths given with `--sandbox-ro`
//! read-only, and nothing else of the host: not the runner's workdir, not
//! the other clones, not the runner's processes or environment.
//!
//! The runner starts `warren supervise -- bwrap ARGS -- sh -c CMD`: the
//! supervisor stays outside the sandbox and keeps its job (it kills the
//! tree when the runner's liveness pipe closes); bubblewrap is its test
//! process. Killing bubblewrap kills the sandbox's init (`--die-with-parent`),
//! and the kernel kills every process of a PID namespace whose init dies,
//! so nothing started inside can outlive the job, whatever it detaches.
//!
//! bubblewrap reports on a status descriptor (`--json-status-fd`): an
//! `exit-code` line only once the sandbox was set up and the test ran. A
//! job whose bubblewrap ended without one is an `error` ("the sandbox could
//! not be set up"), never a test run with less isolation than advertised.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use model::Sandbox;

/// Where the job's checkout is, inside the sandbox (its working folder).
pub const CHECKOUT: &str = "/warren/checkout";
/// The private HOME inside the sandbox (a tmpfs).
pub const HOME: &str = "/warren/home";
/// The file descriptor on which bubblewrap writes its JSON status.
pub const STATUS_FD: i32 = 4;
/// How long the start-up check of bubblewrap may take.
const PROBE_DEADLINE: Duration = Duration::from_secs(10);

/// `--sandbox`: what the runner was asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SandboxChoice {
    /// bwrap when it works on this machine, else none (with a warning).
    #[default]
    Auto,
    Bwrap,
    None,
}

impl std::str::FromStr for SandboxChoice {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(SandboxChoice::Auto),
            "bwrap" => Ok(SandboxChoice::Bwrap),
            "none" => Ok(SandboxChoice::None),
            other => Err(format!("expected bwrap, none or auto, got {other:?}")),
        }
    }
}

/// `--network`: whether a sandboxed job shares the host's network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Network {
    #[default]
    Host,
    /// A network namespace of its own, with only a loopback interface.
    None,
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "host" => Ok(Network::Host),
            "none" => Ok(Network::None),
            other => Err(format!("expected host or none, got {other:?}")),
        }
    }
}

/// How jobs are isolated and limited: the runner's sandbox and limit
/// flags.
#[derive(Debug, Clone, Default)]
pub struct Isolation {
    pub sandbox: SandboxChoice,
    pub network: Network,
    /// Extra host paths visible read-only inside the sandbox (toolchains
    /// outside `/usr`, such as `~/.cargo` and `~/.rustup`).
    pub read_only: Vec<PathBuf>,
    /// Bytes of memory a job may use (a cgroup, else `RLIMIT_AS`).
    pub memory: Option<u64>,
    /// How many processes and threads a job may have (a cgroup).
    pub pids: Option<u64>,
}

/// The sandbox the runner settled on at start.
#[derive(Debug, Clone)]
pub struct JobSandbox {
    pub kind: Sandbox,
    network: Network,
    read_only: Vec<PathBuf>,
    bwrap: PathBuf,
}

impl JobSandbox {
    pub fn none() -> Self {
        JobSandbox {
            kind: Sandbox::Off,
            network: Network::Host,
            read_only: Vec::new(),
            bwrap: PathBuf::new(),
        }
    }

    /// The network its jobs get.
    pub fn network(&self) -> Network {
        self.network
    }

    /// The same sandbox with a network namespace of its own (a job's
    /// `network: false`). Without a sandbox there is nothing to cut off:
    /// the caller must refuse such a job instead.
    pub fn without_network(&self) -> JobSandbox {
        JobSandbox {
            network: Network::None,
            ..self.clone()
        }
    }

    /// Settles `isolation.sandbox`: `bwrap` must work (checked by running a
    /// trivial command in the very sandbox jobs get), `auto` falls back to
    /// none with the reason as a warning. Err: an explicit `bwrap` that
    /// does not work (one line, naming the flag).
    pub async fn choose(isolation: &Isolation) -> Result<(JobSandbox, Option<String>), String> {
        let unsandboxed_network = || {
            Err(
                "--network none: only a sandboxed job can be cut off the network (--sandbox bwrap)"
                    .to_string(),
            )
        };
        if isolation.sandbox == SandboxChoice::None {
            if isolation.network == Network::None {
                return unsandboxed_network();
            }
            return Ok((JobSandbox::none(), None));
        }
        let checked = match find_bwrap() {
            None => Err("bwrap (Debian's bubblewrap) is not installed".to_string()),
            Some(bwrap) => {
                let sandbox = JobSandbox {
                    kind: Sandbox::Bwrap,
                    network: isolation.network,
                    read_only: isolation.read_only.clone(),
                    bwrap,
                };
                sandbox.probe().await.map(|()| sandbox)
            }
        };
        match (checked, isolation.sandbox) {
            (Ok(sandbox), _) => Ok((sandbox, None)),
            (Err(why), SandboxChoice::Bwrap) => Err(format!("--sandbox bwrap: {why}")),
            (Err(why), _) if isolation.network == Network::None => Err(format!(
                "--network none: needs the sandbox, and bwrap does not work here: {why}"
            )),
            (Err(why), _) => Ok((
                JobSandbox::none(),
                Some(format!(
                    "jobs run WITHOUT a sandbox: {why}; a test can read and write everything this runner's user can (give --sandbox none to choose this and silence the warning)"
                )),
            )),
        }
    }

    /// Runs `true` in the sandbox a job would get (an empty folder as the
    /// checkout), within a deadline.
    async fn probe(&self) -> Result<(), String> {
        let dir =
            tempfile_dir().map_err(|e| format!("cannot make a folder to check bwrap: {e}"))?;
        // No status descriptor here: bwrap told to write to one that is
        // not open hangs instead of failing.
        let mut args = self.wrapper(&dir, false);
        args.push("/bin/sh".into());
        args.push("-c".into());
        args.push("exit 0".into());
        let (program, rest) = args.split_first().expect("the wrapper names bwrap");
        let run = tokio::process::Command::new(program)
            .args(rest)
            .current_dir(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .output();
        let outcome = tokio::time::timeout(PROBE_DEADLINE, run).await;
        let _ = std::fs::remove_dir(&dir);
        match outcome {
            Err(_) => Err(format!(
                "bwrap did not run a trivial command within {} s",
                PROBE_DEADLINE.as_secs()
            )),
            Ok(Err(e)) => Err(format!("cannot run {}: {e}", self.bwrap.display())),
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => {
                let said = String::from_utf8_lossy(&out.stderr);
                let said = said.lines().last().unwrap_or("").trim();
                Err(format!(
                    "bwrap cannot make a sandbox here ({}: {said}); in a container it needs user namespaces or CAP_SYS_ADMIN (see compose.yaml)",
                    out.status
                ))
            }
        }
    }

    /// What goes before the test's `sh -c CMD`: nothing without a sandbox,
    /// else `bwrap ARGS --`, with `checkout` (a host path) as the working
    /// folder at [`CHECKOUT`]. With `status`, bubblewrap reports on
    /// [`STATUS_FD`], which must then be open.
    pub fn wrapper(&self, checkout: &Path, status: bool) -> Vec<OsString> {
        if self.kind == Sandbox::Off {
            return Vec::new();
        }
        let mut args: Vec<OsString> = vec![self.bwrap.clone().into()];
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
        push(&[
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--die-with-parent",
            "--new-session",
            "--hostname",
            "warren-job",
        ]);
        if self.network == Network::None {
            push(&["--unshare-net"]);
        }
        push(&["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]);
        for dir in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
            match std::fs::symlink_metadata(dir) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(dir) {
                        args.push("--symlink".into());
                        args.push(target.into());
                        args.push(dir.into());
                    }
                }
                Ok(meta) if meta.is_dir() => {
                    args.extend(["--ro-bind".into(), dir.into(), dir.into()]);
                }
                _ => {}
            }
        }
        for path in &self.read_only {
            // A path that is missing would make every job fail: skipped.
            if path.exists() {
                args.extend([
                    "--ro-bind".into(),
                    path.clone().into_os_string(),
                    path.clone().into_os_string(),
                ]);
            }
        }
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
        push(&[
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", HOME,
        ]);
        args.extend([
            "--bind".into(),
            checkout.as_os_str().to_owned(),
            CHECKOUT.into(),
        ]);
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
        push(&["--chdir", CHECKOUT]);
        push(&["--setenv", "HOME", HOME, "--setenv", "TMPDIR", "/tmp"]);
        // Cargo writes its registry cache and credentials under CARGO_HOME:
        // the private HOME, not a read-only toolchain folder.
        push(&["--setenv", "CARGO_HOME", &format!("{HOME}/.cargo")]);
        // rustup's proxies find their toolchains through RUSTUP_HOME, which
        // otherwise follows HOME into the empty private one.
        if let Some(rustup) = self.rustup_home() {
            args.extend(["--setenv".into(), "RUSTUP_HOME".into(), rustup.into()]);
        }
        if status {
            args.extend(["--json-status-fd".into(), STATUS_FD.to_string().into()]);
        }
        args.push("--".into());
        args
    }

    /// The runner's rustup home, when it is visible in the sandbox.
    fn rustup_home(&self) -> Option<PathBuf> {
        let home = std::env::var_os("RUSTUP_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".rustup")))?;
        self.read_only
            .iter()
            .any(|p| home.starts_with(p))
            .then_some(home)
    }
}

/// `bwrap` on the PATH.
fn find_bwrap() -> Option<PathBuf> {
    git::find_program("bwrap", &std::env::var_os("PATH").unwrap_or_default())
}

/// An empty folder of our own under the temp folder.
fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "warren-sandbox-check-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

/// Whether bubblewrap's status (what it wrote on [`STATUS_FD`]) says the
/// sandbox was set up and the test ran to its end.
pub fn ran_to_the_end(status: &str) -> bool {
    status.contains("\"exit-code\"")
}

/// Parses a byte count: digits with an optional K, M, G or T suffix
/// (powers of 1024; `KiB`/`KB` and the like are read the same way).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| {
        format!("expected a number of bytes such as 536870912 or 512M, got {text:?}")
    })?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use K, M, G or T)"
            ))
        }
    };
    let bytes = number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes == 0 {
        return Err("a memory limit of 0 bytes would stop every job".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_take_binary_suffixes() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert_eq!(parse_bytes("200MiB"), Ok(200 << 20));
        assert_eq!(parse_bytes("8k"), Ok(8 << 10));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5X").is_err());
        assert!(parse_bytes("99999999999T").is_err());
    }

    #[test]
    fn choices_parse() {
        assert_eq!("bwrap".parse(), Ok(SandboxChoice::Bwrap));
        assert_eq!("none".parse(), Ok(SandboxChoice::None));
        assert_eq!("auto".parse(), Ok(SandboxChoice::Auto));
        assert!("docker".parse::<SandboxChoice>().is_err());
        assert_eq!("none".parse(), Ok(Network::None));
        assert!("off".parse::<Network>().is_err());
    }

    #[test]
    fn the_sandbox_shows_the_checkout_at_a_fixed_place_and_no_more_of_the_host() {
        let sandbox = JobSandbox {
            kind: Sandbox::Bwrap,
            network: Network::None,
            read_only: vec![
                PathBuf::from("/usr"),
                PathBuf::from("/nonexistent-toolchain"),
            ],
            bwrap: PathBuf::from("/usr/bin/bwrap"),
        };
        let args: Vec<String> = sandbox
            .wrapper(Path::new("/work/repos/abc"), true)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let text = args.join(" ");
        assert!(text.starts_with("/usr/bin/bwrap "));
        assert!(text.ends_with(" --"));
        for expected in [
            "--unshare-pid",
            "--unshare-net",
            "--die-with-parent",
            "--bind /work/repos/abc /warren/checkout",
            "--chdir /warren/checkout",
            "--tmpfs /tmp",
            "--tmpfs /warren/home",
            "--setenv HOME /warren/home",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
        assert!(!text.contains("nonexistent-toolchain"), "{text}");
        assert!(text.contains("--json-status-fd 4 --"), "{text}");
        assert!(JobSandbox::none().wrapper(Path::new("/x"), true).is_empty());
    }

    #[test]
    fn a_job_without_network_gets_its_own_network_namespace_on_a_host_network_runner() {
        let host = JobSandbox {
            kind: Sandbox::Bwrap,
            network: Network::Host,
            read_only: Vec::new(),
            bwrap: PathBuf::from("/usr/bin/bwrap"),
        };
        let has_unshare_net = |sandbox: &JobSandbox| {
            sandbox
                .wrapper(Path::new("/c"), false)
                .iter()
                .any(|a| a == "--unshare-net")
        };
        assert!(!has_unshare_net(&host));
        let cut_off = host.without_network();
        assert_eq!(cut_off.network(), Network::None);
        assert!(has_unshare_net(&cut_off));
        assert_eq!(
            host.network(),
            Network::Host,
            "the runner's own is unchanged"
        );
    }
}
