//! The in-memory broker behaves as RabbitMQ does where Warren relies on
//! it: one scenario (pipelined confirms, the ledger read in place, topic
//! routing, prefetch, redelivery and its count, reject, the delivery limit
//! and its dead letter, a named work queue declared at run time and taken
//! from with get, private subscriptions, a consumer's dead letter)
//! runs against the real broker and against `broker::memory`, and both
//! must tell the same story. The components' unit tests trust the memory
//! broker because of this test.

mod common;

use std::sync::Arc;
use std::time::Duration;

use broker::memory::MemoryBroker;
use broker::topology::Topology;
use broker::transport::{Deliveries, Delivery};
use broker::{Connector, Transport};
use common::Namespace;
use futures::StreamExt;
use model::QueueName;
use tokio_util::sync::CancellationToken;

const WITHIN: Duration = Duration::from_secs(20);

async fn next(deliveries: &mut Deliveries, what: &str) -> Delivery {
    tokio::time::timeout(WITHIN, deliveries.next())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("the consumer of {what} ended"))
        .unwrap_or_else(|err| panic!("receiving {what}: {err}"))
}

/// How a delivery looks: its body, whether it is a redelivery, its count.
fn seen(delivery: &Delivery) -> String {
    format!(
        "{} redelivered={} count={:?}",
        String::from_utf8_lossy(delivery.body()),
        delivery.redelivered(),
        delivery.delivery_count()
    )
}

/// A consumer of the dispatcher's queue of broker dead letters.
async fn rejected_again(transport: &dyn Transport) -> Deliveries {
    transport
        .consume(&transport.names().dispatcher_rejected_queue(), 64)
        .await
        .expect("consume rejected")
}

