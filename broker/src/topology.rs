//! The exchanges, queues and bindings of a namespace, declared idempotently.
//!
//! One [`Topology`] value describes everything; [`declare`] applies it to the
//! broker and [`Topology::definitions`] renders it in RabbitMQ's definitions
//! format, so the file compose loads can be checked against the code.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use serde_json::{json, Value};

use crate::{BrokerError, Names, Result};
use model::QueueName;

/// Default number of deliveries after which a job that keeps killing its
/// runner is dead-lettered.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 3;

/// How many dead letters are kept for inspection before the oldest go.
pub const DEAD_LETTER_QUEUE_MAX: i64 = 10_000;

/// How many recent jobs the ledger keeps. An observer that crashed reads
/// it once on restart; a few hundred commits is far more than one poll
/// publishes, and reading it stays well under a second.
pub const LEDGER_MAX: i64 = 1_000;

/// Settings that change the declared arguments. Every component of one
/// deployment must use the same values, or the broker refuses the declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopologySettings {
    /// How many times a job is delivered at most (at least 1).
    pub delivery_limit: u32,
}

impl TopologySettings {
    /// The work queue's `x-delivery-limit`. RabbitMQ counts *returns*: it
    /// dead-letters a message returned more often than the limit, so a
    /// limit of `n` allows `n + 1` deliveries. One less gives exactly
    /// `delivery_limit` deliveries.
    pub fn broker_delivery_limit(&self) -> u32 {
        self.delivery_limit.saturating_sub(1)
    }
}

