//! Connecting to RabbitMQ: retry with backoff, declare the topology, open
//! the channels a component needs, and notice when the connection dies.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{OnceLock, PoisonError};
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
    /// `amqp://` or `amqps://` URLs: one broker, or the nodes of one
    /// cluster, tried in turn (see [`connect_with_retry`]). They may hold
    /// a password (never logged).
    pub urls: Vec<String>,
    pub names: Names,
    pub settings: TopologySettings,
    /// `x-quorum-initial-group-size` of the quorum queues when given
    /// (`--quorum-size`); else the argument is not declared and the broker
    /// picks its default (`quorum_cluster_size`, 3, capped at the number
    /// of nodes). Must match across components, like the delivery limit.
    pub quorum_size: Option<u32>,
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
    /// One attempt on `url` (one of `config.urls`): connect, name the
    /// connection, declare the topology.
    pub async fn open(config: &BrokerConfig, url: &str, connection_name: &str) -> Result<Broker> {
        let broker = Broker::connect(config, url, connection_name).await?;
        let channel = broker
            .connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening a channel"))?;
        topology::declare(&channel, &broker.topology).await?;
        Ok(broker)
    }

    /// One attempt to connect to `url`, without declaring anything.
    async fn connect(config: &BrokerConfig, url: &str, connection_name: &str) -> Result<Broker> {
        let mut uri = parse_url(url)?;
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(DEFAULT_HEARTBEAT_SECS);
        }
        let properties =
            ConnectionProperties::default().with_connection_name(LongString::from(connection_name));
        // A broker that accepts TCP but never answers must not hang us.
        let connection =
            tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri, properties))
                .await
                .map_err(|_| BrokerError::Timeout(format!("connecting to {}", redact_url(url))))?
                .map_err(BrokerError::amqp(format!(
                    "connecting to {}",
                    redact_url(url)
                )))?;
        Ok(Broker {
            connection,
            names: config.names.clone(),
            connection_name: connection_name.to_string(),
            topology: Topology::new(&config.names, config.settings)
                .with_quorum_size(config.quorum_size),
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

/// Connects, trying the URLs in turn (see [`url_order`]) and waiting with
/// a backoff (0.2 s doubling to 1 s) after each round in which none
/// answered, until it works or `shutdown` fires. Each failure is one
/// warning line naming the URL (password hidden).
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

/// Where the next connection of this process starts in [`url_order`]:
/// one past the URL of the last connection opened, so a reconnect tries
/// another node first (the one it lost is likely gone).
static NEXT_URL: AtomicUsize = AtomicUsize::new(0);

/// The order this process tries `n` URLs in: a permutation drawn once per
/// process, so that the components of a deployment given the same list
/// spread over the nodes instead of all starting with the first.
pub fn url_order(n: usize) -> Vec<usize> {
    static SEED: OnceLock<u64> = OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        nanos ^ (u64::from(std::process::id()) << 32)
    });
    shuffled(n, seed)
}

/// `0..n` shuffled (Fisher-Yates) by a SplitMix64 stream from `seed`.
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// Every URL parsed, so that a typo in any of them is a final error at
/// once rather than a node that seems down.
fn check_urls(urls: &[String]) -> Result<()> {
    if urls.is_empty() {
        return Err(BrokerError::InvalidUrl("no broker URL given".into()));
    }
    urls.iter().try_for_each(|url| parse_url(url).map(drop))
}

fn parse_url(url: &str) -> Result<AMQPUri> {
    AMQPUri::from_str(url)
        .map_err(|e| BrokerError::InvalidUrl(format!("{} ({e})", redact_url(url))))
}

