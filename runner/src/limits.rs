//! Per-job resource limits (`--job-memory`, `--job-pids`): a cgroup per
//! job where the runner can make one, else `RLIMIT_AS` for memory.
//!
//! - cgroup v2 (`/sys/fs/cgroup` is cgroup2): `memory.max` (and
//!   `memory.swap.max` 0) and `pids.max` in `<own cgroup>/warren-<id>/job-N`,
//!   after enabling the two controllers for the runner's folder.
//! - cgroup v1 (hybrid hierarchies): `memory.limit_in_bytes` (and
//!   `memory.memsw.limit_in_bytes` where swap is accounted) under the memory
//!   hierarchy, `pids.max` under the pids one, each in
//!   `<own cgroup>/warren-<id>/job-N`.
//! - neither (no permission, no controller): memory falls back to
//!   `RLIMIT_AS` of the job's processes (address space, not resident memory:
//!   stricter for programs that map much and touch little), and there is no
//!   process limit (for root, `RLIMIT_NPROC` is not enforced). The runner
//!   says so at start.
//!
//! The job's supervisor enters the job's cgroups before it runs anything
//! (it writes `0` to each `cgroup.procs` between fork and exec), so every
//! process of the test is counted. The cgroup is removed after the job,
//! once its processes are gone; a runner that starts removes the empty
//! folders that runners killed before it left.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where jobs' cgroups go.
#[derive(Debug, Clone)]
pub struct Limits {
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    /// The runner's cgroup folders, one per hierarchy holding a controller
    /// we limit with (one folder for v2).
    cgroups: Option<Cgroups>,
}

