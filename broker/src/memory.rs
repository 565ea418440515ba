//! An in-memory broker for unit tests: the namespace's exchanges, queues
//! and bindings built from the same [`Topology`] value the real broker
//! gets, and connections to it that are [`Transport`]s.
//!
//! It models what Warren relies on: fanout, topic (`*`, `#`) and the
//! default exchange; prefetch; `basic.get`; named work queues declared at
//! run time with the work queue's arguments (a declare with other
//! arguments refused); ack, reject and requeue; a connection that
//! closes hands its unsettled deliveries back (redelivered, counted in
//! `x-delivery-count` on quorum queues); a quorum queue's delivery limit
//! dead-letters to its `x-dead-letter-exchange` with the `x-death`
//! headers; `x-max-length` with `drop-head`; exclusive queues that go with
//! their connection; publisher confirms. It is deterministic: everything
//! happens in the call that causes it, under one lock, and tests wait for
//! a state ([`MemoryBroker::wait_for`]) rather than sleep.
//!
//! Faults on demand: a publish that fails, is nacked, or is routed and
//! then loses its connection before the confirm ([`PublishFault`]); an
//! ack whose connection drops ([`MemoryBroker::drop_connection_at_next_ack`]);
//! a connection closed from outside (as the management API does); the
//! whole broker stopped and started again; a queue deleted under its
//! consumers.
//!
//! Not modelled: channels (a connection is one channel that never closes
//! alone), the consumer timeout, message TTLs, priorities, `mandatory`,
//! alternate exchanges, anything but the arguments the topology uses (any
//! other is refused when it is built), and persistence (stopping the
//! broker keeps every queue, as durable queues and persistent messages
//! do).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::Stream;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::consume::header_text;
use crate::topology::{Kind, QueueSpec, Topology};
use crate::transport::{
    Connector, Deliveries, Delivery, Properties, QueueStats, Settle as SettleBy, Transport,
};
use crate::{BrokerError, Confirm, Names, Result};
use model::QueueName;

/// What happens to a publish that meets a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishFault {
    /// The send fails: the connection is gone, nothing was routed.
    Fails,
    /// The broker refuses it (nack); nothing routed, the connection stays.
    Nacked,
    /// The broker routes it, then the connection drops before the confirm
    /// reaches the publisher.
    LostBeforeConfirm,
}

/// A message as a queue holds it.
#[derive(Debug, Clone)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: Properties,
    /// How many times it went back to the queue (connection lost, reject
    /// with requeue).
    pub returns: u32,
    /// When it was published, on the broker's clock (see [`Acked`]).
    pub published: u64,
}

/// A message a consumer acked, and when: the broker's clock counts
/// publishes and acks, so a test can tell which came first.
#[derive(Debug, Clone)]
pub struct Acked {
    pub at: u64,
    pub message: Message,
}

impl Message {
    /// A header's value as text (strings and integers), if present.
    pub fn header(&self, key: &str) -> Option<String> {
        header_text(&self.properties, key)
    }
}

/// A queue's counts, for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueCounts {
    pub ready: usize,
    pub unacked: usize,
    pub consumers: usize,
}

/// The broker. Cheap to clone; clones are the same broker.
#[derive(Clone)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

struct Shared {
    names: Names,
    state: Mutex<State>,
    /// Bumped after every change, for [`MemoryBroker::wait_for`].
    changed: watch::Sender<u64>,
}

/// A publish fault armed for an exchange: `skip` more publishes to it go
/// through first.
struct PublishRule {
    exchange: String,
    skip: usize,
    fault: PublishFault,
}

struct State {
    me: Weak<Shared>,
    exchanges: HashMap<String, Kind>,
    /// (exchange, queue, routing key)
    bindings: Vec<(String, String, String)>,
    queues: HashMap<String, Queue>,
    // Ordered maps: closing every connection, or a connection's consumers,
    // happens in the same order on every run.
    connections: BTreeMap<u64, Link>,
    consumers: BTreeMap<u64, Consumer>,
    next_id: u64,
    publish_faults: Vec<PublishRule>,
    /// Queues whose next ack finds its connection gone.
    ack_faults: Vec<String>,
    /// Stopped: no connection is accepted.
    stopped: bool,
    /// What it was built from: the named work queues' arguments.
    topology: Topology,
    /// Queues with new ready messages or freed prefetch since the last
    /// dispatch.
    to_dispatch: Vec<String>,
    /// Counts publishes and acks.
    clock: u64,
    /// Every ack, per queue, in order.
    acked: HashMap<String, Vec<Acked>>,
}

struct Link {
    name: String,
    closed: CancellationToken,
}

struct Queue {
    ready: VecDeque<Message>,
    /// As declared: a declare with other arguments is refused.
    arguments: Vec<(&'static str, serde_json::Value)>,
    quorum: bool,
    /// The broker's `x-delivery-limit`: dead-lettered once returned more
    /// often than this.
    delivery_limit: Option<u32>,
    dead_letter_exchange: Option<String>,
    max_length: Option<usize>,
    /// The connection an exclusive queue belongs to.
    owner: Option<u64>,
    /// Its consumers, served in turn.
    consumers: Vec<u64>,
    turn: usize,
}

struct Consumer {
    connection: u64,
    queue: String,
    /// Holds what the connection took from `queue` with `get`: it is
    /// never in the queue's list of consumers, so nothing is pushed to it.
    getter: bool,
    /// 0: no limit.
    prefetch: usize,
    next_tag: u64,
    unacked: BTreeMap<u64, Message>,
    sender: mpsc::UnboundedSender<Delivery>,
}

/// Settles one delivery of the in-memory broker.
pub(crate) struct Settle {
    shared: Arc<Shared>,
    consumer: u64,
    tag: u64,
}

enum Settlement {
    Ack,
    Reject { requeue: bool },
}

impl MemoryBroker {
    /// A broker holding `topology` (build it with [`Topology::new`] from
    /// the component's names and settings, as `Broker::open` does).
    /// Refuses queue arguments it does not model.
    pub fn new(names: &Names, topology: &Topology) -> Result<MemoryBroker> {
        let mut queues = HashMap::new();
        for spec in &topology.queues {
            queues.insert(spec.name.clone(), Queue::from_spec(spec)?);
        }
        let exchanges = topology
            .exchanges
            .iter()
            .map(|e| (e.name.clone(), e.kind))
            .collect();
        let bindings = topology
            .bindings
            .iter()
            .map(|b| (b.exchange.clone(), b.queue.clone(), b.routing_key.clone()))
            .collect();
        let shared = Arc::new_cyclic(|me| Shared {
            names: names.clone(),
            state: Mutex::new(State {
                me: me.clone(),
                exchanges,
                bindings,
                queues,
                connections: BTreeMap::new(),
                consumers: BTreeMap::new(),
                next_id: 1,
                publish_faults: Vec::new(),
                ack_faults: Vec::new(),
                stopped: false,
                topology: topology.clone(),
                to_dispatch: Vec::new(),
                clock: 0,
                acked: HashMap::new(),
            }),
            changed: watch::channel(0).0,
        });
        Ok(MemoryBroker { shared })
    }