/// The scenario; returns what it saw, line by line.
async fn scenario(connector: &dyn Connector) -> Vec<String> {
    let never = CancellationToken::new();
    let connect = async |name: &str| -> Arc<dyn Transport> {
        connector.connect(name, &never).await.expect("connect")
    };
    let mut story = Vec::new();
    let publisher = connect("warren-test-publisher").await;
    let names = publisher.names().clone();

    // Fifty jobs in flight at once, confirmed in order.
    let mut confirms = Vec::new();
    for i in 0..50 {
        let confirm = publisher
            .publish_in_flight(&names.jobs_exchange(), "", &format!("job-{i}"))
            .await
            .expect("sent");
        confirms.push(confirm);
    }
    for confirm in confirms {
        confirm.wait().await.expect("confirmed");
    }
    let ledger = publisher
        .peek(&names.ledger_queue(), 2_000)
        .await
        .expect("ledger");
    let again = publisher
        .peek(&names.ledger_queue(), 2_000)
        .await
        .expect("ledger again");
    story.push(format!(
        "ledger {} entries, first {}, last {}, unchanged by reading: {}",
        ledger.len(),
        String::from_utf8_lossy(&ledger[0]),
        String::from_utf8_lossy(&ledger[49]),
        ledger == again
    ));
    let stats = publisher
        .queue_stats(&names.work_queue())
        .await
        .expect("stats");
    story.push(format!("work queue ready {}", stats.ready));

    // Topic routing, headers kept.
    publisher
        .publish_raw(
            &names.events_exchange(),
            "event.heartbeat",
            b"beat",
            vec![("x-client".into(), "conformance".into())],
        )
        .await
        .expect("event");
    let mut events = publisher
        .consume(&names.dispatcher_events_queue(), 64)
        .await
        .expect("consume events");
    let event = next(&mut events, "the event").await;
    story.push(format!(
        "event {} x-client={:?}",
        seen(&event),
        event.header("x-client")
    ));
    event.ack().await.expect("ack");

    // A runner dies holding a job; the next gets it back, counted.
    let first = connect("warren-test-runner-1").await;
    let mut jobs = first
        .consume(&names.work_queue(), 1)
        .await
        .expect("consume");
    story.push(format!(
        "runner 1 got {}",
        seen(&next(&mut jobs, "a job").await)
    ));
    first.close().await;
    story.push(format!(
        "runner 1's consumer ended: {}",
        jobs.next().await.is_none()
    ));
    let second = connect("warren-test-runner-2").await;
    let mut jobs = second
        .consume(&names.work_queue(), 1)
        .await
        .expect("consume");
    let job = next(&mut jobs, "the job again").await;
    story.push(format!("runner 2 got {}", seen(&job)));
    job.reject(true).await.expect("requeue");
    let job = next(&mut jobs, "the job a third time").await;
    story.push(format!("runner 2 got {}", seen(&job)));
    // A third return is one more than the broker's limit (3 - 1): dead.
    job.reject(true).await.expect("requeue");
    let job = next(&mut jobs, "the next job").await;
    story.push(format!("runner 2 got {}", seen(&job)));
    job.ack().await.expect("ack");
    let mut rejected = second
        .consume(&names.dispatcher_rejected_queue(), 64)
        .await
        .expect("consume rejected");
    let dead = next(&mut rejected, "the dead-lettered job").await;
    story.push(format!(
        "rejected {} reason={:?} queue={:?}",
        String::from_utf8_lossy(dead.body()),
        dead.header("x-first-death-reason"),
        dead.header("x-first-death-queue")
            .map(|q| q == names.work_queue()),
    ));
    dead.ack().await.expect("ack");
    second.close().await;

    // A named work queue, declared at run time with the work queue's
    // arguments: reached through the default exchange, taken with get
    // (settled like a consumed delivery) or consumed, dead-lettered at the
    // delivery limit.
    let gpu = QueueName::parse("gpu").expect("a queue name");
    let queue = publisher.declare_work_queue(&gpu).await.expect("declared");
    let same = publisher
        .declare_work_queue(&gpu)
        .await
        .expect("declared again");
    story.push(format!(
        "named queue {} declared twice: {}",
        queue.strip_prefix(names.namespace()).unwrap_or("?"),
        queue == same
    ));
    for body in ["gpu-0", "gpu-1"] {
        publisher.publish("", &queue, &body).await.expect("queued");
    }
    let getter = connect("warren-test-getter-1").await;
    let job = getter.get(&queue).await.expect("get").expect("a job");
    story.push(format!("getter 1 got {}", seen(&job)));
    getter.close().await;
    let getter = connect("warren-test-getter-2").await;
    let job = getter.get(&queue).await.expect("get").expect("a job");
    story.push(format!("getter 2 got {}", seen(&job)));
    job.reject(true).await.expect("requeue");
    let job = getter.get(&queue).await.expect("get").expect("a job");
    story.push(format!("getter 2 got {}", seen(&job)));
    // One return more than the broker's limit: dead.
    job.reject(true).await.expect("requeue");
    let job = getter.get(&queue).await.expect("get").expect("a job");
    story.push(format!("getter 2 got {}", seen(&job)));
    job.ack().await.expect("ack");
    story.push(format!(
        "then the named queue is empty: {}",
        getter.get(&queue).await.expect("get").is_none()
    ));
    let dead = next(
        &mut rejected_again(&*getter).await,
        "the named queue's dead letter",
    )
    .await;
    story.push(format!(
        "rejected {} reason={:?} queue={:?}",
        String::from_utf8_lossy(dead.body()),
        dead.header("x-first-death-reason"),
        dead.header("x-first-death-queue").map(|q| q == queue),
    ));
    dead.ack().await.expect("ack");
    publisher
        .publish("", &queue, &"gpu-2")
        .await
        .expect("queued");
    let mut consumed = getter.consume(&queue, 1).await.expect("consume");
    let job = next(&mut consumed, "a job of the named queue").await;
    story.push(format!("a consumer of the named queue got {}", seen(&job)));
    job.ack().await.expect("ack");
    getter.close().await;

    // Every subscriber gets every control message.
    let a = connect("warren-test-a").await;
    let b = connect("warren-test-b").await;
    let mut to_a = a.subscribe(&names.control_exchange()).await.expect("sub");
    let mut to_b = b.subscribe(&names.control_exchange()).await.expect("sub");
    publisher
        .publish(&names.control_exchange(), "", &"cancel")
        .await
        .expect("control");
    story.push(format!(
        "a got {}",
        seen(&next(&mut to_a, "control at a").await)
    ));
    story.push(format!(
        "b got {}",
        seen(&next(&mut to_b, "control at b").await)
    ));
    a.close().await;
    b.close().await;

    // A consumer's own dead letter keeps the publisher's headers.
    publisher
        .publish_raw(
            &names.control_exchange(),
            "",
            b"{not json",
            vec![("x-client".into(), "conformance".into())],
        )
        .await
        .expect("bad control");
    let mut control = publisher
        .consume(&names.dispatcher_control_queue(), 64)
        .await
        .expect("consume control");
    let first_copy = next(&mut control, "the valid control message").await;
    first_copy.ack().await.expect("ack");
    let bad = next(&mut control, "the malformed control message").await;
    bad.dead_letter(
        &*publisher,
        &names.dispatcher_control_queue(),
        "not valid JSON",
    )
    .await
    .expect("dead-lettered");
    let mut dead = publisher
        .consume(&names.dead_letter_queue(), 64)
        .await
        .expect("consume dead");
    let letter = next(&mut dead, "the dead letter").await;
    story.push(format!(
        "dead letter {} reason={:?} x-client={:?}",
        String::from_utf8_lossy(letter.body()),
        letter.header("x-warren-reason"),
        letter.header("x-client")
    ));
    letter.ack().await.expect("ack");
    publisher.close().await;
    story
}

