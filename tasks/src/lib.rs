//! Background tasks that are never detached.
//!
//! A component starts every task it needs through one [`Tasks`]: each is
//! tracked, and awaited (for a bounded time) when the component stops. A
//! task meant to run as long as its owner that ends anyway (returns or
//! panics) is reported through [`Tasks::died`], so the owner can stop with
//! an error (and be restarted by Compose or systemd) or start its session
//! over, instead of running on without it.
//!
//! The dispatcher, the runner and the `warren` binary share it, so it lives
//! in a crate of its own: the broker crate, the one they all depend on, is
//! about RabbitMQ only. For the same reason it holds the one rule for
//! reading a secret from the environment ([`secret`]: `NAME`, or the file
//! `NAME_FILE` names).

mod secrets;

pub use secrets::{secret, SECRET_FILE_SUFFIX};

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A task that was meant to run as long as its owner and ended first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{task} {how}")]
pub struct Died {
    /// The task's name, as given when it was started.
    pub task: String,
    /// `ended` or `panicked: <message>`.
    pub how: String,
}

/// The tasks of one owner (a process, or a runner's broker session).
/// Cheap to clone; clones share the tasks.
#[derive(Debug, Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    stopping: CancellationToken,
    died: CancellationToken,
    /// The first lifetime task that ended early.
    death: Arc<Mutex<Option<Died>>>,
}

impl Tasks {
    /// Tasks of an owner that stops when `parent` is cancelled, or when
    /// [`Tasks::stop`] is called.
    pub fn new(parent: &CancellationToken) -> Self {
        Tasks {
            tracker: TaskTracker::new(),
            stopping: parent.child_token(),
            died: CancellationToken::new(),
            death: Arc::default(),
        }
    }

    /// Cancelled when the owner stops: every lifetime task watches it and
    /// ends soon after.
    pub fn stopping(&self) -> &CancellationToken {
        &self.stopping
    }

    /// Starts `task`, which must run until [`Tasks::stopping`] fires and
    /// then end by itself. If it ends before (returns or panics), the owner
    /// learns it from [`Tasks::died`] and must act on it (and log it).
    pub fn lifetime<F>(&self, name: impl Into<String>, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let name = name.into();
        let stopping = self.stopping.clone();
        let died = self.died.clone();
        let death = self.death.clone();
        self.tracker.spawn(async move {
            let how = match AssertUnwindSafe(task).catch_unwind().await {
                Ok(()) => "ended".to_string(),
                Err(panic) => format!("panicked: {}", panic_message(&*panic)),
            };
            if stopping.is_cancelled() {
                // Ending is what it should do now; a panic is still a bug.
                if how != "ended" {
                    tracing::error!(task = %name, "{how} while stopping");
                }
                return;
            }
            death
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert(Died { task: name, how });
            died.cancel();
        });
    }

    /// Starts a piece of work that ends by itself. It is dropped if it is
    /// still running when the owner stops; a panic is logged as an error.
    pub fn spawn<F>(&self, name: impl Into<String>, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let name = name.into();
        let stopping = self.stopping.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                _ = stopping.cancelled() => {}
                outcome = AssertUnwindSafe(task).catch_unwind() => {
                    if let Err(panic) = outcome {
                        tracing::error!(task = %name, "panicked: {}", panic_message(&*panic));
                    }
                }
            }
        });
    }

    /// Resolves once a lifetime task has ended before its owner stopped,
    /// with the first one that did; never resolves otherwise.
    pub async fn died(&self) -> Died {
        self.died.cancelled().await;
        self.death
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| Died {
                task: "a task".into(),
                how: "ended".into(),
            })
    }

    /// Stops the owner's tasks: fires [`Tasks::stopping`] and waits up to
    /// `within` for every task to end. Returns whether they all did (those
    /// still running are logged, and end with the runtime).
    pub async fn stop(&self, within: Duration) -> bool {
        self.stopping.cancel();
        self.tracker.close();
        if tokio::time::timeout(within, self.tracker.wait())
            .await
            .is_ok()
        {
            return true;
        }
        tracing::warn!(
            tasks = self.tracker.len(),
            "background tasks did not stop within {} s",
            within.as_secs_f64()
        );
        false
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    const SOON: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_lifetime_task_that_ends_early_is_reported_by_name() {
        let owner = CancellationToken::new();
        let tasks = Tasks::new(&owner);
        let stopping = tasks.stopping().clone();
        tasks.lifetime("the steady one", async move { stopping.cancelled().await });
        tasks.lifetime("the lease watcher", async {});
        let died = tokio::time::timeout(SOON, tasks.died())
            .await
            .expect("reported");
        assert_eq!(died.to_string(), "the lease watcher ended");
        assert!(tasks.stop(SOON).await);
    }

    #[tokio::test]
    async fn a_panic_is_reported_with_its_message() {
        let tasks = Tasks::new(&CancellationToken::new());
        tasks.lifetime("the HTTP server", async { panic!("bad state {}", 7) });
        let died = tokio::time::timeout(SOON, tasks.died())
            .await
            .expect("reported");
        assert_eq!(died.task, "the HTTP server");
        assert_eq!(died.how, "panicked: bad state 7");
    }

    #[tokio::test]
    async fn tasks_that_end_because_their_owner_stops_are_no_death() {
        let owner = CancellationToken::new();
        let tasks = Tasks::new(&owner);
        let cleaned_up = Arc::new(AtomicBool::new(false));
        let (stopping, flag) = (tasks.stopping().clone(), cleaned_up.clone());
        tasks.lifetime("the sender", async move {
            stopping.cancelled().await;
            tokio::task::yield_now().await;
            flag.store(true, Ordering::SeqCst);
        });
        // Work still running when the owner stops is dropped.
        tasks.spawn("an expiry", std::future::pending());
        owner.cancel();
        assert!(tasks.stop(SOON).await, "every task ended");
        assert!(cleaned_up.load(Ordering::SeqCst), "stop waited for it");
        let died = tokio::time::timeout(Duration::from_millis(200), tasks.died()).await;
        assert!(died.is_err(), "no task died: {died:?}");
    }

    #[tokio::test]
    async fn stopping_is_bounded_when_a_task_ignores_it() {
        let tasks = Tasks::new(&CancellationToken::new());
        tasks.lifetime("the stubborn one", std::future::pending());
        let started = std::time::Instant::now();
        assert!(!tasks.stop(Duration::from_millis(100)).await);
        assert!(started.elapsed() < SOON);
    }

    #[tokio::test]
    async fn a_panic_in_bounded_work_is_contained() {
        let tasks = Tasks::new(&CancellationToken::new());
        let (started, running) = tokio::sync::oneshot::channel();
        tasks.spawn("an expiry", async move {
            let _ = started.send(());
            panic!("boom")
        });
        running.await.expect("it ran");
        assert!(tasks.stop(SOON).await);
        let died = tokio::time::timeout(Duration::from_millis(200), tasks.died()).await;
        assert!(died.is_err(), "bounded work is not a lifetime task");
    }
}