    /// Opens a connection, unless the broker is stopped.
    pub fn open(&self, connection_name: &str) -> Result<MemoryTransport> {
        let (id, closed) = self.shared.change(|state| {
            if state.stopped {
                return Err(BrokerError::ConnectionLost);
            }
            let id = state.new_id();
            let closed = CancellationToken::new();
            state.connections.insert(
                id,
                Link {
                    name: connection_name.to_string(),
                    closed: closed.clone(),
                },
            );
            Ok((id, closed))
        })?;
        Ok(MemoryTransport {
            shared: self.shared.clone(),
            id,
            name: connection_name.to_string(),
            closed,
        })
    }

    /// From now on, the publish to `exchange` after the next `skip` ones
    /// meets `fault`. Several faults for one exchange apply in turn.
    pub fn fail_publish(&self, exchange: &str, skip: usize, fault: PublishFault) {
        self.shared.change(|state| {
            state.publish_faults.push(PublishRule {
                exchange: exchange.to_string(),
                skip,
                fault,
            })
        });
    }

    /// The next ack of a delivery from `queue` finds its connection gone:
    /// the connection closes (its deliveries go back to their queues) and
    /// the ack fails.
    pub fn drop_connection_at_next_ack(&self, queue: &str) {
        self.shared
            .change(|state| state.ack_faults.push(queue.to_string()));
    }

    /// Closes every connection named `connection_name` from outside, as
    /// the management API does. Returns whether there was one.
    pub fn close_connection(&self, connection_name: &str) -> bool {
        self.shared.change(|state| {
            let ids: Vec<u64> = state
                .connections
                .iter()
                .filter(|(_, link)| link.name == connection_name)
                .map(|(id, _)| *id)
                .collect();
            for id in &ids {
                state.close(*id);
            }
            !ids.is_empty()
        })
    }

    /// Stops the broker: every connection closes, none is accepted until
    /// [`MemoryBroker::start`]. Queues and their messages stay.
    pub fn stop(&self) {
        self.shared.change(|state| {
            state.stopped = true;
            let ids: Vec<u64> = state.connections.keys().copied().collect();
            for id in ids {
                state.close(id);
            }
        });
    }

    /// Accepts connections again.
    pub fn start(&self) {
        self.shared.change(|state| state.stopped = false);
    }

    /// Deletes a queue: its consumers end (their streams finish), its
    /// messages are gone.
    pub fn delete_queue(&self, queue: &str) -> bool {
        self.shared.change(|state| state.delete_queue(queue))
    }

    /// The names of every queue, the private ones included.
    pub fn queues(&self) -> Vec<String> {
        self.shared.read(|state| {
            let mut names: Vec<String> = state.queues.keys().cloned().collect();
            names.sort();
            names
        })
    }

    /// The names of the open connections.
    pub fn connections(&self) -> Vec<String> {
        self.shared.read(|state| {
            let mut names: Vec<String> =
                state.connections.values().map(|l| l.name.clone()).collect();
            names.sort();
            names
        })
    }

    /// The messages ready in `queue`, oldest first, left in place.
    pub fn ready(&self, queue: &str) -> Vec<Message> {
        self.shared.read(|state| {
            state
                .queues
                .get(queue)
                .map(|q| q.ready.iter().cloned().collect())
                .unwrap_or_default()
        })
    }

    /// Takes every message ready in `queue` (as a consumer that acks them).
    pub fn take(&self, queue: &str) -> Vec<Message> {
        self.shared.change(|state| {
            state
                .queues
                .get_mut(queue)
                .map(|q| q.ready.drain(..).collect())
                .unwrap_or_default()
        })
    }

    /// Every message acked from `queue`, in order, with when.
    pub fn acked(&self, queue: &str) -> Vec<Acked> {
        self.shared
            .read(|state| state.acked.get(queue).cloned().unwrap_or_default())
    }

    /// A queue's counts; zero for a queue that does not exist.
    pub fn counts(&self, queue: &str) -> QueueCounts {
        self.shared.read(|state| {
            let Some(q) = state.queues.get(queue) else {
                return QueueCounts::default();
            };
            QueueCounts {
                ready: q.ready.len(),
                unacked: q
                    .consumers
                    .iter()
                    .chain(state.orphan_consumers(queue).iter())
                    .filter_map(|id| state.consumers.get(id))
                    .map(|c| c.unacked.len())
                    .sum(),
                consumers: q.consumers.len(),
            }
        })
    }

