//! Names of every exchange and queue, all under one namespace.
//!
//! Two deployments (or two tests) that use different namespaces share a
//! broker without seeing each other's messages.

use model::QueueName;

/// The names of a namespace's exchanges and queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    namespace: String,
}

impl Names {
    pub fn new(namespace: impl Into<String>) -> Self {
        Names {
            namespace: namespace.into(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}.{}", self.namespace, suffix)
    }

    /// Fanout exchange the observer (and `trigger`/`rerun`) publish jobs to.
    pub fn jobs_exchange(&self) -> String {
        self.name("jobs")
    }
    /// Topic exchange for runner events (`started`, `heartbeat`).
    pub fn events_exchange(&self) -> String {
        self.name("events")
    }
    /// Topic exchange for results, routing key `result.<outcome>`.
    pub fn results_exchange(&self) -> String {
        self.name("results")
    }
    /// Fanout exchange the dispatcher uses to tell runners to stop a job.
    pub fn control_exchange(&self) -> String {
        self.name("control")
    }
    /// Fanout dead-letter exchange: poison jobs and malformed messages,
    /// each with the reason in a header.
    pub fn dead_letter_exchange(&self) -> String {
        self.name("dead")
    }
    /// Where the broker itself dead-letters the work queue's jobs (the
    /// delivery limit): the dispatcher gives each a reason in words and
    /// moves it on to the dead-letter exchange.
    pub fn rejected_exchange(&self) -> String {
        self.name("rejected")
    }

    /// The work queue runners compete on (quorum, delivery limit): the
    /// `default` queue's.
    pub fn work_queue(&self) -> String {
        self.name("jobs")
    }
    /// The work queue of `queue`: `N.jobs` for `default`, else
    /// `N.jobs.<queue>`, declared on first use with the work queue's
    /// arguments ([`crate::Transport::declare_work_queue`]). No other
    /// name of the namespace starts with `N.jobs.`.
    pub fn work_queue_for(&self, queue: &QueueName) -> String {
        if queue.is_default() {
            self.work_queue()
        } else {
            format!("{}{}", self.named_work_queue_prefix(), queue.as_str())
        }
    }
    /// What the name of every work queue but the default one starts with.
    pub fn named_work_queue_prefix(&self) -> String {
        self.name("jobs.")
    }
    /// Dead letters kept for people to inspect (bounded).
    pub fn dead_letter_queue(&self) -> String {
        self.name("dead")
    }
    /// The dispatcher's copy of every job, to show it as queued.
    pub fn dispatcher_jobs_queue(&self) -> String {
        self.name("dispatcher.jobs")
    }
    /// Runner events for the dispatcher (attempts, leases).
    pub fn dispatcher_events_queue(&self) -> String {
        self.name("dispatcher.events")
    }
    /// Results for the dispatcher to record.
    pub fn dispatcher_results_queue(&self) -> String {
        self.name("dispatcher.results")
    }
    /// Dead letters for the dispatcher to record poison jobs as `error`.
    pub fn dispatcher_dead_queue(&self) -> String {
        self.name("dispatcher.dead")
    }
    /// Jobs the broker dead-lettered, for the dispatcher to move on to the
    /// dead-letter exchange with a reason.
    pub fn dispatcher_rejected_queue(&self) -> String {
        self.name("dispatcher.rejected")
    }
    /// The dispatcher's copy of control messages: only so that a malformed
    /// one is dead-lettered once, by one consumer, rather than by every
    /// runner that got a copy.
    pub fn dispatcher_control_queue(&self) -> String {
        self.name("dispatcher.control")
    }

    /// The last jobs published (bounded): the broker's own record of what it
    /// took, which an observer reads after a crash so that a publish
    /// confirmed just before it died is not made twice.
    pub fn ledger_queue(&self) -> String {
        self.name("ledger")
    }

    /// Every durable queue of the namespace, for clean-up and definitions.
    pub fn all_queues(&self) -> Vec<String> {
        vec![
            self.work_queue(),
            self.dead_letter_queue(),
            self.dispatcher_jobs_queue(),
            self.dispatcher_events_queue(),
            self.dispatcher_results_queue(),
            self.dispatcher_dead_queue(),
            self.dispatcher_rejected_queue(),
            self.dispatcher_control_queue(),
            self.ledger_queue(),
        ]
    }

    /// Every exchange of the namespace.
    pub fn all_exchanges(&self) -> Vec<String> {
        vec![
            self.jobs_exchange(),
            self.events_exchange(),
            self.results_exchange(),
            self.control_exchange(),
            self.dead_letter_exchange(),
            self.rejected_exchange(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_starts_with_the_namespace() {
        let names = Names::new("team-a");
        for name in names
            .all_queues()
            .iter()
            .chain(names.all_exchanges().iter())
        {
            assert!(name.starts_with("team-a."), "{name}");
        }
    }

    #[test]
    fn each_named_queue_has_its_own_work_queue_and_default_is_the_original() {
        let names = Names::new("w");
        let queue = |name: &str| QueueName::parse(name).expect("a queue name");
        assert_eq!(names.work_queue_for(&QueueName::default()), "w.jobs");
        assert_eq!(
            names.work_queue_for(&queue("linux-x86")),
            "w.jobs.linux-x86"
        );
        assert!(names
            .work_queue_for(&queue("gpu"))
            .starts_with(&names.named_work_queue_prefix()));
        // No fixed name can be taken for a named work queue.
        for fixed in names.all_queues() {
            assert!(
                !fixed.starts_with(&names.named_work_queue_prefix()),
                "{fixed}"
            );
        }
    }

    #[test]
    fn queue_names_are_distinct() {
        let names = Names::new("w");
        let mut queues = names.all_queues();
        queues.sort();
        queues.dedup();
        assert_eq!(queues.len(), names.all_queues().len());
    }
}