#[tokio::test]
async fn the_memory_broker_tells_the_same_story_as_rabbitmq() {
    let ns = Namespace::new("transport");
    let config = ns.broker_config();
    let real = scenario(&config).await;
    // `warren topology --delete` (the namespace's drop) knows only the
    // queues it is told of.
    let gpu = QueueName::parse("gpu").expect("a queue name");
    broker::delete_namespace(&config, &[gpu], &CancellationToken::new())
        .await
        .expect("the namespace deleted");
    let names = config.names.clone();
    let memory =
        MemoryBroker::new(&names, &Topology::new(&names, config.settings)).expect("memory broker");
    let modelled = scenario(&memory).await;
    assert_eq!(modelled, real);
    // What the story says, so that it cannot agree on nothing.
    assert_eq!(
        real,
        [
            "ledger 50 entries, first \"job-0\", last \"job-49\", unchanged by reading: true",
            "work queue ready 50",
            "event beat redelivered=false count=None x-client=Some(\"conformance\")",
            "runner 1 got \"job-0\" redelivered=false count=None",
            "runner 1's consumer ended: true",
            "runner 2 got \"job-0\" redelivered=true count=Some(1)",
            "runner 2 got \"job-0\" redelivered=true count=Some(2)",
            "runner 2 got \"job-1\" redelivered=false count=None",
            "rejected \"job-0\" reason=Some(\"delivery_limit\") queue=Some(true)",
            "named queue .jobs.gpu declared twice: true",
            "getter 1 got \"gpu-0\" redelivered=false count=Some(0)",
            "getter 2 got \"gpu-0\" redelivered=true count=Some(1)",
            "getter 2 got \"gpu-0\" redelivered=true count=Some(2)",
            "getter 2 got \"gpu-1\" redelivered=false count=Some(0)",
            "then the named queue is empty: true",
            "rejected \"gpu-0\" reason=Some(\"delivery_limit\") queue=Some(true)",
            "a consumer of the named queue got \"gpu-2\" redelivered=false count=None",
            "a got \"cancel\" redelivered=false count=None",
            "b got \"cancel\" redelivered=false count=None",
            "dead letter {not json reason=Some(\"not valid JSON\") x-client=Some(\"conformance\")",
        ]
    );
}
