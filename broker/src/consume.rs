//! Taking messages off a queue: decode and validate, and send what cannot be
//! used to the dead-letter exchange with the reason, so a bad message never
//! stops a consumer and is never silently lost.

use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::types::AMQPValue;

use crate::message::{decode, DecodeError, Message};
use crate::{BrokerError, Names, Publisher, Result};

/// Header that carries why Warren dead-lettered a message.
pub const REASON_HEADER: &str = "x-warren-reason";
/// Header naming the queue the dead letter was taken from.
pub const QUEUE_HEADER: &str = "x-warren-queue";

/// A delivery whose body decoded into a valid `T`, or the reason it did not.
pub enum Incoming<T> {
    Valid(T),
    Refused(DecodeError),
}

impl<T: Message> Incoming<T> {
    pub fn decode(delivery: &Delivery, max_bytes: usize) -> Self {
        match decode::<T>(&delivery.data, max_bytes) {
            Ok(message) => Incoming::Valid(message),
            Err(reason) => Incoming::Refused(reason),
        }
    }
}

/// Publishes the delivery's body to the dead-letter exchange with the
/// reason in a header (confirmed), logs it, then acks the original.
pub async fn dead_letter(
    publisher: &Publisher,
    names: &Names,
    queue: &str,
    delivery: &Delivery,
    reason: &str,
) -> Result<()> {
    tracing::warn!(queue, reason, "dead-lettering a message");
    publisher
        .publish_raw(
            &names.dead_letter_exchange(),
            "",
            &delivery.data,
            vec![
                (REASON_HEADER.to_string(), reason.to_string()),
                (QUEUE_HEADER.to_string(), queue.to_string()),
            ],
        )
        .await?;
    delivery
        .ack(BasicAckOptions::default())
        .await
        .map_err(BrokerError::amqp("acking a dead-lettered message"))?;
    Ok(())
}

/// A header's value as text (strings and integers), if present.
pub fn header_string(delivery: &Delivery, key: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        AMQPValue::LongUInt(n) => Some(n.to_string()),
        AMQPValue::ShortInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}