#[derive(Debug, Clone)]
enum Cgroups {
    V2(PathBuf),
    V1 {
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
}

/// The cgroup folders of one job, removed by [`JobCgroup::remove`].
#[derive(Debug, Default)]
pub struct JobCgroup {
    dirs: Vec<PathBuf>,
    /// Open `cgroup.procs` files: the supervisor writes `0` to each
    /// between fork and exec.
    pub procs: Vec<OwnedFd>,
    /// Where the kernel counts OOM kills of this job.
    events: Option<PathBuf>,
}

static JOB_NUMBER: AtomicU64 = AtomicU64::new(0);
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl Limits {
    pub fn unlimited() -> Limits {
        Limits {
            memory: None,
            pids: None,
            cgroups: None,
        }
    }

    /// Prepares the runner's cgroup folders for `memory` and `pids`; the
    /// warnings say what cannot be enforced and how it falls back.
    pub fn prepare(memory: Option<u64>, pids: Option<u64>, runner: &str) -> (Limits, Vec<String>) {
        let mut warnings = Vec::new();
        if memory.is_none() && pids.is_none() {
            return (Limits::unlimited(), warnings);
        }
        let name = format!("warren-{runner}-{}", std::process::id());
        let cgroups = if is_cgroup2(Path::new(CGROUP_ROOT)) {
            match prepare_v2(&name, memory.is_some(), pids.is_some()) {
                Ok(dir) => Some(Cgroups::V2(dir)),
                Err(why) => {
                    warnings.push(format!("cannot make cgroups (v2) for jobs: {why}"));
                    None
                }
            }
        } else {
            let memory_dir = memory
                .map(|_| prepare_v1("memory", &name))
                .transpose()
                .unwrap_or_else(|why| {
                    warnings.push(format!("cannot make a memory cgroup (v1) for jobs: {why}"));
                    None
                });
            let pids_dir = pids
                .map(|_| prepare_v1("pids", &name))
                .transpose()
                .unwrap_or_else(|why| {
                    warnings.push(format!("cannot make a pids cgroup (v1) for jobs: {why}"));
                    None
                });
            (memory_dir.is_some() || pids_dir.is_some()).then_some(Cgroups::V1 {
                memory: memory_dir,
                pids: pids_dir,
            })
        };
        let limits = Limits {
            memory,
            pids,
            cgroups,
        };
        if memory.is_some() && !limits.memory_by_cgroup() {
            warnings.push(
                "--job-memory is enforced with RLIMIT_AS (address space per process), not a cgroup"
                    .into(),
            );
        }
        if pids.is_some() && !limits.pids_by_cgroup() {
            warnings.push("--job-pids is NOT enforced: no pids cgroup could be made".into());
        }
        (limits, warnings)
    }

    fn memory_by_cgroup(&self) -> bool {
        match &self.cgroups {
            Some(Cgroups::V2(_)) => true,
            Some(Cgroups::V1 { memory, .. }) => memory.is_some(),
            None => false,
        }
    }

    fn pids_by_cgroup(&self) -> bool {
        match &self.cgroups {
            Some(Cgroups::V2(_)) => true,
            Some(Cgroups::V1 { pids, .. }) => pids.is_some(),
            None => false,
        }
    }

    /// Removes the runner's own cgroup folders (at exit; empty by then).
    pub fn remove_runner_dirs(&self) {
        let dirs = match &self.cgroups {
            Some(Cgroups::V2(dir)) => vec![dir.clone()],
            Some(Cgroups::V1 { memory, pids }) => memory.iter().chain(pids).cloned().collect(),
            None => Vec::new(),
        };
        for dir in dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// The address-space limit to set on the job's processes, when memory
    /// is not limited by a cgroup.
    pub fn rlimit_as(&self) -> Option<u64> {
        self.memory.filter(|_| !self.memory_by_cgroup())
    }

    /// Makes the cgroup(s) of the next job, with the limits written.
    pub fn job(&self) -> Result<JobCgroup, String> {
        let mut job = JobCgroup::default();
        let Some(cgroups) = &self.cgroups else {
            return Ok(job);
        };
        let name = format!("job-{}", JOB_NUMBER.fetch_add(1, Ordering::SeqCst));
        let made = (|| -> Result<(), String> {
            match cgroups {
                Cgroups::V2(parent) => {
                    let dir = make_dir(&parent.join(&name), &mut job)?;
                    if let Some(bytes) = self.memory {
                        write(&dir.join("memory.max"), &bytes.to_string())?;
                        // Not all kernels account swap: best effort.
                        let _ = write(&dir.join("memory.swap.max"), "0");
                        job.events = Some(dir.join("memory.events"));
                    }
                    if let Some(pids) = self.pids {
                        write(&dir.join("pids.max"), &pids.to_string())?;
                    }
                    job.procs.push(open_procs(&dir)?);
                }
                Cgroups::V1 { memory, pids } => {
                    if let (Some(parent), Some(bytes)) = (memory, self.memory) {
                        let dir = make_dir(&parent.join(&name), &mut job)?;
                        write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                        let memsw = dir.join("memory.memsw.limit_in_bytes");
                        if memsw.exists() {
                            let _ = write(&memsw, &bytes.to_string());
                        }
                        job.events = Some(dir.join("memory.oom_control"));
                        job.procs.push(open_procs(&dir)?);
                    }
                    if let (Some(parent), Some(count)) = (pids, self.pids) {
                        let dir = make_dir(&parent.join(&name), &mut job)?;
                        write(&dir.join("pids.max"), &count.to_string())?;
                        job.procs.push(open_procs(&dir)?);
                    }
                }
            }
            Ok(())
        })();
        match made {
            Ok(()) => Ok(job),
            Err(why) => {
                job.remove();
                Err(why)
            }
        }
    }
}

impl JobCgroup {
    /// Whether the kernel killed a process of the job for going over its
    /// memory limit.
    pub fn out_of_memory(&self) -> bool {
        let Some(events) = &self.events else {
            return false;
        };
        std::fs::read_to_string(events).is_ok_and(|text| {
            text.lines().any(|line| {
                let mut words = line.split_whitespace();
                matches!(words.next(), Some("oom_kill" | "oom"))
                    && words
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0)
                        > 0
            })
        })
    }

    /// Kills whatever is still in the job's cgroups, then removes them.
    pub fn remove(&mut self) {
        self.procs.clear();
        for dir in self.dirs.drain(..).rev() {
            remove_cgroup(&dir);
        }
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Removes a job's cgroup folder: kills its processes (none should be left
/// by now) and retries while the kernel finishes tearing them down.
fn remove_cgroup(dir: &Path) {
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) with a pid; no memory involved.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    tracing::warn!(cgroup = %dir.display(), "cannot remove a job's cgroup");
}

fn make_dir(dir: &Path, job: &mut JobCgroup) -> Result<PathBuf, String> {
    // The runner's folder, should something have removed it while empty
    // (v1: no controller setting to restore there).
    if let Some(parent) = dir.parent() {
        let _ = std::fs::create_dir(parent);
    }
    std::fs::create_dir(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    job.dirs.push(dir.to_path_buf());
    Ok(dir.to_path_buf())
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing {value} to {}: {e}", path.display()))
}

fn open_procs(dir: &Path) -> Result<OwnedFd, String> {
    let path = dir.join("cgroup.procs");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map(OwnedFd::from)
        .map_err(|e| format!("opening {}: {e}", path.display()))
}

fn is_cgroup2(path: &Path) -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed local struct.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == CGROUP2_SUPER_MAGIC
    }
}

/// This process's cgroup path in the hierarchy whose `/proc/self/cgroup`
/// line matches `which` (`""` for v2's `0::`, else the controller name).
fn own_cgroup(which: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if which.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == which)
        };
        matches.then(|| path.to_string())
    })
}

