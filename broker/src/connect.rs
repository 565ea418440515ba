//! Connecting to RabbitMQ: retry with backoff, declare the topology, open
//! the channels a component needs, and notice when the connection dies.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::PoisonError;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, LongString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use model::QueueName;
use tokio_util::sync::CancellationToken;

use crate::topology::{self, Topology, TopologySettings};
use crate::{BrokerError, Names, Publisher, Result};

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest wait between connection attempts. A refused connection
/// costs the broker next to nothing, and every second waited here is a
/// second of recovery lost after the broker is back.
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long closing a connection may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// AMQP heartbeat asked for when the URL names none: a dead peer is
/// noticed within about twice this.
const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// What a component needs to reach its namespace on a broker.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `amqp://` or `amqps://` URL; may hold a password (never logged).
    pub url: String,
    pub names: Names,
    pub settings: TopologySettings,
    /// Messages larger than this are refused (dead-lettered) by consumers.
    pub max_message_bytes: usize,
}

/// An open connection with the namespace's topology declared.
pub struct Broker {
    connection: Connection,
    names: Names,
    connection_name: String,
    /// What the connection declares, the named work queues' arguments
    /// included.
    topology: Topology,
    /// The named work queues declared on this connection, not declared
    /// again.
    declared: std::sync::Mutex<HashSet<String>>,
    /// The channel of `basic.get`s: a message taken stays unacked on it
    /// until settled, so it lives as long as the connection (a new one is
    /// opened when the broker closed it).
    getter: tokio::sync::Mutex<Option<Channel>>,
}

impl Broker {
    /// One attempt: connect, name the connection, declare the topology.
    pub async fn open(config: &BrokerConfig, connection_name: &str) -> Result<Broker> {
        let broker = Broker::connect(config, connection_name).await?;
        let channel = broker
            .connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening a channel"))?;
        topology::declare(&channel, &broker.topology).await?;
        Ok(broker)
    }

    /// One attempt to connect, without declaring anything.
    async fn connect(config: &BrokerConfig, connection_name: &str) -> Result<Broker> {
        let mut uri = AMQPUri::from_str(&config.url)
            .map_err(|e| BrokerError::InvalidUrl(format!("{} ({e})", redact_url(&config.url))))?;
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(DEFAULT_HEARTBEAT_SECS);
        }
        let properties =
            ConnectionProperties::default().with_connection_name(LongString::from(connection_name));
        // A broker that accepts TCP but never answers must not hang us.
        let connection =
            tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri, properties))
                .await
                .map_err(|_| {
                    BrokerError::Timeout(format!("connecting to {}", redact_url(&config.url)))
                })?
                .map_err(BrokerError::amqp(format!(
                    "connecting to {}",
                    redact_url(&config.url)
                )))?;
        Ok(Broker {
            connection,
            names: config.names.clone(),
            connection_name: connection_name.to_string(),
            topology: Topology::new(&config.names, config.settings),
            declared: Default::default(),
            getter: Default::default(),
        })
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The name this connection shows in the management API.
    pub fn connection_name(&self) -> &str {
        &self.connection_name
    }

    /// A new channel in confirm mode for publishing.
    pub(crate) async fn publisher(&self) -> Result<Publisher> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening a publishing channel"))?;
        Publisher::new(channel).await
    }

    /// Consumes `queue` on a channel of its own with manual acks and at most
    /// `prefetch` unacked deliveries.
    pub(crate) async fn consume(&self, queue: &str, prefetch: u16) -> Result<Consumer> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening a consuming channel"))?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(BrokerError::amqp(format!("setting prefetch on {queue}")))?;
        channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::amqp(format!("consuming {queue}")))
    }

    /// Declares the work queue of `queue` with the work queue's arguments,
    /// once per connection, and returns its name. The default one is part
    /// of the topology.
    pub(crate) async fn declare_work_queue(&self, queue: &QueueName) -> Result<String> {
        let name = self.names.work_queue_for(queue);
        let known = |declared: &std::sync::Mutex<HashSet<String>>| {
            declared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&name)
        };
        if queue.is_default() || known(&self.declared) {
            return Ok(name);
        }
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening a channel"))?;
        let declared =
            topology::declare_queue(&channel, &self.topology.work_queue_spec(name.clone())).await;
        // Gone already if the broker refused the declare.
        let _ = channel.close(200, "declared".into()).await;
        declared?;
        self.declared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.clone());
        Ok(name)
    }

    /// Takes one ready message of `queue` unacked (`basic.get`), on the
    /// connection's getter channel.
    pub(crate) async fn get(&self, queue: &str) -> Result<Option<lapin::message::Delivery>> {
        let mut getter = self.getter.lock().await;
        let channel = match getter.as_ref().filter(|c| c.status().connected()) {
            Some(channel) => channel.clone(),
            None => {
                let channel = self
                    .connection
                    .create_channel()
                    .await
                    .map_err(BrokerError::amqp("opening a channel to get from queues"))?;
                *getter = Some(channel.clone());
                channel
            }
        };
        let message = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(BrokerError::amqp(format!("getting from {queue}")))?;
        Ok(message.map(|m| m.delivery))
    }

    /// A private, exclusive queue bound to the fanout `exchange`, consumed
    /// with manual acks: every subscriber gets every message. It
    /// disappears with the connection.
    pub(crate) async fn subscribe(&self, exchange: &str) -> Result<Consumer> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp(format!(
                "opening a channel to subscribe to {exchange}"
            )))?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::amqp(format!(
                "declaring a queue for {exchange}"
            )))?;
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::amqp(format!("binding a queue to {exchange}")))?;
        channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::amqp(format!(
                "consuming the queue bound to {exchange}"
            )))
    }

    /// Depth and consumer count of a queue (passive declare).
    pub async fn queue_stats(&self, queue: &str) -> Result<(u32, u32)> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening a channel"))?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::amqp(format!("inspecting queue {queue}")))?;
        let _ = channel.close(200, "done".into()).await;
        Ok((declared.message_count(), declared.consumer_count()))
    }

    /// The bodies of the first `max` messages ready in `queue`, left in
    /// place: they are taken unacked and handed back when the channel
    /// closes. (A classic queue: a quorum queue would count each read
    /// against its delivery limit.)
    pub(crate) async fn peek(&self, queue: &str, max: usize) -> Result<Vec<Vec<u8>>> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening a channel"))?;
        let mut bodies = Vec::new();
        while bodies.len() < max {
            let message = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(BrokerError::amqp(format!("reading {queue}")))?;
            let Some(message) = message else { break };
            bodies.push(message.delivery.data);
        }
        // Closing the channel returns every unacked message to the queue.
        let _ = channel.close(200, "read".into()).await;
        Ok(bodies)
    }

    /// Deletes the namespace's queues and exchanges, and the work queues
    /// of `named`.
    pub async fn delete_topology(&self, named: &[QueueName]) -> Result<()> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening a channel"))?;
        topology::delete(&channel, &self.names, named).await
    }

    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Resolves when the connection is lost (or closed).
    pub async fn closed(&self) {
        let mut events = self.connection.events_listener();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(lapin::Event::Error(_)) | None => return,
                    Some(_) => {}
                },
                _ = tick.tick() => {
                    if !self.connection.status().connected() {
                        return;
                    }
                }
            }
        }
    }

    /// Closes the connection politely (unacked deliveries are requeued).
    /// Bounded: lapin may never answer a close on a connection it already
    /// considers failed.
    pub async fn close(&self) {
        let close = self.connection.close(200, "bye".into());
        if tokio::time::timeout(CLOSE_TIMEOUT, close).await.is_err() {
            tracing::debug!("the broker did not confirm the close in time");
        }
    }
}

