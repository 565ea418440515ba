//! The seam between Warren's components and the broker: what a component
//! needs of one connection ([`Transport`]), how it gets a new one after it
//! lost the last ([`Connector`]), and the messages it takes ([`Delivery`]).
//!
//! Two implementations: [`crate::amqp::AmqpTransport`] over lapin (what
//! the processes use) and [`crate::memory::MemoryTransport`] (unit tests:
//! the same topology, deterministic, with faults on demand). A component
//! holds an `Arc<dyn Transport>` and never names either.
//!
//! Why this shape:
//! - **Object-safe, boxed futures, no macro.** Components hold
//!   `Arc<dyn Transport>`: their session logic is written once, not
//!   monomorphised per transport, and a task spawned for the session (the
//!   runner's heartbeat sender) clones the `Arc`. The one boxed future per
//!   call costs nothing next to a network round trip.
//! - **Small.** Publish (pipelined: sending returns a [`Confirm`] to await
//!   later, so a batch can be in flight at once), consume a queue with a
//!   prefetch, take one message (`get`), declare a named work queue,
//!   subscribe to a fanout exchange through a private queue, read a queue
//!   without taking from it, a queue's depth, and the connection's life. Acks, rejects and dead-lettering belong to the [`Delivery`],
//!   which can be settled once (each consumes it). Everything typed
//!   (JSON messages, the ledger's jobs) is built on top, in `impl dyn
//!   Transport`, so both implementations share it.
//! - **Properties are AMQP's.** A delivery keeps the publisher's
//!   properties and headers whole (dead letters carry them on, `x-death`
//!   included), so the type is lapin's [`Properties`], which is plain data
//!   the in-memory broker stores as it is.
//! - **Connection management stays lapin's.** Connecting with retry,
//!   declaring the topology, TLS and heartbeats live in
//!   [`crate::connect`]; [`Connector`] is only "give me a working
//!   connection, or tell me we are shutting down", so a component's
//!   reconnect loop (the runner's kept result, the observer's in-flight
//!   flag) is tested in memory too.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::types::AMQPValue;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::consume::{dead_letter_properties, header_text};
use crate::message::{decode, encode};
use crate::publisher::json_properties;
use crate::topology::LEDGER_MAX;
use crate::{BrokerError, Confirm, Names, Result};
use model::{Job, QueueName};

/// A message's AMQP properties and headers.
pub use lapin::BasicProperties as Properties;

/// The messages of one consumer, in delivery order. It ends when the
/// consumer is gone: its connection closed, or its queue deleted.
pub type Deliveries = BoxStream<'static, Result<Delivery>>;

/// What a passive declare tells about a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages ready for delivery (not counting those delivered, unacked).
    pub ready: u32,
    pub consumers: u32,
}

/// One connection to the broker, as a component uses it. See the module
/// documentation for why it looks like this.
pub trait Transport: Send + Sync {
    /// The namespace's exchange and queue names.
    fn names(&self) -> &Names;

    /// The name this connection shows in the management API.
    fn connection_name(&self) -> &str;

    /// Sends a message without waiting for the broker's confirm: it is the
    /// broker's only once [`Confirm::wait`] says so. Confirms come in the
    /// order of the sends. The awaited form is [`dyn Transport::publish`].
    fn send<'a>(
        &'a self,
        exchange: &'a str,
        routing_key: &'a str,
        body: &'a [u8],
        properties: Properties,
    ) -> BoxFuture<'a, Result<Confirm>>;

    /// Consumes `queue` with manual acks and at most `prefetch` deliveries
    /// unsettled at once (0: no limit).
    fn consume<'a>(&'a self, queue: &'a str, prefetch: u16) -> BoxFuture<'a, Result<Deliveries>>;

    /// Declares the work queue of `queue` ([`Names::work_queue_for`]) with
    /// the work queue's arguments (quorum, the delivery limit, dead letters
    /// to `N.rejected`) and returns its name. Idempotent; `default`'s is
    /// part of the topology. A queue that exists with other arguments is a
    /// [`BrokerError::TopologyMismatch`].
    fn declare_work_queue<'a>(&'a self, queue: &'a QueueName) -> BoxFuture<'a, Result<String>>;

    /// Takes the next message ready in `queue`, if any (AMQP's `basic.get`,
    /// manual ack): settled like a consumed [`Delivery`], held by this
    /// connection until then, handed back if it closes first. For a
    /// consumer of several queues that must never hold a message it is not
    /// working on (the runner).
    fn get<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<Option<Delivery>>>;

    /// Consumes a private queue bound to the fanout `exchange`: exclusive
    /// to this connection, deleted with it, no prefetch limit, manual acks.
    /// Every subscriber gets every message.
    fn subscribe<'a>(&'a self, exchange: &'a str) -> BoxFuture<'a, Result<Deliveries>>;

    /// The bodies of the first `max` messages ready in `queue`, oldest
    /// first, left in place.
    fn peek<'a>(&'a self, queue: &'a str, max: usize) -> BoxFuture<'a, Result<Vec<Vec<u8>>>>;

    /// How many messages are ready in `queue` and how many consumers it has.
    fn queue_stats<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<QueueStats>>;

    /// Whether the connection is still up.
    fn is_connected(&self) -> bool;

    /// Resolves when the connection is lost or closed.
    fn closed(&self) -> BoxFuture<'_, ()>;

    /// Closes the connection: every unsettled delivery goes back to its
    /// queue. Bounded in time.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// Opens connections, for a component's reconnect loop.
pub trait Connector: Send + Sync {
    /// A working connection named `connection_name`, tried until it is one
    /// or `shutdown` fires ([`BrokerError::Shutdown`]); other errors are
    /// final (a bad URL, a topology that does not match).
    fn connect<'a>(
        &'a self,
        connection_name: &'a str,
        shutdown: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Arc<dyn Transport>>>;
}

