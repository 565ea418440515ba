//! One broker connection shared by every repository the observer watches.
//!
//! A keeper task ([`Session::keep_connected`]) connects, and connects again
//! after a watcher reports the connection lost; watchers only borrow the
//! current one. While there is none, a push is answered "broker down" at
//! once (the forge retries) and polls wait for the next connection.

use std::sync::Arc;

use broker::{BrokerError, Connector, Transport};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub(crate) struct Session {
    current: watch::Sender<Option<Arc<dyn Transport>>>,
}

fn same(a: &Arc<dyn Transport>, b: &Arc<dyn Transport>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

impl Session {
    pub(crate) fn new() -> Self {
        Session {
            current: watch::Sender::new(None),
        }
    }

    /// The connection, if there is one now.
    pub(crate) fn current(&self) -> Option<Arc<dyn Transport>> {
        self.current.borrow().clone()
    }

    /// Waits for a connection (cancel by dropping the future).
    pub(crate) async fn connected(&self) -> Arc<dyn Transport> {
        let mut seen = self.current.subscribe();
        loop {
            if let Some(transport) = seen.borrow_and_update().clone() {
                return transport;
            }
            if seen.changed().await.is_err() {
                // The session is gone: nothing will connect again.
                std::future::pending::<()>().await;
            }
        }
    }

    /// A watcher's publish or read failed on `transport`: drop it, so the
    /// keeper connects again (once, however many watchers report it).
    pub(crate) fn lost(&self, transport: &Arc<dyn Transport>) {
        self.current.send_if_modified(|current| match current {
            Some(now) if same(now, transport) => {
                *current = None;
                true
            }
            _ => false,
        });
    }

    /// Connects, and again whenever the connection is reported lost, until
    /// `shutdown`; then closes it. Errors only when connecting is hopeless
    /// (a bad URL, a topology that does not match).
    pub(crate) async fn keep_connected(
        &self,
        connector: &dyn Connector,
        connection_name: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let mut seen = self.current.subscribe();
        loop {
            let transport = match connector.connect(connection_name, shutdown).await {
                Ok(transport) => transport,
                Err(BrokerError::Shutdown) => return Ok(()),
                Err(err) => return Err(err),
            };
            self.current.send_replace(Some(transport.clone()));
            let lost = tokio::select! {
                _ = shutdown.cancelled() => false,
                _ = seen.wait_for(|current| current.is_none()) => true,
            };
            self.current.send_replace(None);
            transport.close().await;
            if !lost {
                return Ok(());
            }
            tracing::warn!("lost the broker; reconnecting");
        }
    }
}
