//! [`Transport`] over lapin: one RabbitMQ connection ([`Broker`]) and one
//! channel in confirm mode for everything it publishes. Consumers get a
//! channel each (as before: a channel's prefetch is its own).
//!
//! [`BrokerConfig`] is the [`Connector`]: it connects with retry and
//! declares the topology ([`crate::connect`]), then opens the publishing
//! channel.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::transport::{Connector, Deliveries, Delivery, Properties, QueueStats, Transport};
use crate::{Broker, BrokerConfig, BrokerError, Confirm, Names, Publisher, Result};
use model::QueueName;

/// How long to wait before trying again when a fresh connection could not
/// open its publishing channel (it died at once).
const CHANNEL_RETRY: Duration = Duration::from_millis(500);

/// A RabbitMQ connection as a [`Transport`].
pub struct AmqpTransport {
    broker: Broker,
    publisher: Publisher,
}

impl AmqpTransport {
    /// Opens the publishing channel on `broker`. On failure the connection
    /// is closed.
    pub async fn open(broker: Broker) -> Result<AmqpTransport> {
        match broker.publisher().await {
            Ok(publisher) => Ok(AmqpTransport { broker, publisher }),
            Err(err) => {
                broker.close().await;
                Err(err)
            }
        }
    }

    /// The connection, for what only RabbitMQ has.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }
}

impl Transport for AmqpTransport {
    fn names(&self) -> &Names {
        self.broker.names()
    }

    fn connection_name(&self) -> &str {
        self.broker.connection_name()
    }

    fn send<'a>(
        &'a self,
        exchange: &'a str,
        routing_key: &'a str,
        body: &'a [u8],
        properties: Properties,
    ) -> BoxFuture<'a, Result<Confirm>> {
        Box::pin(
            self.publisher
                .send_with(exchange, routing_key, body, properties),
        )
    }

    fn consume<'a>(&'a self, queue: &'a str, prefetch: u16) -> BoxFuture<'a, Result<Deliveries>> {
        Box::pin(async move {
            let consumer = self.broker.consume(queue, prefetch).await?;
            Ok(deliveries(consumer, queue))
        })
    }

    fn declare_work_queue<'a>(&'a self, queue: &'a QueueName) -> BoxFuture<'a, Result<String>> {
        Box::pin(self.broker.declare_work_queue(queue))
    }

    fn get<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<Option<Delivery>>> {
        Box::pin(async move { Ok(self.broker.get(queue).await?.map(Delivery::from_amqp)) })
    }

    fn subscribe<'a>(&'a self, exchange: &'a str) -> BoxFuture<'a, Result<Deliveries>> {
        Box::pin(async move {
            let consumer = self.broker.subscribe(exchange).await?;
            Ok(deliveries(consumer, exchange))
        })
    }

    fn peek<'a>(&'a self, queue: &'a str, max: usize) -> BoxFuture<'a, Result<Vec<Vec<u8>>>> {
        Box::pin(self.broker.peek(queue, max))
    }

    fn queue_stats<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<QueueStats>> {
        Box::pin(async move {
            let (ready, consumers) = self.broker.queue_stats(queue).await?;
            Ok(QueueStats { ready, consumers })
        })
    }

    fn is_connected(&self) -> bool {
        self.broker.is_connected()
    }

    fn closed(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.broker.closed())
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.broker.close())
    }
}

/// lapin's consumer as [`Deliveries`]; `source` names it in errors.
fn deliveries(consumer: lapin::Consumer, source: &str) -> Deliveries {
    let context = format!("receiving from {source}");
    consumer
        .map(move |delivery| {
            delivery
                .map(Delivery::from_amqp)
                .map_err(|source| BrokerError::Amqp {
                    context: context.clone(),
                    source,
                })
        })
        .boxed()
}

impl Connector for BrokerConfig {
    fn connect<'a>(
        &'a self,
        connection_name: &'a str,
        shutdown: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Arc<dyn Transport>>> {
        Box::pin(async move {
            loop {
                let broker = crate::connect_with_retry(self, connection_name, shutdown).await?;
                match AmqpTransport::open(broker).await {
                    Ok(transport) => return Ok(Arc::new(transport) as Arc<dyn Transport>),
                    Err(err) => {
                        tracing::warn!(
                            "lost the broker while opening a channel ({err}); reconnecting"
                        );
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(BrokerError::Shutdown),
                    _ = tokio::time::sleep(CHANNEL_RETRY) => {}
                }
            }
        })
    }
}