/// Connects, retrying with backoff until it works, the error is final
/// (a bad URL, a topology mismatch) or `shutdown` fires.
async fn retry(
    config: &BrokerConfig,
    connection_name: &str,
    declare: Declare,
    shutdown: &CancellationToken,
) -> Result<Broker> {
    check_urls(&config.urls)?;
    let urls = &config.urls;
    let order = url_order(urls.len());
    let mut position = NEXT_URL.load(Ordering::Relaxed) % urls.len();
    let mut delay = Duration::from_millis(200);
    let mut attempt: u32 = 0;
    loop {
        for _ in 0..urls.len() {
            attempt += 1;
            let url = &urls[order[position]];
            let opened = match declare {
                Declare::Topology => Broker::open(config, url, connection_name).await,
                Declare::Nothing => Broker::connect(config, url, connection_name).await,
            };
            match opened {
                Ok(broker) => {
                    NEXT_URL.store(position + 1, Ordering::Relaxed);
                    // Which node, when there are several.
                    if attempt > 1 || urls.len() > 1 {
                        tracing::info!(attempt, url = %redact_url(url), "connected to the broker");
                    }
                    return Ok(broker);
                }
                Err(err @ (BrokerError::InvalidUrl(_) | BrokerError::TopologyMismatch(_))) => {
                    return Err(err)
                }
                Err(err) if urls.len() > 1 => {
                    tracing::warn!("broker node {} unreachable ({err})", redact_url(url));
                }
                Err(err) => {
                    tracing::warn!(
                        "broker unreachable ({err}); retrying in {:.1} s",
                        delay.as_secs_f64()
                    );
                }
            }
            if shutdown.is_cancelled() {
                return Err(BrokerError::Shutdown);
            }
            position = (position + 1) % urls.len();
        }
        if urls.len() > 1 {
            tracing::warn!(
                "none of the {} broker nodes answered; retrying in {:.1} s",
                urls.len(),
                delay.as_secs_f64()
            );
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

/// The broker URLs in `list`: separated by commas (`WARREN_AMQP_URL`) or
/// white space (a secret file, one per line). A comma or a space inside a
/// URL (a password that has one) stays: a new URL starts only where the
/// next piece starts with `amqp://` or `amqps://`.
pub fn split_urls(list: &str) -> Vec<String> {
    let is_separator = |c: char| c == ',' || c.is_whitespace();
    let starts_url = |s: &str| s.starts_with("amqp://") || s.starts_with("amqps://");
    let mut urls = Vec::new();
    let mut start = 0;
    for (i, c) in list.char_indices() {
        if i < start || !is_separator(c) {
            continue;
        }
        let after = list[i..].trim_start_matches(is_separator);
        if after.is_empty() || starts_url(after) {
            let url = list[start..i].trim_start_matches(is_separator);
            if !url.is_empty() {
                urls.push(url.to_string());
            }
            start = list.len() - after.len();
        }
    }
    let url = list[start..].trim_matches(is_separator);
    if !url.is_empty() {
        urls.push(url.to_string());
    }
    urls
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
    use super::{redact_url, shuffled, split_urls};

    #[test]
    fn url_lists_split_on_commas_and_white_space_but_not_inside_a_password() {
        assert_eq!(
            split_urls("amqp://u:p@rabbit-1,amqp://u:p@rabbit-2/%2f, amqps://u:p@rabbit-3"),
            [
                "amqp://u:p@rabbit-1",
                "amqp://u:p@rabbit-2/%2f",
                "amqps://u:p@rabbit-3"
            ]
        );
        assert_eq!(split_urls("amqp://a\namqp://b\n"), ["amqp://a", "amqp://b"]);
        assert_eq!(
            split_urls("amqp://u:pa,ss w@h,amqp://h2"),
            ["amqp://u:pa,ss w@h", "amqp://h2"]
        );
        assert_eq!(split_urls("amqp://one"), ["amqp://one"]);
        assert!(split_urls(" , ").is_empty());
    }

    #[test]
    fn every_url_is_in_the_order_once_and_orders_differ_between_seeds() {
        for n in 0..6 {
            let mut order = shuffled(n, 42);
            order.sort_unstable();
            assert_eq!(order, (0..n).collect::<Vec<_>>());
        }
        let firsts: std::collections::HashSet<usize> =
            (0..64).map(|seed| shuffled(3, seed)[0]).collect();
        assert_eq!(firsts.len(), 3, "each node comes first for some process");
    }

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
