//! `warren supervise -- sh -c CMD`: the small process that stands between
//! the runner and a test, so that a test's whole process tree dies with its
//! runner however the runner dies (even by SIGKILL, which no handler sees).
//!
//! The runner starts it with the read end of a "liveness" pipe on fd 3 and
//! keeps the write end. The supervisor is the child subreaper of everything
//! the test starts (a daemon that leaves with `setsid` or a double fork is
//! reparented to it), starts the test in a process group of its own, and
//! waits for whichever comes first: the test's exit, or end-of-file on the
//! pipe. End-of-file means the runner closed its end (timeout, cancel,
//! shutdown) or died: the kernel closes a dead process's files. Either way
//! it kills the test's group and every remaining descendant, then exits
//! reporting the test's status as its own.
//!
//! Why a process and not a PID namespace or a cgroup: it needs no
//! privilege and works in any container. A PID namespace needs user
//! namespaces, which Docker's default seccomp profile refuses; a cgroup
//! needs delegation. Where they are available the runner adds both (see
//! `sandbox.rs` and `limits.rs`): the test is then `bwrap … -- sh -c CMD`,
//! entered into the job's cgroups before this process execs, and this
//! supervisor works as before, with bubblewrap as its test.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};
use std::time::Duration;

use crate::process::{become_non_dumpable, kill_all_children};

/// The file descriptor on which the supervisor finds the read end of the
/// runner's liveness pipe.
pub const LIVENESS_FD: RawFd = 3;

/// How often to look for the test's exit where the kernel has no pidfd
/// (Linux before 5.3); with one, the wait is purely event-driven.
const POLL_WITHOUT_PIDFD: Duration = Duration::from_millis(20);

/// Exit status when the supervisor itself cannot do its work (as `env` and
/// `timeout` use 125 for their own failures).
const SUPERVISOR_FAILED: u8 = 125;

/// Entry point of `warren supervise -- PROGRAM ARGS...`.
pub fn main(command: &[OsString]) -> ExitCode {
    match supervise(command) {
        Ok(status) => exit_like(status),
        Err(err) => {
            eprintln!("warren supervise: {err}");
            ExitCode::from(SUPERVISOR_FAILED)
        }
    }
}

/// Runs the test and returns its wait status once it and everything it
/// started are gone.
fn supervise(command: &[OsString]) -> std::io::Result<libc::c_int> {
    let (program, args) = command.split_first().ok_or_else(|| {
        std::io::Error::other("expected the command to run after `warren supervise --`")
    })?;
    // SAFETY: prctl only sets flags and the name of this process (`ps`
    // would otherwise call it `exe`, after /proc/self/exe).
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
        libc::prctl(libc::PR_SET_NAME, c"warren".as_ptr());
    }
    become_non_dumpable();
    // The test must not inherit the pipe (it could keep the runner's
    // death from being noticed only by holding a write end, which it never
    // gets, but it has no business with the read end either).
    // SAFETY: fcntl on a descriptor number; no memory involved.
    if unsafe { libc::fcntl(LIVENESS_FD, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
        return Err(std::io::Error::other(format!(
            "no liveness pipe on fd {LIVENESS_FD}: only the runner starts this command"
        )));
    }
    let mut test = Command::new(program);
    test.args(args).process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of ours. A
    // second layer: should the supervisor itself be killed, the test's
    // shell goes with it (and the runner, as subreaper, gets the rest).
    unsafe {
        test.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = test
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot start {program:?}: {e}")))?;
    let pid = child.id() as libc::pid_t;
    // std's handle is not used to wait: the status is read with waitpid.
    drop(child);
    let exited = wait_for_exit_or_eof(pid);
    // The test's group first (one signal reaches most of the tree), then
    // every descendant that left it.
    // SAFETY: kill(2) on the group this process created; no memory involved.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    let status = match exited {
        Some(status) => status,
        None => wait_pid(pid),
    };
    kill_all_children();
    Ok(status)
}

/// Waits until the test `pid` exits (its wait status) or the liveness pipe
/// reports end-of-file (`None`: the test is still to be killed).
fn wait_for_exit_or_eof(pid: libc::pid_t) -> Option<libc::c_int> {
    // SAFETY: pidfd_open takes a pid and flags; it returns a new descriptor
    // or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    let timeout_ms = if pidfd >= 0 {
        -1
    } else {
        POLL_WITHOUT_PIDFD.as_millis() as libc::c_int
    };
    let mut fds = [
        libc::pollfd {
            fd: LIVENESS_FD,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: pidfd,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let result = loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            break Some(status);
        }
        let count = if pidfd >= 0 { 2 } else { 1 };
        // SAFETY: poll reads and writes the local array of `count` entries.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), count, timeout_ms) };
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // Cannot watch the pipe: stop the test rather than risk it
            // outliving its runner.
            break None;
        }
        if fds[0].revents != 0 && liveness_closed() {
            break None;
        }
        for fd in &mut fds {
            fd.revents = 0;
        }
    };
    if pidfd >= 0 {
        // SAFETY: closing the descriptor pidfd_open gave us.
        unsafe {
            libc::close(pidfd);
        }
    }
    result
}

/// Whether the runner's end of the liveness pipe is closed. Nothing is
/// ever written to it; bytes that arrive anyway are read and ignored.
fn liveness_closed() -> bool {
    let mut buf = [0u8; 64];
    // SAFETY: read into a local buffer of its length.
    let read = unsafe { libc::read(LIVENESS_FD, buf.as_mut_ptr().cast(), buf.len()) };
    if read >= 0 {
        return read == 0;
    }
    // Any error but an interruption means the pipe cannot be watched:
    // treated as closed, so the test is stopped rather than left running.
    std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
}

/// Waits for `pid` and returns its wait status.
fn wait_pid(pid: libc::pid_t) -> libc::c_int {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into a local.
        let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
        if reaped == pid {
            return status;
        }
        if reaped < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // Already reaped: report it as killed, which it was.
            return libc::SIGKILL;
        }
    }
}

/// Ends this process the way the test ended: with its exit code, or by the
/// same signal, so the runner still sees "killed by a signal".
fn exit_like(status: libc::c_int) -> ExitCode {
    if libc::WIFEXITED(status) {
        return ExitCode::from(libc::WEXITSTATUS(status) as u8);
    }
    let signal = libc::WTERMSIG(status);
    // SAFETY: setrlimit, signal and sigprocmask only change this process's
    // settings; raise sends the signal to ourselves. No core file is
    // written for a signal that would dump one (the test's, not ours).
    unsafe {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
    // A signal whose default is not to terminate: the shell's convention.
    ExitCode::from(128u8.wrapping_add(signal as u8))
}
