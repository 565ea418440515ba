//! Everything Warren knows about forges, behind one small interface, so
//! the dispatcher and the observer talk to "a forge" and never to GitHub,
//! Gitea or GitLab by name (as Woodpecker keeps each forge behind one
//! interface).
//!
//! Three things:
//!
//! 1. **Push webhooks** ([`parse_push`]): who sent a delivery (by its
//!    headers), whether it is authentic (checked in constant time against
//!    the repository's webhook secret before the body is read), and the
//!    push in one shape ([`Push`]: ref, before, after, branch, tag or
//!    deletion, commits oldest first, whether the list may be cut short).
//!    Warren's own `post-receive` hook is a fourth sender
//!    ([`post_receive`]), read by the same function.
//! 2. **Commit statuses** ([`StatusReporter`]): each job change reported to
//!    the forge's commit-status API for a [`StatusTarget`], in order per
//!    commit, retried with back-off, never blocking the caller.
//!
//! Branch patterns (`main`, `release/*`, `team/**`) belong to the registry,
//! not to a forge: they are `model::branch`.
//!
//! # For the dispatcher: `POST /hooks/{name}`
//!
//! ```no_run
//! # use warren_forge as forge;
//! # fn queue(_: &model::BranchName, _: &[forge::PushedCommit]) {}
//! # fn list_from_repository(_: &forge::Push) -> Vec<forge::PushedCommit> { vec![] }
//! # fn seen_before(_: &str) -> bool { false }
//! fn receive(headers: &http::HeaderMap, body: &[u8], secret: &[u8]) -> (u16, String) {
//!     // Refuse bodies over forge::MAX_BODY_BYTES with 413 before reading them.
//!     let delivery = match forge::parse_push(headers, body, secret) {
//!         Ok(delivery) => delivery,
//!         // 401 (say nothing more; log `denial` yourself), 400 with the reason, 413.
//!         Err(err) => return (err.http_status(), err.to_string()),
//!     };
//!     if delivery.id.as_deref().is_some_and(seen_before) {
//!         return (200, "already received".into());
//!     }
//!     let forge::Event::Push(push) = delivery.event else {
//!         return (200, "nothing to do".into()); // a ping, or another event
//!     };
//!     let Some(branch) = push.built_branch() else {
//!         return (200, "nothing to build".into()); // a tag, or a deleted branch
//!     };
//!     // Check `branch` against the repository's patterns with model::branch::branch_matches.
//!     let commits = if push.truncated {
//!         list_from_repository(&push) // before..after, oldest first
//!     } else {
//!         push.commits.clone()
//!     };
//!     queue(branch, &commits);
//!     (202, "queued".into())
//! }
//! ```
//!
//! # For the dispatcher: commit statuses
//!
//! ```no_run
//! # use warren_forge as forge;
//! use std::sync::Arc;
//! # async fn example(tasks: &tasks::Tasks, job: model::JobRecord) -> Result<(), Box<dyn std::error::Error>> {
//! // Once, at start, as a lifetime task of the dispatcher's tasks:
//! let reporter = forge::StatusReporter::start(forge::StatusSettings::default(), tasks)?;
//! // Per repository with a status target (the token read from the variable
//! // the registry names):
//! let target = Arc::new(forge::StatusTarget::new(
//!     "github".parse()?, "https://api.github.com", "octo/hello", "ghp_…")?);
//! // In the event follower, for every Queued, Started and Finished event:
//! let mut update = forge::StatusUpdate::new(job.commit.clone(), job.status);
//! update.target_url = Some(format!("https://ci.example/jobs/{}", job.id));
//! reporter.report(&target, update); // returns at once
//! # Ok(()) }
//! ```

mod hook;
pub mod post_receive;
mod reporter;
mod signature;
mod status;

pub use hook::{
    parse_push, Delivery, Denial, Event, Forge, HookError, Push, PushedCommit, MAX_AUTHOR_BYTES,
    MAX_BODY_BYTES, MAX_SUBJECT_BYTES,
};
pub use reporter::{ReporterError, StatusCounts, StatusReporter, StatusSettings};
pub use signature::sign;
pub use status::{status_word, StatusTarget, StatusUpdate, TargetError, MAX_DESCRIPTION_CHARS};