    /// Waits until `check` returns something, looking again after every
    /// change of the broker; [`BrokerError::Timeout`] after `within`.
    pub async fn wait_for<T>(
        &self,
        within: Duration,
        mut check: impl FnMut(&MemoryBroker) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + within;
        let mut changed = self.shared.changed.subscribe();
        loop {
            if let Some(found) = check(self) {
                return Ok(found);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives as long as the broker, which `self` holds.
                Ok(Err(_)) | Err(_) => {
                    return Err(BrokerError::Timeout(format!(
                        "waiting {} s for the in-memory broker",
                        within.as_secs_f64()
                    )))
                }
            }
        }
    }
}

impl Connector for MemoryBroker {
    /// Waits while the broker is stopped, like a reconnect loop.
    fn connect<'a>(
        &'a self,
        connection_name: &'a str,
        shutdown: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Arc<dyn Transport>>> {
        Box::pin(async move {
            let mut changed = self.shared.changed.subscribe();
            loop {
                match self.open(connection_name) {
                    Ok(transport) => return Ok(Arc::new(transport) as Arc<dyn Transport>),
                    Err(BrokerError::ConnectionLost) => {}
                    Err(err) => return Err(err),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(BrokerError::Shutdown),
                    _ = changed.changed() => {}
                }
            }
        })
    }
}

impl Shared {
    /// Runs `f` on the state, delivers what became deliverable, and tells
    /// waiters that something changed.
    fn change<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let out = f(&mut state);
            state.dispatch();
            out
        };
        self.changed.send_modify(|version| *version += 1);
        out
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Queue {
    /// A durable queue as `spec` declares it; refuses the arguments it does
    /// not model.
    fn from_spec(spec: &QueueSpec) -> Result<Queue> {
        let mut queue = Queue::new(None);
        queue.arguments = spec.arguments.clone();
        for (key, value) in &spec.arguments {
            let number = || value.as_u64().and_then(|n| usize::try_from(n).ok());
            let known = match (*key, value.as_str()) {
                ("x-queue-type", Some(kind @ ("quorum" | "classic"))) => {
                    queue.quorum = kind == "quorum";
                    true
                }
                ("x-delivery-limit", _) => {
                    queue.delivery_limit = number().and_then(|n| u32::try_from(n).ok());
                    queue.delivery_limit.is_some()
                }
                ("x-dead-letter-exchange", Some(exchange)) => {
                    queue.dead_letter_exchange = Some(exchange.to_string());
                    true
                }
                ("x-max-length", _) => {
                    queue.max_length = number();
                    queue.max_length.is_some()
                }
                ("x-overflow", Some("drop-head")) => true,
                _ => false,
            };
            if !known {
                return Err(BrokerError::TopologyMismatch(format!(
                    "the in-memory broker does not model {key} = {value} (queue {})",
                    spec.name
                )));
            }
        }
        Ok(queue)
    }

    fn new(owner: Option<u64>) -> Self {
        Queue {
            ready: VecDeque::new(),
            arguments: Vec::new(),
            quorum: false,
            delivery_limit: None,
            dead_letter_exchange: None,
            max_length: None,
            owner,
            consumers: Vec::new(),
            turn: 0,
        }
    }
}

impl State {
    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn is_open(&self, connection: u64) -> bool {
        self.connections.contains_key(&connection)
    }

    /// Consumers of `queue` no longer in its list (their stream was
    /// dropped) that still hold unacked deliveries.
    fn orphan_consumers(&self, queue: &str) -> Vec<u64> {
        let listed = self.queues.get(queue).map(|q| &q.consumers);
        self.consumers
            .iter()
            .filter(|(id, c)| c.queue == queue && !listed.is_some_and(|l| l.contains(id)))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Routes a message to every queue `exchange` sends it to. An unknown
    /// exchange is a channel error, as in AMQP; a message no queue takes
    /// is dropped (and confirmed).
    fn route(&mut self, message: Message) -> Result<()> {
        let targets: Vec<String> = if message.exchange.is_empty() {
            // The default exchange: the queue named by the routing key.
            self.queues
                .contains_key(&message.routing_key)
                .then(|| message.routing_key.clone())
                .into_iter()
                .collect()
        } else {
            let Some(kind) = self.exchanges.get(&message.exchange).copied() else {
                return Err(BrokerError::Channel(format!(
                    "no exchange {:?} (NOT_FOUND)",
                    message.exchange
                )));
            };
            let mut targets: Vec<String> = Vec::new();
            for (exchange, queue, key) in &self.bindings {
                let matches = exchange == &message.exchange
                    && match kind {
                        Kind::Fanout => true,
                        Kind::Topic => topic_matches(key, &message.routing_key),
                    };
                if matches && !targets.contains(queue) {
                    targets.push(queue.clone());
                }
            }
            targets
        };
        for name in targets {
            self.enqueue(&name, message.clone());
        }
        Ok(())
    }

    fn enqueue(&mut self, name: &str, message: Message) {
        let Some(queue) = self.queues.get_mut(name) else {
            return;
        };
        queue.ready.push_back(message);
        if let Some(max) = queue.max_length {
            while queue.ready.len() > max {
                // drop-head; the topology's bounded queues dead-letter nowhere.
                queue.ready.pop_front();
            }
        }
        self.to_dispatch.push(name.to_string());
    }

    /// Hands out ready messages to consumers with room, in turn.
    fn dispatch(&mut self) {
        let Some(shared) = self.me.upgrade() else {
            return;
        };
        let pending = std::mem::take(&mut self.to_dispatch);
        for name in pending {
            let State {
                queues, consumers, ..
            } = self;
            let Some(queue) = queues.get_mut(&name) else {
                continue;
            };
            while !queue.ready.is_empty() {
                let count = queue.consumers.len();
                let chosen = (0..count).map(|i| (queue.turn + i) % count).find(|&i| {
                    consumers
                        .get(&queue.consumers[i])
                        .is_some_and(|c| c.prefetch == 0 || c.unacked.len() < c.prefetch)
                });
                let Some(index) = chosen else { break };
                let id = queue.consumers[index];
                let Some(consumer) = consumers.get_mut(&id) else {
                    break;
                };
                let Some(message) = queue.ready.pop_front() else {
                    break;
                };
                consumer.next_tag += 1;
                let tag = consumer.next_tag;
                let delivery = Delivery::new(
                    message.body.clone(),
                    delivered_properties(&message, queue.quorum, false),
                    message.returns > 0,
                    SettleBy::Memory(Settle {
                        shared: shared.clone(),
                        consumer: id,
                        tag,
                    }),
                );
                if consumer.sender.send(delivery).is_err() {
                    // Its stream was dropped: it takes no more (what it
                    // holds unacked goes back when its connection closes).
                    queue.ready.push_front(message);
                    queue.consumers.remove(index);
                    continue;
                }
                consumer.unacked.insert(tag, message);
                queue.turn = index + 1;
            }
        }
    }

    /// A delivery goes back to its queue, or on to the dead-letter
    /// exchange once returned more often than the delivery limit.
    fn give_back(&mut self, name: &str, mut message: Message) {
        message.returns += 1;
        let Some(queue) = self.queues.get_mut(name) else {
            return;
        };
        if queue
            .delivery_limit
            .is_some_and(|limit| message.returns > limit)
        {
            self.dead_letter(name, message, "delivery_limit");
            return;
        }
        queue.ready.push_front(message);
        self.to_dispatch.push(name.to_string());
    }

    /// Sends a message the queue gives up on to its dead-letter exchange,
    /// with the headers RabbitMQ adds; dropped when it has none.
    fn dead_letter(&mut self, name: &str, mut message: Message, reason: &str) {
        let Some(exchange) = self
            .queues
            .get(name)
            .and_then(|q| q.dead_letter_exchange.clone())
        else {
            return;
        };
        let mut headers = message.properties.headers().clone().unwrap_or_default();
        let first = [
            ("x-first-death-reason", reason),
            ("x-first-death-queue", name),
            ("x-first-death-exchange", message.exchange.as_str()),
        ];
        for (key, value) in first {
            if !headers.contains_key(key) {
                headers.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
            }
        }
        let mut death = FieldTable::default();
        death.insert("reason".into(), text(reason));
        death.insert("queue".into(), text(name));
        death.insert("exchange".into(), text(&message.exchange));
        death.insert("count".into(), AMQPValue::LongLongInt(1));
        let mut keys = FieldArray::default();
        keys.push(text(&message.routing_key));
        death.insert("routing-keys".into(), AMQPValue::FieldArray(keys));
        let mut deaths = FieldArray::default();
        deaths.push(AMQPValue::FieldTable(death));
        if let Some(AMQPValue::FieldArray(earlier)) = headers.inner().get("x-death") {
            for value in earlier.as_slice() {
                deaths.push(value.clone());
            }
        }
        headers.insert("x-death".into(), AMQPValue::FieldArray(deaths));
        message.properties = message.properties.with_headers(headers);
        message.exchange = exchange;
        message.returns = 0;
        // A dead-letter exchange that is missing drops it, as RabbitMQ does.
        let _ = self.route(message);
    }

    /// Closes a connection: its consumers end, their unacked deliveries go
    /// back (oldest in front), its exclusive queues are deleted.
    fn close(&mut self, id: u64) {
        let Some(link) = self.connections.remove(&id) else {
            return;
        };
        link.closed.cancel();
        let mine: Vec<u64> = self
            .consumers
            .iter()
            .filter(|(_, c)| c.connection == id)
            .map(|(cid, _)| *cid)
            .collect();
        let mut unacked = Vec::new();
        for cid in mine {
            let Some(consumer) = self.consumers.remove(&cid) else {
                continue;
            };
            if let Some(queue) = self.queues.get_mut(&consumer.queue) {
                queue.consumers.retain(|c| *c != cid);
            }
            let queue = consumer.queue;
            unacked.extend(consumer.unacked.into_values().map(|m| (queue.clone(), m)));
        }
        // Newest first, each pushed to the front: the oldest ends first.
        unacked.sort_by_key(|(_, message)| std::cmp::Reverse(message.published));
        for (queue, message) in unacked {
            self.give_back(&queue, message);
        }
        let exclusive: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| q.owner == Some(id))
            .map(|(name, _)| name.clone())
            .collect();
        for name in exclusive {
            self.delete_queue(&name);
        }
    }