impl dyn Transport + '_ {
    /// Publishes `message` as persistent JSON and waits for the confirm.
    pub async fn publish<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &T,
    ) -> Result<()> {
        self.publish_in_flight(exchange, routing_key, message)
            .await?
            .wait()
            .await
    }

    /// Publishes `message` as persistent JSON without waiting for the
    /// confirm, so that several can be in flight at once.
    pub async fn publish_in_flight<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &T,
    ) -> Result<Confirm> {
        self.send(
            exchange,
            routing_key,
            &encode(message),
            json_properties(Vec::new()),
        )
        .await
    }

    /// Publishes raw bytes with extra string headers, persistent, and waits
    /// for the confirm.
    pub async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: Vec<(String, String)>,
    ) -> Result<()> {
        self.send(exchange, routing_key, body, json_properties(headers))
            .await?
            .wait()
            .await
    }

    /// The jobs in the ledger, oldest first: the last ones the broker took
    /// on the jobs exchange, whoever published them. Reading leaves them
    /// in place. Bodies that are not valid jobs are skipped.
    pub async fn recent_jobs(&self, max_bytes: usize) -> Result<Vec<Job>> {
        let bodies = self.peek(&self.names().ledger_queue(), LEDGER_PEEK).await?;
        Ok(ledger_jobs(&bodies, max_bytes))
    }
}

/// How many ledger entries a read takes at most. Publishes that arrive
/// while it reads land at the tail; twice the bound stops rather than chase
/// them forever.
pub(crate) const LEDGER_PEEK: usize = 2 * LEDGER_MAX as usize;

/// The ledger's bodies that are valid jobs, in order.
pub(crate) fn ledger_jobs(bodies: &[Vec<u8>], max_bytes: usize) -> Vec<Job> {
    bodies
        .iter()
        .filter_map(|body| decode::<Job>(body, max_bytes).ok())
        .collect()
}

/// One message taken from a queue, to be settled once: [`Delivery::ack`],
/// [`Delivery::reject`] or [`Delivery::dead_letter`]. Dropped unsettled,
/// it goes back to its queue when the connection closes.
pub struct Delivery {
    body: Vec<u8>,
    properties: Properties,
    redelivered: bool,
    settle: Settle,
}

/// How a delivery is settled, by the transport it came from.
pub(crate) enum Settle {
    Amqp(lapin::Acker),
    Memory(crate::memory::Settle),
}

impl Delivery {
    pub(crate) fn new(
        body: Vec<u8>,
        properties: Properties,
        redelivered: bool,
        settle: Settle,
    ) -> Self {
        Delivery {
            body,
            properties,
            redelivered,
            settle,
        }
    }

    pub(crate) fn from_amqp(delivery: lapin::message::Delivery) -> Self {
        Delivery::new(
            delivery.data,
            delivery.properties,
            delivery.redelivered,
            Settle::Amqp(delivery.acker),
        )
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    pub fn properties(&self) -> &Properties {
        &self.properties
    }

    /// A header's value as text (strings and integers), if present.
    pub fn header(&self, key: &str) -> Option<String> {
        header_text(&self.properties, key)
    }

    /// Whether the broker delivered this message before (to anyone).
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// How many times it went back to a quorum queue before this delivery
    /// (its `x-delivery-count` header); `None` on a first delivery of a
    /// consumer, `Some(0)` on a first [`Transport::get`] (as RabbitMQ
    /// sends it).
    pub fn delivery_count(&self) -> Option<u64> {
        match self
            .properties
            .headers()
            .as_ref()?
            .inner()
            .get("x-delivery-count")?
        {
            AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
            AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
            AMQPValue::LongUInt(n) => Some(u64::from(*n)),
            AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).parse().ok(),
            _ => None,
        }
    }

    /// Done with it: the broker forgets it.
    pub async fn ack(self) -> Result<()> {
        match self.settle {
            Settle::Amqp(acker) => settled(
                acker.ack(BasicAckOptions::default()).await,
                "acking a delivery",
            ),
            Settle::Memory(settle) => settle.ack(),
        }
    }

    /// Hands it back (`requeue`), or has the broker drop it or send it to
    /// the queue's dead-letter exchange.
    pub async fn reject(self, requeue: bool) -> Result<()> {
        match self.settle {
            Settle::Amqp(acker) => settled(
                acker.reject(BasicRejectOptions { requeue }).await,
                "rejecting a delivery",
            ),
            Settle::Memory(settle) => settle.reject(requeue),
        }
    }

    /// Publishes it to the namespace's dead-letter exchange (confirmed),
    /// with the publisher's headers and properties plus the reason and the
    /// queue in headers, logs it, then acks it.
    ///
    /// Every message Warren routes has exactly one consumer that
    /// dead-letters it (the dispatcher's copy; see ARCHITECTURE.md), so a
    /// bad message lands in the dead-letter queue once.
    pub async fn dead_letter(
        self,
        transport: &dyn Transport,
        queue: &str,
        reason: &str,
    ) -> Result<()> {
        tracing::warn!(queue, reason, "dead-lettering a message");
        transport
            .send(
                &transport.names().dead_letter_exchange(),
                "",
                &self.body,
                dead_letter_properties(&self.properties, queue, reason),
            )
            .await?
            .wait()
            .await?;
        self.ack().await
    }
}

/// lapin answers `Ok(false)` for an ack on a channel that is gone.
fn settled(answer: lapin::Result<bool>, context: &str) -> Result<()> {
    match answer {
        Ok(true) => Ok(()),
        Ok(false) => Err(BrokerError::ConnectionLost),
        Err(source) => Err(BrokerError::Amqp {
            context: context.into(),
            source,
        }),
    }
}