impl Default for TopologySettings {
    fn default() -> Self {
        TopologySettings {
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Fanout,
    Topic,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Fanout => "fanout",
            Kind::Topic => "topic",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExchangeSpec {
    pub name: String,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: String,
    /// Queue arguments; values are strings or integers.
    pub arguments: Vec<(&'static str, Value)>,
}

#[derive(Debug, Clone)]
pub struct BindingSpec {
    pub exchange: String,
    pub queue: String,
    pub routing_key: String,
}

/// Everything a namespace declares.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchanges: Vec<ExchangeSpec>,
    pub queues: Vec<QueueSpec>,
    pub bindings: Vec<BindingSpec>,
    /// The work queue's arguments, for the named work queues declared on
    /// first use.
    work_queue_arguments: Vec<(&'static str, Value)>,
}

impl Topology {
    pub fn new(names: &Names, settings: TopologySettings) -> Self {
        let exchange = |name: String, kind| ExchangeSpec { name, kind };
        let quorum = |name: String, extra: Vec<(&'static str, Value)>| {
            let mut arguments = vec![("x-queue-type", json!("quorum"))];
            arguments.extend(extra);
            QueueSpec { name, arguments }
        };
        let bind = |exchange: String, queue: String, routing_key: &str| BindingSpec {
            exchange,
            queue,
            routing_key: routing_key.to_string(),
        };
        let work = work_queue_arguments(names, settings);
        Topology {
            work_queue_arguments: work.clone(),
            exchanges: vec![
                exchange(names.jobs_exchange(), Kind::Fanout),
                exchange(names.events_exchange(), Kind::Topic),
                exchange(names.results_exchange(), Kind::Topic),
                exchange(names.control_exchange(), Kind::Fanout),
                exchange(names.dead_letter_exchange(), Kind::Fanout),
                exchange(names.rejected_exchange(), Kind::Fanout),
            ],
            queues: vec![
                QueueSpec {
                    name: names.work_queue(),
                    arguments: work,
                },
                quorum(
                    names.dead_letter_queue(),
                    vec![
                        ("x-max-length", json!(DEAD_LETTER_QUEUE_MAX)),
                        ("x-overflow", json!("drop-head")),
                    ],
                ),
                quorum(names.dispatcher_jobs_queue(), vec![]),
                quorum(names.dispatcher_events_queue(), vec![]),
                quorum(names.dispatcher_results_queue(), vec![]),
                quorum(names.dispatcher_dead_queue(), vec![]),
                quorum(names.dispatcher_rejected_queue(), vec![]),
                quorum(names.dispatcher_control_queue(), vec![]),
                // Classic, not quorum: it is read by get-and-requeue, which
                // a quorum queue counts against its delivery limit. If it is
                // lost, observers fall back to their state files.
                QueueSpec {
                    name: names.ledger_queue(),
                    arguments: vec![
                        ("x-queue-type", json!("classic")),
                        ("x-max-length", json!(LEDGER_MAX)),
                        ("x-overflow", json!("drop-head")),
                    ],
                },
            ],
            bindings: vec![
                bind(names.jobs_exchange(), names.work_queue(), ""),
                bind(names.jobs_exchange(), names.dispatcher_jobs_queue(), ""),
                bind(names.jobs_exchange(), names.ledger_queue(), ""),
                bind(
                    names.events_exchange(),
                    names.dispatcher_events_queue(),
                    "#",
                ),
                bind(
                    names.results_exchange(),
                    names.dispatcher_results_queue(),
                    "#",
                ),
                bind(names.dead_letter_exchange(), names.dead_letter_queue(), ""),
                bind(
                    names.dead_letter_exchange(),
                    names.dispatcher_dead_queue(),
                    "",
                ),
                bind(
                    names.rejected_exchange(),
                    names.dispatcher_rejected_queue(),
                    "",
                ),
                bind(
                    names.control_exchange(),
                    names.dispatcher_control_queue(),
                    "",
                ),
            ],
        }
    }

    /// The same topology with `x-quorum-initial-group-size` = `size` on
    /// every quorum queue, when given. Without it the argument is not
    /// declared: the broker's default (`quorum_cluster_size`, 3) applies,
    /// capped at the cluster's size, and queues declared by a Warren that
    /// did not know the argument stay equivalent (RabbitMQ compares it on
    /// redeclare: an existing queue without it refuses a declare with it).
    pub fn with_quorum_size(mut self, size: Option<u32>) -> Self {
        let Some(size) = size else { return self };
        let argument = ("x-quorum-initial-group-size", json!(size));
        let is_quorum = |arguments: &[(&'static str, Value)]| {
            arguments.contains(&("x-queue-type", json!("quorum")))
        };
        for queue in &mut self.queues {
            if is_quorum(&queue.arguments) {
                queue.arguments.push(argument.clone());
            }
        }
        self.work_queue_arguments.push(argument);
        self
    }

    /// A work queue named `name` (a named queue's, see
    /// [`Names::work_queue_for`]) with the same arguments as the default
    /// work queue: quorum, the delivery limit, dead-lettered to
    /// `N.rejected`. It is bound to nothing: jobs reach it through the
    /// default exchange, routing key = its name.
    pub fn work_queue_spec(&self, name: impl Into<String>) -> QueueSpec {
        QueueSpec {
            name: name.into(),
            arguments: self.work_queue_arguments.clone(),
        }
    }

    /// The topology in RabbitMQ's definitions format (`vhost` is the
    /// virtual host the definitions are loaded into).
    pub fn definitions(&self, vhost: &str) -> Value {
        let exchanges: Vec<Value> = self
            .exchanges
            .iter()
            .map(|e| {
                json!({
                    "name": e.name, "vhost": vhost, "type": e.kind.as_str(),
                    "durable": true, "auto_delete": false, "internal": false, "arguments": {}
                })
            })
            .collect();
        let queues: Vec<Value> = self
            .queues
            .iter()
            .map(|q| {
                let arguments: serde_json::Map<String, Value> = q
                    .arguments
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect();
                json!({
                    "name": q.name, "vhost": vhost, "durable": true,
                    "auto_delete": false, "arguments": arguments
                })
            })
            .collect();
        let bindings: Vec<Value> = self
            .bindings
            .iter()
            .map(|b| {
                json!({
                    "source": b.exchange, "vhost": vhost, "destination": b.queue,
                    "destination_type": "queue", "routing_key": b.routing_key, "arguments": {}
                })
            })
            .collect();
        json!({ "exchanges": exchanges, "queues": queues, "bindings": bindings })
    }
}

/// The arguments of every work queue (the default one and the named ones).
fn work_queue_arguments(names: &Names, settings: TopologySettings) -> Vec<(&'static str, Value)> {
    vec![
        ("x-queue-type", json!("quorum")),
        ("x-delivery-limit", json!(settings.broker_delivery_limit())),
        // Through the dispatcher, which adds the reason in words (the
        // broker's own dead letters carry only `x-death`), then on to the
        // dead-letter exchange.
        ("x-dead-letter-exchange", json!(names.rejected_exchange())),
    ]
}

fn field_table(arguments: &[(&'static str, Value)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in arguments {
        let value = match value {
            Value::Number(n) => AMQPValue::LongLongInt(n.as_i64().unwrap_or_default()),
            Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            other => AMQPValue::LongString(LongString::from(other.to_string())),
        };
        table.insert((*key).into(), value);
    }
    table
}

fn lapin_kind(kind: Kind) -> ExchangeKind {
    match kind {
        Kind::Fanout => ExchangeKind::Fanout,
        Kind::Topic => ExchangeKind::Topic,
    }
}

fn is_precondition_failed(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e)
        if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
}

/// Declares the whole topology. Idempotent: every component calls it at
/// start-up (and after each reconnect), so any start order works.
///
/// The classic queues (the ledger) come last: such a queue lives on one
/// node of a cluster, and while that node is down the broker refuses its
/// declare (`NOT_FOUND`, "home node … is down") and closes the channel.
/// That must not keep a component from connecting through the other
/// nodes: the ledger is an aid (observers fall back to their state files),
/// so its refusal is a warning, and what the channel had left to declare
/// (the classic queues' bindings) stays as the broker has it.
pub async fn declare(channel: &Channel, topology: &Topology) -> Result<()> {
    for exchange in &topology.exchanges {
        channel
            .exchange_declare(
                exchange.name.as_str().into(),
                lapin_kind(exchange.kind),
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::amqp(format!(
                "declaring exchange {}",
                exchange.name
            )))?;
    }
    let (replicated, single_node): (Vec<&QueueSpec>, Vec<&QueueSpec>) = topology
        .queues
        .iter()
        .partition(|q| !q.arguments.contains(&("x-queue-type", json!("classic"))));
    for queue in &replicated {
        declare_queue(channel, queue).await?;
    }
    let bind_to = |queues: &[&QueueSpec]| -> Vec<BindingSpec> {
        topology
            .bindings
            .iter()
            .filter(|b| queues.iter().any(|q| q.name == b.queue))
            .cloned()
            .collect()
    };
    bind(channel, &bind_to(&replicated)).await?;
    for queue in &single_node {
        match declare_queue(channel, queue).await {
            Err(BrokerError::Amqp { source, .. }) if is_not_found(&source) => {
                tracing::warn!(
                    "queue {} is not available (its node is down?), going on without it: {source}",
                    queue.name
                );
                return Ok(());
            }
            declared => declared?,
        }
        bind(channel, &bind_to(&[*queue])).await?;
    }
    Ok(())
}

async fn bind(channel: &Channel, bindings: &[BindingSpec]) -> Result<()> {
    for binding in bindings {
        channel
            .queue_bind(
                binding.queue.as_str().into(),
                binding.exchange.as_str().into(),
                binding.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::amqp(format!(
                "binding {} to {}",
                binding.queue, binding.exchange
            )))?;
    }
    Ok(())
}

fn is_not_found(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e)
        if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
}

/// Declares one durable queue (idempotent). A queue that exists with other
/// arguments is a [`BrokerError::TopologyMismatch`] (and the broker closes
/// the channel).
pub(crate) async fn declare_queue(channel: &Channel, queue: &QueueSpec) -> Result<()> {
    channel
        .queue_declare(
            queue.name.as_str().into(),
            QueueDeclareOptions::durable(),
            field_table(&queue.arguments),
        )
        .await
        .map_err(|source| {
            if is_precondition_failed(&source) {
                BrokerError::TopologyMismatch(format!(
                    "queue {} exists with other arguments ({source}); use the same --delivery-limit and --quorum-size everywhere, or delete the namespace with `warren topology --delete`",
                    queue.name
                ))
            } else {
                BrokerError::Amqp {
                    context: format!("declaring queue {}", queue.name),
                    source,
                }
            }
        })?;
    Ok(())
}

/// Deletes every queue and exchange of the namespace, and the work queues
/// of `named` (tests, `warren topology --delete --queue …`). Missing ones
/// are not an error. AMQP cannot list queues: named work queues not in
/// `named` stay.
pub async fn delete(channel: &Channel, names: &Names, named: &[QueueName]) -> Result<()> {
    let named = named
        .iter()
        .filter(|q| !q.is_default())
        .map(|q| names.work_queue_for(q));
    for queue in names.all_queues().into_iter().chain(named) {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .map_err(BrokerError::amqp(format!("deleting queue {queue}")))?;
    }
    for exchange in names.all_exchanges() {
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .map_err(BrokerError::amqp(format!("deleting exchange {exchange}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_queue_is_quorum_with_delivery_limit_and_dead_letters() {
        let names = Names::new("t");
        let topology = Topology::new(&names, TopologySettings { delivery_limit: 5 });
        let work = topology
            .queues
            .iter()
            .find(|q| q.name == "t.jobs")
            .expect("work queue");
        assert!(work.arguments.contains(&("x-queue-type", json!("quorum"))));
        // Five deliveries: RabbitMQ allows one more than its limit.
        assert!(work.arguments.contains(&("x-delivery-limit", json!(4))));
        assert!(work
            .arguments
            .contains(&("x-dead-letter-exchange", json!("t.rejected"))));
    }

    #[test]
    fn a_named_work_queue_has_the_work_queues_arguments_under_its_own_name() {
        let names = Names::new("t");
        let topology = Topology::new(&names, TopologySettings { delivery_limit: 5 });
        let work = topology
            .queues
            .iter()
            .find(|q| q.name == names.work_queue())
            .expect("work queue");
        let gpu = topology.work_queue_spec("t.jobs.gpu");
        assert_eq!(gpu.name, "t.jobs.gpu");
        assert_eq!(gpu.arguments, work.arguments);
        assert!(!topology.bindings.iter().any(|b| b.queue == gpu.name));
    }

    #[test]
    fn a_quorum_size_is_declared_on_every_quorum_queue_only_when_given() {
        let names = Names::new("t");
        let size = ("x-quorum-initial-group-size", json!(5));
        let plain = Topology::new(&names, TopologySettings::default());
        assert!(plain.queues.iter().all(|q| !q.arguments.contains(&size)));
        let sized = Topology::new(&names, TopologySettings::default()).with_quorum_size(Some(5));
        for queue in &sized.queues {
            let quorum = queue.arguments.contains(&("x-queue-type", json!("quorum")));
            assert_eq!(queue.arguments.contains(&size), quorum, "{}", queue.name);
        }
        assert!(sized
            .work_queue_spec("t.jobs.gpu")
            .arguments
            .contains(&size));
    }

    #[test]
    fn definitions_list_every_queue_exchange_and_binding() {
        let names = Names::new("t");
        let topology = Topology::new(&names, TopologySettings::default());
        let defs = topology.definitions("/");
        assert_eq!(
            defs["queues"].as_array().map(Vec::len),
            Some(names.all_queues().len())
        );
        assert_eq!(
            defs["exchanges"].as_array().map(Vec::len),
            Some(names.all_exchanges().len())
        );
        assert_eq!(
            defs["bindings"].as_array().map(Vec::len),
            Some(topology.bindings.len())
        );
    }

    #[test]
    fn every_bound_queue_and_exchange_is_declared() {
        let topology = Topology::new(&Names::new("t"), TopologySettings::default());
        for b in &topology.bindings {
            assert!(topology.queues.iter().any(|q| q.name == b.queue));
            assert!(topology.exchanges.iter().any(|e| e.name == b.exchange));
        }
    }
}
