//! Publishing with publisher confirms: a publish returns only once the
//! broker has taken responsibility for the message, or hands back the
//! confirm to wait for, so that a batch can be in flight at once.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, PublisherConfirm};
use serde::Serialize;

use crate::message::encode;
use crate::{BrokerError, Result};

/// A channel in confirm mode. Cheap to clone; lapin channels are shared.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub(crate) async fn new(channel: Channel) -> Result<Self> {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(BrokerError::amqp("enabling publisher confirms"))?;
        Ok(Publisher { channel })
    }

    /// Publishes `message` as persistent JSON and waits for the confirm.
    pub async fn publish<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &T,
    ) -> Result<()> {
        self.publish_raw(exchange, routing_key, &encode(message), Vec::new())
            .await
    }

    /// Publishes `message` as persistent JSON without waiting for the
    /// confirm, so that several publishes can be in flight at once (the
    /// broker confirms a channel's publishes in order). The message is the
    /// broker's only once [`Confirm::wait`] says so.
    pub async fn publish_in_flight<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &T,
    ) -> Result<Confirm> {
        self.send(exchange, routing_key, &encode(message), Vec::new())
            .await
    }

    /// Publishes raw bytes with extra string headers and waits for the
    /// confirm.
    pub async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: Vec<(String, String)>,
    ) -> Result<()> {
        self.send(exchange, routing_key, body, headers)
            .await?
            .wait()
            .await
    }

    async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: Vec<(String, String)>,
    ) -> Result<Confirm> {
        self.send_with(exchange, routing_key, body, json_properties(headers))
            .await
    }

    /// Publishes raw bytes with the given properties and waits for the
    /// confirm.
    pub(crate) async fn publish_with(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<()> {
        self.send_with(exchange, routing_key, body, properties)
            .await?
            .wait()
            .await
    }

    pub(crate) async fn send_with(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<Confirm> {
        let pending = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .map_err(BrokerError::amqp(format!("publishing to {exchange}")))?;
        Ok(Confirm {
            pending: Pending::Amqp(pending),
            exchange: exchange.to_string(),
        })
    }
}

/// Warren's messages: persistent JSON, with extra string headers.
pub(crate) fn json_properties(headers: Vec<(String, String)>) -> BasicProperties {
    let mut table = FieldTable::default();
    for (key, value) in headers {
        table.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_headers(table)
}

/// The broker's answer to one publish, still to come.
#[must_use = "a publish is not the broker's until its confirm is awaited"]
pub struct Confirm {
    pending: Pending,
    exchange: String,
}

enum Pending {
    Amqp(PublisherConfirm),
    /// The in-memory broker answers at once.
    Answered(Result<()>),
}

impl Confirm {
    /// A confirm whose answer is known already.
    pub(crate) fn answered(exchange: &str, answer: Result<()>) -> Self {
        Confirm {
            pending: Pending::Answered(answer),
            exchange: exchange.to_string(),
        }
    }

    /// Waits until the broker took the message (or refused it).
    pub async fn wait(self) -> Result<()> {
        let exchange = self.exchange;
        let pending = match self.pending {
            Pending::Amqp(pending) => pending,
            Pending::Answered(answer) => return answer,
        };
        let confirmation = pending.await.map_err(BrokerError::amqp(format!(
            "waiting for the confirm from {exchange}"
        )))?;
        if confirmation.is_ack() {
            Ok(())
        } else {
            Err(BrokerError::Nacked { exchange })
        }
    }
}
