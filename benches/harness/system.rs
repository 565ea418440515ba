//! What the harness reads from the machine: resident memory and CPU time of
//! processes (from /proc), the machine itself, the broker's version and
//! process, and the commit being measured.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Resident memory of a process in MiB (VmRSS), if it is alive.
pub fn rss_mib(pid: i32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A `/proc/PID/status` memory field (`VmRSS:`, `VmHWM:`) in MiB, if the
/// process is alive.
pub fn status_mib(pid: i32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU time of a process in clock ticks: (its own utime+stime, that of
/// its waited-for children: the git and test processes it ran).
pub fn cpu_ticks(pid: i32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may
    // contain spaces: state is field 3, utime 14, stime 15, cutime 16,
    // cstime 17.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let get = |index: usize| fields.get(index - 3)?.parse::<u64>().ok();
    Some((get(14)? + get(15)?, get(16)? + get(17)?))
}

/// Clock ticks per second (for [`cpu_ticks`]).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// A CPU-time reading of one process, to compute its CPU use over an
/// interval.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    pid: i32,
    own: u64,
    children: u64,
    at: Instant,
}

impl CpuMark {
    pub fn new(pid: i32) -> Option<CpuMark> {
        let (own, children) = cpu_ticks(pid)?;
        Some(CpuMark {
            pid,
            own,
            children,
            at: Instant::now(),
        })
    }

    /// CPU use since the mark, in percent of one core: (own, children's).
    pub fn percent_since(&self) -> Option<(f64, f64)> {
        let (own, children) = cpu_ticks(self.pid)?;
        let seconds = self.at.elapsed().as_secs_f64().max(1e-3);
        let per = |ticks: u64| ticks as f64 / ticks_per_second() / seconds * 100.0;
        Some((
            per(own.saturating_sub(self.own)),
            per(children.saturating_sub(self.children)),
        ))
    }
}

/// Whole-machine CPU counters from /proc/stat: (busy, total) jiffies.
pub fn machine_cpu() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return (0, 0);
    };
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    // idle and iowait
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Machine-wide CPU use between two [`machine_cpu`] readings, in percent
/// of all cores.
pub fn machine_busy_percent(before: (u64, u64), after: (u64, u64)) -> f64 {
    let busy = after.0.saturating_sub(before.0) as f64;
    let total = after.1.saturating_sub(before.1) as f64;
    if total > 0.0 {
        busy / total * 100.0
    } else {
        f64::NAN
    }
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The machine, in one paragraph's worth of facts.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub git_version: String,
    pub rabbitmq_version: String,
    pub erlang_version: String,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(f64::NAN);
    let (rabbitmq_version, erlang_version) = broker_versions();
    Machine {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model,
        memory_gib,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        git_version: output("git", &["--version"]).unwrap_or_else(|| "unknown".into()),
        rabbitmq_version,
        erlang_version,
    }
}

/// RabbitMQ's and Erlang's versions from the management API.
fn broker_versions() -> (String, String) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build();
    let overview = client.ok().and_then(|c| {
        c.get("http://127.0.0.1:15672/api/overview")
            .basic_auth("guest", Some("guest"))
            .send()
            .ok()?
            .json::<serde_json::Value>()
            .ok()
    });
    let field = |key: &str| {
        overview
            .as_ref()
            .and_then(|o| o[key].as_str())
            .unwrap_or("unknown (management API not reachable)")
            .to_string()
    };
    (field("rabbitmq_version"), field("erlang_version"))
}

/// The commit measured, and the uncommitted changes that go into the
/// `warren` binary (the harness's own files, `tests/` and BENCHMARKS.md
/// are left out).
pub fn measured_commit(repo: &Path) -> String {
    let head = output_in(repo, "git", &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let status = Command::new("git")
        .current_dir(repo)
        .args(["status", "--porcelain", "--untracked-files=all"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let changed: Vec<&str> = status
        .lines()
        .filter_map(|l| l.get(3..))
        .filter(|f| {
            !f.is_empty()
                && !f.starts_with("benches/")
                && !f.starts_with("tests/")
                && *f != "BENCHMARKS.md"
        })
        .collect();
    if changed.is_empty() {
        head
    } else {
        format!(
            "{head} plus uncommitted changes to {}",
            changed
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn output_in(dir: &Path, program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The process listening on TCP `port` on this machine (the broker), found
/// through /proc/net/tcp and the processes' socket descriptors.
pub fn listener_pid(port: u16) -> Option<i32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let listening = *state == "0A";
            let on_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port);
            if listening && on_port {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| Path::new(i) == target) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// Samples resident memory of a set of processes until stopped, keeping
/// the peak of each.
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<f64>>>,
}

impl RssSampler {
    pub fn start(pids: Vec<i32>, every: Duration) -> RssSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peaks = vec![0.0f64; pids.len()];
            loop {
                for (peak, pid) in peaks.iter_mut().zip(&pids) {
                    if let Some(rss) = rss_mib(*pid) {
                        *peak = peak.max(rss);
                    }
                }
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    return peaks;
                }
                std::thread::sleep(every);
            }
        });
        RssSampler {
            stop,
            handle: Some(handle),
        }
    }

    /// The peak resident memory (MiB) of each process, in the order given.
    pub fn finish(mut self) -> Vec<f64> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
