//! The observer: turns every new commit on a watched branch into one job,
//! oldest first, never one twice.
//!
//! It runs in one of two ways:
//!
//! - [`run`]: one repository given on the command line, polled;
//! - [`registry::run`]: every repository in the dispatcher's registry, each
//!   polled on its own interval, and pushed by webhooks ([`hooks`]).
//!
//! Either way one [`watch::Watcher`] per repository owns its state and is
//! the only one publishing its jobs, so polls and pushes never queue a
//! commit twice. It talks to the broker through [`broker::Transport`], so
//! the unit tests run its polls, pushes, faults mid-batch and the ledger's
//! reconciliation on the in-memory broker.

pub mod hooks;
pub mod producer;
pub mod registry;
mod session;
mod source;
mod state;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

use broker::BrokerConfig;
use model::BranchName;
use tokio_util::sync::CancellationToken;

pub use source::{is_url, NewCommit, RepoSource};
pub use state::{State, StateError, StateFile};
pub use watch::{Push, PushOutcome, PushRequest, WatchSpec};

/// Everything the single-repository observer needs.
#[derive(Debug, Clone)]
pub struct ObserverConfig {
    pub broker: BrokerConfig,
    /// A local path or a git URL.
    pub repo: String,
    /// Branches to watch; empty means the repository's HEAD branch.
    pub branches: Vec<BranchName>,
    pub interval: Duration,
    pub state_file: PathBuf,
    /// How long one git call may take before it is killed.
    pub git_timeout: Duration,
}

/// Runs the single-repository observer until `shutdown` fires.
pub async fn run(config: ObserverConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let source = RepoSource::open(&config.repo, &config.state_file, config.git_timeout).await?;
    let spec = WatchSpec {
        label: source.location().to_string(),
        branches: config.branches.iter().map(|b| b.to_string()).collect(),
        interval: Some(config.interval),
        max_message_bytes: config.broker.max_message_bytes,
    };
    let file = StateFile::new(config.state_file.clone());
    watch::watch_alone(spec, source, file, &config.broker, &shutdown).await?;
    tracing::info!("observer stopped");
    Ok(())
}