/// `<mount><own path>`, or the mount itself when this process's path is not
/// visible there (a cgroup namespace, or a mount of part of the tree).
fn base_dir(mount: &Path, own: Option<String>) -> PathBuf {
    let own = own.unwrap_or_default();
    let candidate = mount.join(own.trim_start_matches('/'));
    if candidate.is_dir() {
        candidate
    } else {
        mount.to_path_buf()
    }
}

/// Makes `<base>/<name>` for the runner, after removing the empty folders
/// of runners that are gone.
fn runner_dir(base: &Path, name: &str) -> Result<PathBuf, String> {
    sweep_dead_runners(base);
    let dir = base.join(name);
    match std::fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(dir),
        Err(e) => Err(format!("creating {}: {e}", dir.display())),
    }
}

/// Removes `warren-*-<pid>` folders under `base` whose runner process no
/// longer exists (only empty cgroups can be removed, so nothing running is
/// touched).
fn sweep_dead_runners(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("warren-")
            .and_then(|rest| rest.rsplit('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(jobs) = std::fs::read_dir(entry.path()) {
            for job in jobs.flatten() {
                if job.file_name().to_string_lossy().starts_with("job-") {
                    let _ = std::fs::remove_dir(job.path());
                }
            }
        }
        let _ = std::fs::remove_dir(entry.path());
    }
}

fn prepare_v1(controller: &str, name: &str) -> Result<PathBuf, String> {
    let mount = Path::new(CGROUP_ROOT).join(controller);
    if !mount.join("cgroup.procs").exists() {
        return Err(format!("no {controller} hierarchy at {}", mount.display()));
    }
    let base = base_dir(&mount, own_cgroup(controller));
    let dir = runner_dir(&base, name)?;
    // Check that a job's folder can be made and limited here.
    let probe = dir.join("job-check");
    let _ = std::fs::remove_dir(&probe);
    std::fs::create_dir(&probe).map_err(|e| format!("creating {}: {e}", probe.display()))?;
    let file = if controller == "memory" {
        "memory.limit_in_bytes"
    } else {
        "pids.max"
    };
    let checked = std::fs::OpenOptions::new()
        .write(true)
        .open(probe.join(file))
        .map_err(|e| format!("opening {file}: {e}"));
    let _ = std::fs::remove_dir(&probe);
    checked.map(|_| dir)
}

fn prepare_v2(name: &str, memory: bool, pids: bool) -> Result<PathBuf, String> {
    let mount = Path::new(CGROUP_ROOT);
    let base = base_dir(mount, own_cgroup(""));
    let wanted: Vec<&str> = [("memory", memory), ("pids", pids)]
        .into_iter()
        .filter_map(|(c, on)| on.then_some(c))
        .collect();
    let available = std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
    for controller in &wanted {
        if !available.split_whitespace().any(|c| c == *controller) {
            return Err(format!(
                "the {controller} controller is not delegated to {}",
                base.display()
            ));
        }
    }
    let dir = runner_dir(&base, name)?;
    // Both the folder holding the runner's and its own must pass the
    // controllers down (cgroup v2's "no internal processes" rule makes the
    // first fail while the runner itself lives in `base`).
    let enable: String = wanted.iter().map(|c| format!("+{c} ")).collect();
    for parent in [&base, &dir] {
        let control = parent.join("cgroup.subtree_control");
        let current = std::fs::read_to_string(&control).unwrap_or_default();
        if wanted
            .iter()
            .all(|c| current.split_whitespace().any(|have| have == *c))
        {
            continue;
        }
        write(&control, enable.trim()).inspect_err(|_| {
            let _ = std::fs::remove_dir(&dir);
        })?;
    }
    Ok(dir)
}
