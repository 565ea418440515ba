//! The harness's own connection to a namespace, through Warren's `broker`
//! crate: publishing jobs exactly as the observer does (persistent, with
//! publisher confirms) when a scenario needs many jobs at once, and asking
//! how many consumers a queue has.

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::topology::TopologySettings;
use broker::{BrokerConfig, Connector, Names, Transport};
use model::{Job, JobResult};

pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The broker the scenarios run against: `WARREN_AMQP_URL` when it is set
/// (the `warren` processes the harness starts inherit it, so they and the
/// namespace clean-up use the same broker), else the shared one on 5672.
pub fn default_url() -> String {
    std::env::var("WARREN_AMQP_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| DEFAULT_URL.into())
}

/// Jobs in flight at once while publishing a batch.
const IN_FLIGHT: usize = 64;

pub struct Bus {
    runtime: tokio::runtime::Runtime,
    transport: Arc<dyn Transport>,
    names: Names,
}

impl Bus {
    /// Connects to `url` and declares the namespace's topology (with the
    /// default delivery limit, as the components do).
    pub fn open(namespace: &str, url: &str) -> Bus {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let config = BrokerConfig {
            urls: broker::connect::split_urls(url),
            quorum_size: None,
            names: Names::new(namespace),
            settings: TopologySettings::default(),
            max_message_bytes: broker::message::DEFAULT_MAX_MESSAGE_BYTES,
        };
        let transport = runtime
            .block_on(config.connect("warren-bench", &Default::default()))
            .expect("the harness connects to the broker");
        Bus {
            runtime,
            transport,
            names: config.names,
        }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// A job for `commit` on `main` of `repo`, shaped like the observer's.
    pub fn job(repo: &str, commit: &str) -> Job {
        let mut job = Job::try_new(repo, "main", commit).expect("a valid job");
        job.subject = Some("benchmark commit".into());
        job.author = Some("Warren Bench".into());
        job
    }

    /// The id of the observer's job for `commit` on `main` of `repo`.
    pub fn job_id(repo: &str, commit: &str) -> String {
        Bus::job(repo, commit).id.into_string()
    }

    /// Publishes `jobs` to the jobs exchange, up to 64 awaiting their
    /// confirm at once; returns when every one is confirmed.
    pub fn publish(&self, jobs: &[Job]) -> Duration {
        self.publish_to(&self.names.jobs_exchange(), jobs, |_| String::new())
    }

    /// Publishes `results` to the results exchange as runners do.
    pub fn publish_results(&self, results: &[JobResult]) -> Duration {
        self.publish_to(&self.names.results_exchange(), results, |r| r.routing_key())
    }

    /// Publishes `messages` to `exchange`, up to 64 awaiting their confirm
    /// at once; returns when every one is confirmed.
    fn publish_to<T: serde::Serialize>(
        &self,
        exchange: &str,
        messages: &[T],
        routing_key: impl Fn(&T) -> String,
    ) -> Duration {
        let started = Instant::now();
        let transport = &*self.transport;
        self.runtime.block_on(async {
            for chunk in messages.chunks(IN_FLIGHT) {
                let mut confirms = Vec::with_capacity(chunk.len());
                for message in chunk {
                    let confirm = transport
                        .publish_in_flight(exchange, &routing_key(message), message)
                        .await
                        .expect("the broker takes the message");
                    confirms.push(confirm);
                }
                for confirm in confirms {
                    confirm
                        .wait()
                        .await
                        .expect("the broker confirms the message");
                }
            }
        });
        started.elapsed()
    }

    /// (messages ready, consumers) of a queue.
    pub fn queue_stats(&self, queue: &str) -> (u32, u32) {
        self.runtime
            .block_on(self.transport.queue_stats(queue))
            .map(|stats| (stats.ready, stats.consumers))
            .unwrap_or((0, 0))
    }

    /// Waits until the work queue has `consumers` consumers (runners ready).
    pub fn wait_for_runners(&self, consumers: u32, within: Duration) {
        let queue = self.names.work_queue();
        crate::common::wait_for(
            &format!("{consumers} runners consuming {queue}"),
            within,
            || (self.queue_stats(&queue).1 == consumers).then_some(()),
        );
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.runtime.block_on(self.transport.close());
    }
}
