//! Which dispatcher does the duties that must happen once while several
//! share one PostgreSQL store: acting on expired leases ([`crate::leases`]),
//! publishing the outbox ([`crate::outbox`]), and announcing job changes
//! as notifications and commit statuses ([`crate::announce`]), whichever
//! dispatcher recorded them. Everything else each dispatcher does for the
//! messages it consumes (they compete on the dispatcher queues, so each
//! message is recorded by one of them): it records, and announces its own
//! changes on its bus (the live view, its metrics).
//!
//! The duties go with the store's lock ([`store::Store::try_lead`]: a
//! PostgreSQL advisory lock held by a session of its own). This task asks
//! every [`CHECK_EVERY`], and says on a watch channel whether this
//! dispatcher leads. A holder killed by SIGKILL loses the lock when the
//! server sees its socket close; the next check of another dispatcher
//! takes it, so the duties move within about a second. A holder cut off
//! from the database notices at its next check (the session's `SELECT 1`
//! fails within its timeout) and stops acting.

use std::sync::Arc;
use std::time::Duration;

use store::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often leadership is checked or sought.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Asks the store every [`CHECK_EVERY`] until `stopping`, and sends
/// whether this dispatcher leads.
pub async fn follow(
    store: Arc<dyn Store>,
    leads: watch::Sender<bool>,
    stopping: CancellationToken,
) {
    loop {
        let now = store.try_lead().await;
        let was = *leads.borrow();
        if now != was {
            // Followers wake only on a change, not on every check.
            leads.send_replace(now);
        }
        if now && !was {
            tracing::info!("this dispatcher holds the duties done once (lease expiry, the outbox, notifications and commit statuses)");
        } else if was && !now {
            tracing::warn!(
                "this dispatcher no longer holds the duties done once; another takes them"
            );
        }
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}