    fn delete_queue(&mut self, name: &str) -> bool {
        if self.queues.remove(name).is_none() {
            return false;
        }
        self.bindings.retain(|(_, queue, _)| queue != name);
        // Dropping the consumers ends their streams.
        self.consumers.retain(|_, c| c.queue != name);
        true
    }

    fn publish(&mut self, connection: u64, mut message: Message) -> Result<Result<()>> {
        if !self.is_open(connection) {
            return Err(BrokerError::ConnectionLost);
        }
        self.clock += 1;
        message.published = self.clock;
        let fault = match self
            .publish_faults
            .iter()
            .position(|rule| rule.exchange == message.exchange)
        {
            Some(index) if self.publish_faults[index].skip > 0 => {
                self.publish_faults[index].skip -= 1;
                None
            }
            Some(index) => Some(self.publish_faults.remove(index).fault),
            None => None,
        };
        match fault {
            None => self.route(message).map(Ok),
            Some(PublishFault::Fails) => {
                self.close(connection);
                Err(BrokerError::ConnectionLost)
            }
            Some(PublishFault::Nacked) => Ok(Err(BrokerError::Nacked {
                exchange: message.exchange,
            })),
            Some(PublishFault::LostBeforeConfirm) => {
                self.route(message)?;
                self.close(connection);
                Ok(Err(BrokerError::ConnectionLost))
            }
        }
    }

    fn consume(
        &mut self,
        connection: u64,
        closed: &CancellationToken,
        queue: &str,
        prefetch: u16,
    ) -> Result<Deliveries> {
        if !self.is_open(connection) {
            return Err(BrokerError::ConnectionLost);
        }
        let id = self.new_id();
        let Some(q) = self.queues.get_mut(queue) else {
            return Err(BrokerError::Channel(format!(
                "no queue {queue:?} (NOT_FOUND)"
            )));
        };
        if q.owner.is_some_and(|owner| owner != connection) {
            return Err(BrokerError::Channel(format!(
                "queue {queue:?} is exclusive to another connection (RESOURCE_LOCKED)"
            )));
        }
        q.consumers.push(id);
        let (sender, receiver) = mpsc::unbounded_channel();
        self.consumers.insert(
            id,
            Consumer {
                connection,
                queue: queue.to_string(),
                getter: false,
                prefetch: usize::from(prefetch),
                next_tag: 0,
                unacked: BTreeMap::new(),
                sender,
            },
        );
        self.to_dispatch.push(queue.to_string());
        Ok(Box::pin(MemoryDeliveries {
            receiver,
            closed: closed.clone(),
        }))
    }

    /// Declares a durable queue (idempotent); one that exists with other
    /// arguments is refused, as RabbitMQ does (`PRECONDITION_FAILED`).
    fn declare_queue(&mut self, connection: u64, spec: &QueueSpec) -> Result<()> {
        if !self.is_open(connection) {
            return Err(BrokerError::ConnectionLost);
        }
        match self.queues.get(&spec.name) {
            Some(queue) if queue.arguments == spec.arguments => Ok(()),
            Some(_) => Err(BrokerError::TopologyMismatch(format!(
                "queue {} exists with other arguments (PRECONDITION_FAILED)",
                spec.name
            ))),
            None => {
                self.queues
                    .insert(spec.name.clone(), Queue::from_spec(spec)?);
                Ok(())
            }
        }
    }

