//! Publishing with publisher confirms over lapin: a send hands back the
//! confirm to wait for, so that a batch can be in flight at once (the
//! awaited and typed forms are the transport's, `impl dyn Transport`).

use crate::{BrokerError, Result};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, PublisherConfirm};

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

    /// Sends a message; it is the broker's once the returned confirm
    /// says so (the broker confirms a channel's publishes in order).
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
