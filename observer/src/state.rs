//! The observer's memory: the last published commit per branch, in a JSON
//! file written atomically (temp file, fsync, rename), off the async
//! runtime ([`StateFile`]).
//!
//! A missing file means "first start"; an unreadable or corrupt one is an
//! error, never a silent reset that would publish everything again.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

use model::{BranchName, CommitId};
use serde::{Deserialize, Serialize};

const STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the state file {path} is corrupt ({reason}); fix it or move it away to start over from the current head")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "the state file {path} belongs to repository {theirs:?}, not {ours:?}; use another --state"
    )]
    OtherRepo {
        path: PathBuf,
        theirs: String,
        ours: String,
    },
    #[error("cannot write the state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    version: u32,
    #[serde(default)]
    repo: Option<String>,
    #[serde(skip)]
    path: PathBuf,
    /// Branch name to the last commit published for it.
    branches: BTreeMap<String, CommitId>,
    /// Set (and saved) before a poll's first publish and cleared after its
    /// last confirm: if a restart finds it set, the observer died with
    /// publishes in flight and asks the broker's ledger what it took.
    #[serde(default)]
    publishing: bool,
    /// Set when the broker failed while publishes were in flight: then the
    /// ledger cannot say what the work queue kept, and a restart publishes
    /// the uncertain commits again. Cleared with `publishing`.
    #[serde(default)]
    broker_failed: bool,
    /// The forge's ids of the last webhook deliveries acted on, oldest
    /// first: a delivery sent again (forges redeliver) queues nothing.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    deliveries: VecDeque<String>,
}

/// Delivery ids remembered per repository: far more than a forge
/// redelivers within its retry window.
pub const REMEMBERED_DELIVERIES: usize = 1000;

impl State {
    /// Loads the state, or an empty one if the file does not exist.
    pub fn load(path: &Path) -> Result<State, StateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State {
                    version: STATE_VERSION,
                    path: path.to_path_buf(),
                    ..State::default()
                })
            }
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let corrupt = |reason: String| StateError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let mut state: State = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if state.version != STATE_VERSION {
            return Err(corrupt(format!("unknown version {}", state.version)));
        }
        state.path = path.to_path_buf();
        Ok(state)
    }

    /// Refuses a state file written for another repository; adopts an
    /// unowned one.
    pub fn check_repo(&mut self, repo: &str) -> Result<(), StateError> {
        match &self.repo {
            Some(theirs) if theirs != repo => Err(StateError::OtherRepo {
                path: self.path.clone(),
                theirs: theirs.clone(),
                ours: repo.to_string(),
            }),
            _ => {
                self.repo = Some(repo.to_string());
                Ok(())
            }
        }
    }

    pub fn last(&self, branch: &BranchName) -> Option<&CommitId> {
        self.branches.get(branch.as_str())
    }

    pub fn set_last(&mut self, branch: &BranchName, commit: &CommitId) {
        self.branches.insert(branch.to_string(), commit.clone());
    }

    /// Whether the last run stopped with publishes in flight.
    pub fn publishing(&self) -> bool {
        self.publishing
    }

    pub fn set_publishing(&mut self, publishing: bool) {
        self.publishing = publishing;
        if !publishing {
            self.broker_failed = false;
        }
    }

    /// Whether a webhook delivery with this id was acted on before.
    pub fn seen_delivery(&self, id: &str) -> bool {
        self.deliveries.iter().any(|seen| seen == id)
    }

    /// Remembers a delivery acted on; the oldest is forgotten past
    /// [`REMEMBERED_DELIVERIES`].
    pub fn remember_delivery(&mut self, id: &str) {
        if self.seen_delivery(id) {
            return;
        }
        if self.deliveries.len() == REMEMBERED_DELIVERIES {
            self.deliveries.pop_front();
        }
        self.deliveries.push_back(id.to_string());
    }

    /// The branches with a last published commit.
    pub fn branches(&self) -> impl Iterator<Item = &str> {
        self.branches.keys().map(String::as_str)
    }

    pub fn broker_failed(&self) -> bool {
        self.broker_failed
    }

    pub fn set_broker_failed(&mut self) {
        self.broker_failed = true;
    }

    /// Writes the state atomically: a crash leaves the old or the new file,
    /// never half of one.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let write_err = |source| StateError::Write {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(write_err)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(write_err)?;
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        tmp.write_all(text.as_bytes()).map_err(write_err)?;
        tmp.as_file().sync_all().map_err(write_err)?;
        tmp.persist(path).map_err(|e| write_err(e.error))?;
        if let Ok(dir) = std::fs::File::open(&dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

/// The state file, read and written on the blocking pool: an fsync must
/// not stall the runtime's workers.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
    /// Every state written, in order (tests check when and what).
    #[cfg(test)]
    pub(crate) written: std::sync::Arc<std::sync::Mutex<Vec<State>>>,
}