    /// `basic.get`: the next ready message of `queue`, held unacked by the
    /// connection's getter of that queue.
    fn get(&mut self, connection: u64, queue: &str) -> Result<Option<Delivery>> {
        if !self.is_open(connection) {
            return Err(BrokerError::ConnectionLost);
        }
        let Some(shared) = self.me.upgrade() else {
            return Err(BrokerError::ConnectionLost);
        };
        let Some(q) = self.queues.get(queue) else {
            return Err(BrokerError::Channel(format!(
                "no queue {queue:?} (NOT_FOUND)"
            )));
        };
        if q.owner.is_some_and(|owner| owner != connection) {
            return Err(BrokerError::Channel(format!(
                "queue {queue:?} is exclusive to another connection (RESOURCE_LOCKED)"
            )));
        }
        if q.ready.is_empty() {
            return Ok(None);
        }
        let existing = self
            .consumers
            .iter()
            .find(|(_, c)| c.getter && c.connection == connection && c.queue == queue)
            .map(|(id, _)| *id);
        let id = match existing {
            Some(id) => id,
            None => {
                let id = self.new_id();
                self.consumers.insert(
                    id,
                    Consumer {
                        connection,
                        queue: queue.to_string(),
                        getter: true,
                        prefetch: 0,
                        next_tag: 0,
                        unacked: BTreeMap::new(),
                        // Never sent to: a getter is in no queue's list.
                        sender: mpsc::unbounded_channel().0,
                    },
                );
                id
            }
        };
        let (Some(q), Some(consumer)) = (self.queues.get_mut(queue), self.consumers.get_mut(&id))
        else {
            return Ok(None);
        };
        let Some(message) = q.ready.pop_front() else {
            return Ok(None);
        };
        consumer.next_tag += 1;
        let tag = consumer.next_tag;
        let delivery = Delivery::new(
            message.body.clone(),
            delivered_properties(&message, q.quorum, true),
            message.returns > 0,
            SettleBy::Memory(Settle {
                shared,
                consumer: id,
                tag,
            }),
        );
        consumer.unacked.insert(tag, message);
        Ok(Some(delivery))
    }

    fn settle(&mut self, consumer: u64, tag: u64, how: Settlement) -> Result<()> {
        let Some(held) = self.consumers.get(&consumer) else {
            // Its connection closed (or its queue went): it was handed back.
            return Err(BrokerError::ConnectionLost);
        };
        let (connection, queue) = (held.connection, held.queue.clone());
        if matches!(how, Settlement::Ack) {
            if let Some(index) = self.ack_faults.iter().position(|q| *q == queue) {
                self.ack_faults.remove(index);
                self.close(connection);
                return Err(BrokerError::ConnectionLost);
            }
        }
        let Some(message) = self
            .consumers
            .get_mut(&consumer)
            .and_then(|c| c.unacked.remove(&tag))
        else {
            return Err(BrokerError::Channel(format!(
                "unknown delivery tag {tag} (PRECONDITION_FAILED)"
            )));
        };
        self.to_dispatch.push(queue.clone());
        match how {
            Settlement::Ack => {
                self.clock += 1;
                let at = self.clock;
                self.acked
                    .entry(queue)
                    .or_default()
                    .push(Acked { at, message });
            }
            Settlement::Reject { requeue: true } => self.give_back(&queue, message),
            Settlement::Reject { requeue: false } => self.dead_letter(&queue, message, "rejected"),
        }
        Ok(())
    }
}

/// The properties a consumer sees: a quorum queue counts earlier returns
/// in `x-delivery-count`, on a first delivery too when it is a `get` (as
/// RabbitMQ does: `Some(0)`).
fn delivered_properties(message: &Message, quorum: bool, get: bool) -> Properties {
    if !quorum || (message.returns == 0 && !get) {
        return message.properties.clone();
    }
    let mut headers = message.properties.headers().clone().unwrap_or_default();
    headers.insert(
        "x-delivery-count".into(),
        AMQPValue::LongLongInt(i64::from(message.returns)),
    );
    message.properties.clone().with_headers(headers)
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Whether a topic binding key matches a routing key: `*` is one word,
/// `#` zero or more.
fn topic_matches(pattern: &str, key: &str) -> bool {
    fn words(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| words(rest, &key[skip..])),
            Some((&word, rest)) => key
                .split_first()
                .is_some_and(|(first, tail)| (word == "*" || word == *first) && words(rest, tail)),
        }
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    };
    words(&pattern, &key)
}

impl Settle {
    pub(crate) fn ack(self) -> Result<()> {
        self.settle(Settlement::Ack)
    }

    pub(crate) fn reject(self, requeue: bool) -> Result<()> {
        self.settle(Settlement::Reject { requeue })
    }

    fn settle(self, how: Settlement) -> Result<()> {
        self.shared
            .change(|state| state.settle(self.consumer, self.tag, how))
    }
}

/// A consumer's deliveries; ends as soon as its connection is closed, even
/// with deliveries still buffered (they went back to the queue).
struct MemoryDeliveries {
    receiver: mpsc::UnboundedReceiver<Delivery>,
    closed: CancellationToken,
}

impl Stream for MemoryDeliveries {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.closed.is_cancelled() {
            return Poll::Ready(None);
        }
        self.receiver.poll_recv(cx).map(|next| next.map(Ok))
    }
}

/// One connection to a [`MemoryBroker`]. Dropping it closes it.
pub struct MemoryTransport {
    shared: Arc<Shared>,
    id: u64,
    name: String,
    closed: CancellationToken,
}

impl Drop for MemoryTransport {
    fn drop(&mut self) {
        let id = self.id;
        self.shared.change(|state| state.close(id));
    }
}

impl Transport for MemoryTransport {
    fn names(&self) -> &Names {
        &self.shared.names
    }

    fn connection_name(&self) -> &str {
        &self.name
    }

