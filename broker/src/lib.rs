//! The one crate that knows RabbitMQ.
//!
//! Every other Warren crate talks to the broker only through this one: the
//! names of exchanges and queues ([`Names`]), their declaration
//! ([`topology`]), the messages that travel on them ([`message`]),
//! connecting with retry ([`connect`]), and what a component does with a
//! connection ([`Transport`]: publish with confirms, consume, settle),
//! over RabbitMQ ([`amqp`]) or in memory for unit tests ([`memory`]).
//! Keeping it in one place means the topology the code declares, the
//! definitions file compose loads, the in-memory broker and the tests all
//! agree.

pub mod amqp;
pub mod connect;
pub mod consume;
pub mod memory;
pub mod message;
mod names;
mod publisher;
pub mod topology;
pub mod transport;

pub use connect::{connect_with_retry, delete_namespace, redact_url, Broker, BrokerConfig};
pub use consume::Incoming;
pub use names::Names;
pub use publisher::Confirm;
use publisher::Publisher;
pub use transport::{Connector, Transport};

/// Errors from talking to RabbitMQ, with the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{context}: {source}")]
    Amqp {
        context: String,
        #[source]
        source: lapin::Error,
    },
    #[error("the broker refused the message published to {exchange:?} (nack)")]
    Nacked { exchange: String },
    #[error("invalid AMQP URL: {0}")]
    InvalidUrl(String),
    #[error("{0}")]
    TopologyMismatch(String),
    #[error("timed out {0}")]
    Timeout(String),
    #[error("the connection to the broker was lost")]
    ConnectionLost,
    /// The broker refused an operation and closed the channel (an
    /// exchange or queue that does not exist, an exclusive queue of
    /// another connection).
    #[error("the broker closed the channel: {0}")]
    Channel(String),
    #[error("shutting down")]
    Shutdown,
}

impl BrokerError {
    pub(crate) fn amqp(context: impl Into<String>) -> impl FnOnce(lapin::Error) -> Self {
        let context = context.into();
        move |source| BrokerError::Amqp { context, source }
    }
}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

pub use model::now_ms;
