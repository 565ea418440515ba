//! Domain events: every change of a job, announced once on one channel.
//!
//! The recorder changes jobs (through [`crate::jobs::Jobs`], the one place
//! that does) and does not know who cares; the live view, the notifier,
//! the commit statuses and the metrics subscribe here. So no module calls another to say "this job
//! changed", and adding a listener touches nothing else.
//!
//! Two kinds of subscriber: [`EventBus::subscribe`] gives a queue that
//! never drops an event (the notifier must see every outcome, the counters
//! every change), for the few listeners that live as long as the
//! dispatcher; [`EventBus::watch`] gives a bounded feed that may skip when
//! its reader is slow, for the live view's browsers (which reload then).

use std::sync::{Arc, Mutex};

use model::JobRecord;
use tokio::sync::{broadcast, mpsc};

/// How many events a live-view client may fall behind before it is told
/// to reload.
const WATCH_BACKLOG: usize = 1024;

/// What happened to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Seen for the first time (published, or announced by a runner).
    Queued,
    /// A runner started it; `first` when this is its first attempt.
    Started { first: bool },
    /// It got its one outcome; `dead_lettered` when the broker gave up on
    /// it rather than a runner reporting.
    Finished { dead_lettered: bool },
    /// Another result came for a job that already had its outcome.
    Duplicate,
}

/// A job's change and the job as it stands after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEvent {
    pub change: Change,
    pub job: JobRecord,
}

/// The one channel job changes go out on. Cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<JobEvent>>>>,
    watchers: broadcast::Sender<JobEvent>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new()
    }
}

impl EventBus {
    pub fn new() -> EventBus {
        EventBus {
            subscribers: Arc::default(),
            watchers: broadcast::channel(WATCH_BACKLOG).0,
        }
    }

    /// Every event from now on, none dropped (the queue grows if its
    /// reader is slow: for listeners that keep up, as the notifier's
    /// decision loop and the counters do).
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<JobEvent> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.lock().push(sender);
        receiver
    }

    /// Events from now on, skipping some if the reader falls more than
    /// [`WATCH_BACKLOG`] behind (it learns so from `Lagged`).
    pub fn watch(&self) -> broadcast::Receiver<JobEvent> {
        self.watchers.subscribe()
    }

    /// Announces a change to every listener. Never blocks.
    pub fn publish(&self, event: JobEvent) {
        // Listeners that went away are forgotten.
        self.lock()
            .retain(|subscriber| subscriber.send(event.clone()).is_ok());
        // No watcher is not an error.
        let _ = self.watchers.send(event);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<mpsc::UnboundedSender<JobEvent>>> {
        self.subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