    fn send<'a>(
        &'a self,
        exchange: &'a str,
        routing_key: &'a str,
        body: &'a [u8],
        properties: Properties,
    ) -> BoxFuture<'a, Result<Confirm>> {
        let message = Message {
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            body: body.to_vec(),
            properties,
            returns: 0,
            published: 0,
        };
        let sent = self
            .shared
            .change(|state| state.publish(self.id, message))
            .map(|answer| Confirm::answered(exchange, answer));
        Box::pin(async move { sent })
    }

    fn consume<'a>(&'a self, queue: &'a str, prefetch: u16) -> BoxFuture<'a, Result<Deliveries>> {
        let consumed = self
            .shared
            .change(|state| state.consume(self.id, &self.closed, queue, prefetch));
        Box::pin(async move { consumed })
    }

    fn declare_work_queue<'a>(&'a self, queue: &'a QueueName) -> BoxFuture<'a, Result<String>> {
        let name = self.shared.names.work_queue_for(queue);
        let declared = self.shared.change(|state| {
            if queue.is_default() {
                // Part of the topology.
                return if state.is_open(self.id) {
                    Ok(())
                } else {
                    Err(BrokerError::ConnectionLost)
                };
            }
            let spec = state.topology.work_queue_spec(name.clone());
            state.declare_queue(self.id, &spec)
        });
        Box::pin(async move { declared.map(|()| name) })
    }

    fn get<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<Option<Delivery>>> {
        let got = self.shared.change(|state| state.get(self.id, queue));
        Box::pin(async move { got })
    }

    fn subscribe<'a>(&'a self, exchange: &'a str) -> BoxFuture<'a, Result<Deliveries>> {
        let subscribed = self.shared.change(|state| {
            if !state.is_open(self.id) {
                return Err(BrokerError::ConnectionLost);
            }
            if !state.exchanges.contains_key(exchange) {
                return Err(BrokerError::Channel(format!(
                    "no exchange {exchange:?} (NOT_FOUND)"
                )));
            }
            let queue = format!("amq.gen-{}", state.new_id());
            state
                .queues
                .insert(queue.clone(), Queue::new(Some(self.id)));
            state
                .bindings
                .push((exchange.to_string(), queue.clone(), String::new()));
            state.consume(self.id, &self.closed, &queue, 0)
        });
        Box::pin(async move { subscribed })
    }

    fn peek<'a>(&'a self, queue: &'a str, max: usize) -> BoxFuture<'a, Result<Vec<Vec<u8>>>> {
        let bodies = self.shared.read(|state| {
            if !state.is_open(self.id) {
                return Err(BrokerError::ConnectionLost);
            }
            let q = state
                .queues
                .get(queue)
                .ok_or_else(|| BrokerError::Channel(format!("no queue {queue:?} (NOT_FOUND)")))?;
            Ok(q.ready.iter().take(max).map(|m| m.body.clone()).collect())
        });
        Box::pin(async move { bodies })
    }

    fn queue_stats<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<QueueStats>> {
        let stats = self.shared.read(|state| {
            if !state.is_open(self.id) {
                return Err(BrokerError::ConnectionLost);
            }
            let q = state
                .queues
                .get(queue)
                .ok_or_else(|| BrokerError::Channel(format!("no queue {queue:?} (NOT_FOUND)")))?;
            Ok(QueueStats {
                ready: u32::try_from(q.ready.len()).unwrap_or(u32::MAX),
                consumers: u32::try_from(q.consumers.len()).unwrap_or(u32::MAX),
            })
        });
        Box::pin(async move { stats })
    }

    fn is_connected(&self) -> bool {
        !self.closed.is_cancelled()
    }

    fn closed(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.closed.cancelled())
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        let id = self.id;
        self.shared.change(|state| state.close(id));
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::TopologySettings;
    use futures::StreamExt;

    const WITHIN: Duration = Duration::from_secs(10);

    fn broker() -> (MemoryBroker, Names) {
        let names = Names::new("t");
        let topology = Topology::new(&names, TopologySettings::default());
        (
            MemoryBroker::new(&names, &topology).expect("the topology is modelled"),
            names,
        )
    }

    async fn next(deliveries: &mut Deliveries) -> Delivery {
        tokio::time::timeout(WITHIN, deliveries.next())
            .await
            .expect("a delivery in time")
            .expect("the consumer is open")
            .expect("a delivery")
    }

    async fn publish(transport: &dyn Transport, exchange: &str, key: &str, body: &[u8]) {
        transport
            .publish_raw(
                exchange,
                key,
                body,
                vec![("x-client".into(), "test".into())],
            )
            .await
            .expect("published");
    }

    #[test]
    fn topic_keys_match_words_with_star_and_hash() {
        assert!(topic_matches("#", "result.passed"));
        assert!(topic_matches("#", ""));
        assert!(topic_matches("result.*", "result.passed"));
        assert!(!topic_matches("result.*", "result.passed.late"));
        assert!(topic_matches("result.#", "result"));
        assert!(topic_matches("*.passed", "result.passed"));
        assert!(!topic_matches("event.*", "result.passed"));
        assert!(topic_matches("a.#.z", "a.b.c.z"));
        assert!(!topic_matches("a.#.z", "a.b.c"));
    }

    #[test]
    fn arguments_it_does_not_model_are_refused() {
        let names = Names::new("t");
        let mut topology = Topology::new(&names, TopologySettings::default());
        topology.queues[0]
            .arguments
            .push(("x-message-ttl", serde_json::json!(1000)));
        let refused = MemoryBroker::new(&names, &topology)
            .err()
            .map(|e| e.to_string());
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("x-message-ttl")),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn messages_are_routed_as_the_topology_binds_them() {
        let (broker, names) = broker();
        let t = broker.open("publisher").expect("open");
        publish(&t, &names.jobs_exchange(), "", b"job").await;
        publish(&t, &names.events_exchange(), "event.heartbeat", b"beat").await;
        publish(&t, &names.results_exchange(), "result.passed", b"result").await;
        // The default exchange names the queue.
        publish(&t, "", &names.work_queue(), b"again").await;
        let bodies = |queue: String| -> Vec<Vec<u8>> {
            broker.ready(&queue).into_iter().map(|m| m.body).collect()
        };
        assert_eq!(
            bodies(names.work_queue()),
            [b"job".to_vec(), b"again".to_vec()]
        );
        assert_eq!(bodies(names.dispatcher_jobs_queue()), [b"job".to_vec()]);
        assert_eq!(bodies(names.ledger_queue()), [b"job".to_vec()]);
        assert_eq!(bodies(names.dispatcher_events_queue()), [b"beat".to_vec()]);
        assert_eq!(
            bodies(names.dispatcher_results_queue()),
            [b"result".to_vec()]
        );
        let sent = broker.ready(&names.work_queue()).remove(0);
        assert_eq!(sent.properties.delivery_mode(), &Some(2), "persistent");
        // An exchange that does not exist is a channel error.
        let missing = (&t as &dyn Transport)
            .publish_raw("t.nowhere", "", b"x", vec![])
            .await;
        assert!(
            matches!(missing, Err(BrokerError::Channel(_))),
            "{missing:?}"
        );
    }

    #[tokio::test]
    async fn prefetch_bounds_what_a_consumer_holds_until_it_acks() {
        let (broker, names) = broker();
        let t = broker.open("c").expect("open");
        for body in [b"1", b"2", b"3"] {
            publish(&t, &names.jobs_exchange(), "", body).await;
        }
        let mut jobs = t.consume(&names.work_queue(), 2).await.expect("consume");
        let first = next(&mut jobs).await;
        let _second = next(&mut jobs).await;
        let counts = broker.counts(&names.work_queue());
        assert_eq!((counts.ready, counts.unacked), (1, 2));
        first.ack().await.expect("ack");
        let third = next(&mut jobs).await;
        assert_eq!(third.body(), b"3");
        assert_eq!(broker.counts(&names.work_queue()).ready, 0);
    }

    #[tokio::test]
    async fn a_closed_connection_hands_its_deliveries_back_until_the_delivery_limit() {
        let (broker, names) = broker();
        let publisher = broker.open("publisher").expect("open");
        publish(&publisher, &names.jobs_exchange(), "", b"poison").await;
        // Default --delivery-limit 3: three deliveries, then dead-lettered.
        for delivery in 1..=3u64 {
            let runner = broker.open(&format!("runner-{delivery}")).expect("open");
            let mut jobs = runner
                .consume(&names.work_queue(), 1)
                .await
                .expect("consume");
            let job = next(&mut jobs).await;
            assert_eq!(job.redelivered(), delivery > 1);
            assert_eq!(job.delivery_count(), (delivery > 1).then_some(delivery - 1));
            // The runner dies with the job.
            drop(runner);
            assert!(
                jobs.next().await.is_none(),
                "the consumer ends with its connection"
            );
        }
        assert_eq!(broker.counts(&names.work_queue()), QueueCounts::default());
        let rejected = broker.take(&names.dispatcher_rejected_queue());
        assert_eq!(rejected.len(), 1, "dead-lettered once");
        let dead = &rejected[0];
        assert_eq!(
            dead.header("x-first-death-reason").as_deref(),
            Some("delivery_limit")
        );
        assert_eq!(dead.header("x-first-death-queue"), Some(names.work_queue()));
        assert_eq!(
            dead.header("x-client").as_deref(),
            Some("test"),
            "the publisher's headers stay"
        );
    }

    #[tokio::test]
    async fn a_closed_connections_deliveries_go_back_oldest_first() {
        let (broker, names) = broker();
        let t = broker.open("c").expect("open");
        for body in [b"1", b"2", b"3"] {
            publish(&t, &names.jobs_exchange(), "", body).await;
        }
        // Two consumers of one connection: the second is served first.
        let mut first = t.consume(&names.work_queue(), 1).await.expect("consume");
        let mut second = t.consume(&names.work_queue(), 1).await.expect("consume");
        let (one, two) = (next(&mut first).await, next(&mut second).await);
        assert_eq!((one.body(), two.body()), (&b"1"[..], &b"2"[..]));
        t.close().await;
        let back: Vec<(Vec<u8>, u32)> = broker
            .ready(&names.work_queue())
            .into_iter()
            .map(|m| (m.body, m.returns))
            .collect();
        assert_eq!(
            back,
            [(b"1".to_vec(), 1), (b"2".to_vec(), 1), (b"3".to_vec(), 0)]
        );
    }

    #[tokio::test]
    async fn reject_requeues_or_dead_letters_and_a_dead_letter_keeps_the_headers() {
        let (broker, names) = broker();
        let t = broker.open("c").expect("open");
        publish(&t, &names.jobs_exchange(), "", b"job").await;
        let mut jobs = t.consume(&names.work_queue(), 1).await.expect("consume");
        next(&mut jobs).await.reject(true).await.expect("requeue");
        let again = next(&mut jobs).await;
        assert!(again.redelivered());
        again.reject(false).await.expect("reject");
        let rejected = broker.ready(&names.dispatcher_rejected_queue());
        assert_eq!(rejected.len(), 1);

        // A consumer's own dead letter: the reason and the queue in headers.
        let mut copies = t
            .consume(&names.dispatcher_jobs_queue(), 64)
            .await
            .expect("consume");
        let copy = next(&mut copies).await;
        copy.dead_letter(&t, &names.dispatcher_jobs_queue(), "not valid JSON")
            .await
            .expect("dead-lettered");
        let dead = broker.take(&names.dead_letter_queue());
        assert_eq!(dead.len(), 1);
        let text = |key: &str| dead[0].header(key).unwrap_or_default();
        assert_eq!(text("x-warren-reason"), "not valid JSON");
        assert_eq!(text("x-warren-queue"), names.dispatcher_jobs_queue());
        assert_eq!(text("x-client"), "test");
        assert_eq!(
            broker.counts(&names.dispatcher_jobs_queue()),
            QueueCounts {
                consumers: 1,
                ..Default::default()
            }
        );
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_message_through_a_queue_that_goes_with_it() {
        let (broker, names) = broker();
        let a = broker.open("a").expect("open");
        let b = broker.open("b").expect("open");
        let mut to_a = a
            .subscribe(&names.control_exchange())
            .await
            .expect("subscribe");
        let mut to_b = b
            .subscribe(&names.control_exchange())
            .await
            .expect("subscribe");
        publish(&a, &names.control_exchange(), "", b"cancel").await;
        assert_eq!(next(&mut to_a).await.body(), b"cancel");
        assert_eq!(next(&mut to_b).await.body(), b"cancel");
        assert_eq!(broker.ready(&names.dispatcher_control_queue()).len(), 1);
        let before = broker.shared.read(|s| s.queues.len());
        a.close().await;
        assert_eq!(
            broker.shared.read(|s| s.queues.len()),
            before - 1,
            "a's queue went with it"
        );
        assert!(to_a.next().await.is_none());
    }

    #[tokio::test]
    async fn publish_faults_fail_nack_or_lose_the_confirm_of_the_publish_they_name() {
        let (broker, names) = broker();
        let jobs = names.jobs_exchange();
        broker.fail_publish(&jobs, 1, PublishFault::Nacked);
        let t = broker.open("p").expect("open");
        let t: &dyn Transport = &t;
        t.publish(&jobs, "", &"first")
            .await
            .expect("the first goes through");
        let nacked = t.publish(&jobs, "", &"second").await;
        assert!(
            matches!(nacked, Err(BrokerError::Nacked { .. })),
            "{nacked:?}"
        );
        assert!(t.is_connected(), "a nack leaves the connection up");
        assert_eq!(broker.ready(&names.work_queue()).len(), 1, "nothing routed");

        broker.fail_publish(&jobs, 0, PublishFault::LostBeforeConfirm);
        let lost = t.publish(&jobs, "", &"third").await;
        assert!(matches!(lost, Err(BrokerError::ConnectionLost)), "{lost:?}");
        assert!(!t.is_connected());
        assert_eq!(
            broker.ready(&names.work_queue()).len(),
            2,
            "routed all the same"
        );
        assert!(matches!(
            t.publish(&jobs, "", &"x").await,
            Err(BrokerError::ConnectionLost)
        ));

        let t = broker.open("p2").expect("open");
        let t: &dyn Transport = &t;
        broker.fail_publish(&jobs, 0, PublishFault::Fails);
        let failed = t.publish_in_flight(&jobs, "", &"fourth").await;
        assert!(matches!(failed, Err(BrokerError::ConnectionLost)));
        assert!(!t.is_connected());
        assert_eq!(broker.ready(&names.work_queue()).len(), 2, "not routed");
    }

    #[tokio::test]
    async fn an_ack_can_find_its_connection_gone() {
        let (broker, names) = broker();
        let t = broker.open("c").expect("open");
        publish(&t, &names.jobs_exchange(), "", b"job").await;
        let mut jobs = t.consume(&names.work_queue(), 1).await.expect("consume");
        broker.drop_connection_at_next_ack(&names.work_queue());
        let acked = next(&mut jobs).await.ack().await;
        assert!(
            matches!(acked, Err(BrokerError::ConnectionLost)),
            "{acked:?}"
        );
        tokio::time::timeout(WITHIN, t.closed())
            .await
            .expect("closed");
        let back = broker.ready(&names.work_queue());
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].returns, 1);
    }

    #[tokio::test]
    async fn a_stopped_broker_closes_everything_and_connectors_wait_for_its_return() {
        let (broker, names) = broker();
        let t = broker.open("c").expect("open");
        broker.stop();
        assert!(!t.is_connected());
        assert!(broker.open("refused").is_err());
        let never = CancellationToken::new();
        let reconnect = {
            let broker = broker.clone();
            tokio::spawn(async move {
                let never = CancellationToken::new();
                Connector::connect(&broker, "again", &never)
                    .await
                    .map(|t| t.connection_name().to_string())
            })
        };
        broker
            .wait_for(WITHIN, |b| b.connections().is_empty().then_some(()))
            .await
            .expect("no connection while stopped");
        broker.start();
        let name = tokio::time::timeout(WITHIN, reconnect)
            .await
            .expect("reconnected in time")
            .expect("task")
            .expect("connected");
        assert_eq!(name, "again");
        // Shutting down ends the wait of a connector.
        broker.stop();
        never.cancel();
        let gave_up = Connector::connect(&broker, "late", &never).await;
        assert!(matches!(gave_up, Err(BrokerError::Shutdown)));
        assert!(broker.ready(&names.work_queue()).is_empty());
    }

    #[tokio::test]
    async fn bounded_queues_drop_their_oldest() {
        let (broker, names) = broker();
        let t = broker.open("p").expect("open");
        let t: &dyn Transport = &t;
        for i in 0..crate::topology::LEDGER_MAX + 5 {
            t.publish(&names.jobs_exchange(), "", &i)
                .await
                .expect("published");
        }
        let ledger = t
            .peek(&names.ledger_queue(), usize::MAX)
            .await
            .expect("peek");
        assert_eq!(ledger.len() as i64, crate::topology::LEDGER_MAX);
        assert_eq!(ledger[0], b"5");
        let stats = t.queue_stats(&names.work_queue()).await.expect("stats");
        assert_eq!(stats.ready as i64, crate::topology::LEDGER_MAX + 5);
    }

    #[tokio::test]
    async fn a_named_work_queue_is_declared_once_and_dead_letters_at_the_delivery_limit() {
        let (broker, names) = broker();
        let t = broker.open("c").expect("open");
        let gpu = QueueName::parse("gpu").expect("a queue name");
        assert_eq!(
            t.declare_work_queue(&QueueName::default())
                .await
                .expect("default"),
            names.work_queue()
        );
        let queue = t.declare_work_queue(&gpu).await.expect("declared");
        assert_eq!(queue, "t.jobs.gpu");
        assert_eq!(t.declare_work_queue(&gpu).await.expect("again"), queue);
        // Bound to nothing: only the default exchange reaches it.
        publish(&t, &names.jobs_exchange(), "", b"default job").await;
        assert!(broker.ready(&queue).is_empty());
        publish(&t, "", &queue, b"gpu job").await;
        assert_eq!(
            t.get(&names.dispatcher_jobs_queue())
                .await
                .ok()
                .flatten()
                .map(|d| d.body().to_vec()),
            Some(b"default job".to_vec())
        );
        // Taken with get and returned with the connection, three times.
        for delivery in 1..=3u64 {
            let runner = broker.open(&format!("runner-{delivery}")).expect("open");
            let job = runner.get(&queue).await.expect("get").expect("a job");
            assert_eq!(job.body(), b"gpu job");
            assert_eq!(job.delivery_count(), Some(delivery - 1), "counted from 0");
            assert!(runner.get(&queue).await.expect("get").is_none(), "one job");
            assert_eq!(broker.counts(&queue).unacked, 1);
            drop(runner);
        }
        assert_eq!(broker.counts(&queue), QueueCounts::default());
        let rejected = broker.take(&names.dispatcher_rejected_queue());
        assert_eq!(rejected.len(), 1, "dead-lettered once");
        assert_eq!(
            rejected[0].header("x-first-death-queue"),
            Some(queue.clone())
        );
        // A settled get is acked like a consumed delivery.
        publish(&t, "", &queue, b"next").await;
        t.get(&queue)
            .await
            .expect("get")
            .expect("a job")
            .ack()
            .await
            .expect("ack");
        assert_eq!(broker.acked(&queue).len(), 1);
        assert_eq!(broker.counts(&queue), QueueCounts::default());
        // A queue that is not there is a channel error.
        let missing = t.get("t.jobs.nowhere").await.err();
        assert!(
            matches!(missing, Some(BrokerError::Channel(_))),
            "{missing:?}"
        );
    }

    #[tokio::test]
    async fn a_named_work_queue_declared_with_other_arguments_is_refused() {
        let (broker, names) = broker();
        let other = Topology::new(&names, TopologySettings { delivery_limit: 7 });
        let gpu = QueueName::parse("gpu").expect("a queue name");
        let t = broker.open("c").expect("open");
        t.declare_work_queue(&gpu).await.expect("declared");
        let refused = broker.shared.change(|state| {
            state.declare_queue(t.id, &other.work_queue_spec(names.work_queue_for(&gpu)))
        });
        assert!(
            matches!(refused, Err(BrokerError::TopologyMismatch(_))),
            "{refused:?}"
        );
    }
}