/// Connects, retrying with exponential backoff (0.2 s doubling to 5 s)
/// until it works or `shutdown` fires. Each failure is one warning line.
pub async fn connect_with_retry(
    config: &BrokerConfig,
    connection_name: &str,
    shutdown: &CancellationToken,
) -> Result<Broker> {
    retry(config, connection_name, Declare::Topology, shutdown).await
}

/// Whether a connection declares the namespace's topology.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Declare {
    Topology,
    Nothing,
}

/// Connects, retrying with backoff until it works, the error is final
/// (a bad URL, a topology mismatch) or `shutdown` fires.
async fn retry(
    config: &BrokerConfig,
    connection_name: &str,
    declare: Declare,
    shutdown: &CancellationToken,
) -> Result<Broker> {
    let mut delay = Duration::from_millis(200);
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let opened = match declare {
            Declare::Topology => Broker::open(config, connection_name).await,
            Declare::Nothing => Broker::connect(config, connection_name).await,
        };
        match opened {
            Ok(broker) => {
                if attempt > 1 {
                    tracing::info!(attempt, "connected to the broker");
                }
                return Ok(broker);
            }
            Err(err @ (BrokerError::InvalidUrl(_) | BrokerError::TopologyMismatch(_))) => {
                return Err(err)
            }
            Err(err) => {
                tracing::warn!(
                    "broker unreachable ({err}); retrying in {:.1} s",
                    delay.as_secs_f64()
                );
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(BrokerError::Shutdown),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RECONNECT_BACKOFF_MAX);
    }
}

/// Deletes a namespace's queues and exchanges, and the work queues of
/// `named`, whatever arguments they were declared with (it declares
/// nothing itself). AMQP cannot list queues: a named work queue not in
/// `named` stays (the management API lists them: `N.jobs.*`).
pub async fn delete_namespace(
    config: &BrokerConfig,
    named: &[QueueName],
    shutdown: &CancellationToken,
) -> Result<()> {
    let broker = retry(config, "warren-topology", Declare::Nothing, shutdown).await?;
    let deleted = broker.delete_topology(named).await;
    broker.close().await;
    deleted
}

/// The URL with its password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{path}")
            } else {
                format!("{scheme}://{user}@{host}{path}")
            }
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:s3cret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("http://admin:p@ss@mgmt:15672"),
            "http://admin:***@mgmt:15672"
        );
        assert_eq!(redact_url("amqp://host/vh"), "amqp://host/vh");
        assert_eq!(redact_url("amqp://user@host"), "amqp://user@host");
        assert!(!redact_url("amqps://u:topsecret@h").contains("topsecret"));
    }
}
