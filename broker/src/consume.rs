//! Taking messages off a queue: decode and validate, and what a dead
//! letter carries (the publisher's headers and properties, the reason and
//! the queue), so a bad message never stops a consumer and is never
//! silently lost. Settling is the [`crate::transport::Delivery`]'s.

use lapin::types::{AMQPValue, LongString};
use lapin::BasicProperties;

use crate::message::{decode, DecodeError};
use crate::transport::Delivery;
use model::Message;

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
        match decode::<T>(delivery.body(), max_bytes) {
            Ok(message) => Incoming::Valid(message),
            Err(reason) => Incoming::Refused(reason),
        }
    }
}

/// The original's properties and headers, plus the reason and the queue.
/// Left out: `expiration` (a dead letter is kept for people to read) and
/// `user-id` (the broker checks it against the connection's user).
pub(crate) fn dead_letter_properties(
    original: &BasicProperties,
    queue: &str,
    reason: &str,
) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    headers.insert(
        REASON_HEADER.into(),
        AMQPValue::LongString(LongString::from(reason)),
    );
    headers.insert(
        QUEUE_HEADER.into(),
        AMQPValue::LongString(LongString::from(queue)),
    );
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(value) = original.content_type() {
        properties = properties.with_content_type(value.clone());
    }
    if let Some(value) = original.content_encoding() {
        properties = properties.with_content_encoding(value.clone());
    }
    if let Some(value) = original.correlation_id() {
        properties = properties.with_correlation_id(value.clone());
    }
    if let Some(value) = original.message_id() {
        properties = properties.with_message_id(value.clone());
    }
    if let Some(value) = original.kind() {
        properties = properties.with_type(value.clone());
    }
    if let Some(value) = original.app_id() {
        properties = properties.with_app_id(value.clone());
    }
    if let Some(value) = *original.timestamp() {
        properties = properties.with_timestamp(value);
    }
    if let Some(value) = *original.priority() {
        properties = properties.with_priority(value);
    }
    properties
}

/// A header's value as text (strings and integers), if present.
pub(crate) fn header_text(properties: &BasicProperties, key: &str) -> Option<String> {
    let headers = properties.headers().as_ref()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldTable;

    #[test]
    fn a_dead_letter_keeps_the_publishers_headers_and_properties_and_adds_the_reason() {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-client".into(),
            AMQPValue::LongString(LongString::from("outside")),
        );
        let original = BasicProperties::default()
            .with_headers(headers)
            .with_message_id("m-1".into())
            .with_content_type("application/json".into())
            .with_user_id("someone".into())
            .with_expiration("1000".into());
        let dead = dead_letter_properties(&original, "q", "not valid JSON: …");
        let headers = dead.headers().clone().expect("headers");
        let text = |key: &str| match headers.inner().get(key) {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => panic!("{key}: {other:?}"),
        };
        assert_eq!(text("x-client"), "outside");
        assert_eq!(text(REASON_HEADER), "not valid JSON: …");
        assert_eq!(text(QUEUE_HEADER), "q");
        assert_eq!(dead.message_id().as_ref().map(|m| m.as_str()), Some("m-1"));
        assert_eq!(*dead.delivery_mode(), Some(2));
        assert!(dead.user_id().is_none() && dead.expiration().is_none());
    }
}