impl StateFile {
    pub fn new(path: PathBuf) -> Self {
        StateFile {
            path,
            #[cfg(test)]
            written: Default::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`State::load`], off the runtime.
    pub async fn load(&self) -> Result<State, StateError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || State::load(&path))
            .await
            .map_err(|e| StateError::Read {
                path: self.path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?
    }

    /// [`State::save`], off the runtime.
    pub async fn save(&self, state: &State) -> Result<(), StateError> {
        let (path, copy) = (self.path.clone(), state.clone());
        tokio::task::spawn_blocking(move || copy.save(&path))
            .await
            .map_err(|e| StateError::Write {
                path: self.path.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
        #[cfg(test)]
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(state.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C1: &str = "0123456789abcdef0123456789abcdef01234567";

    fn main_branch() -> BranchName {
        BranchName::parse("main").expect("branch")
    }

    fn c1() -> CommitId {
        CommitId::parse(C1).expect("commit")
    }

    #[test]
    fn a_missing_file_is_a_first_start_and_saves_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/state.json");
        let mut state = State::load(&path).expect("empty");
        assert_eq!(state.last(&main_branch()), None);
        state.check_repo("/r").expect("adopt");
        state.set_last(&main_branch(), &c1());
        state.set_publishing(true);
        state.set_broker_failed();
        state.save(&path).expect("save");
        let mut again = State::load(&path).expect("load");
        assert_eq!(again.last(&main_branch()), Some(&c1()));
        assert!(again.publishing() && again.broker_failed());
        again.set_publishing(false);
        assert!(!again.broker_failed(), "cleared with the in-flight flag");
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{\"version\":1,\"branches\":{\"main\":").expect("write");
        let err = State::load(&path).expect_err("corrupt");
        assert!(err.to_string().contains("corrupt"), "{err}");
        std::fs::write(
            &path,
            "{\"version\":1,\"branches\":{\"main\":\"; rm -rf /\"}}",
        )
        .expect("write");
        assert!(matches!(
            State::load(&path),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_state_file_of_another_repository_is_refused() {
        let mut state = State::default();
        state.check_repo("/a").expect("adopt");
        assert!(matches!(
            state.check_repo("/b"),
            Err(StateError::OtherRepo { .. })
        ));
    }

    #[test]
    fn delivery_ids_are_remembered_across_saves_and_the_oldest_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let mut state = State::load(&path).expect("empty");
        for n in 0..=REMEMBERED_DELIVERIES {
            state.remember_delivery(&format!("d{n}"));
        }
        state.remember_delivery("d5");
        state.save(&path).expect("save");
        let again = State::load(&path).expect("load");
        assert!(!again.seen_delivery("d0"), "the oldest is forgotten");
        assert!(
            again.seen_delivery("d1") && again.seen_delivery(&format!("d{REMEMBERED_DELIVERIES}"))
        );
        assert_eq!(again.deliveries.len(), REMEMBERED_DELIVERIES);
    }
}
