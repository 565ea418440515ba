//! The repository registry's entries: what to build and how to hear about
//! it. Secrets are never part of an entry: it names the environment
//! variables that hold them (the webhook secret, the forge token), which
//! the components that need them read.

use serde::{Deserialize, Serialize};

use crate::{RepoName, RepoUrl};

/// The forges Warren receives pushes from and reports commit statuses to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    GitHub,
    /// Gitea and Forgejo.
    Gitea,
    GitLab,
}

impl ForgeKind {
    pub const ALL: [ForgeKind; 3] = [ForgeKind::GitHub, ForgeKind::Gitea, ForgeKind::GitLab];

    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::GitHub => "github",
            ForgeKind::Gitea => "gitea",
            ForgeKind::GitLab => "gitlab",
        }
    }
}

impl std::fmt::Display for ForgeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ForgeKind {
    type Err = String;
    fn from_str(word: &str) -> Result<Self, String> {
        ForgeKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == word)
            .ok_or_else(|| format!("unknown forge {word:?} (one of github, gitea, gitlab)"))
    }
}

/// Where a repository's commit statuses go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusTarget {
    pub kind: ForgeKind,
    /// The forge's API base URL (`https://api.github.com`,
    /// `https://gitea.example.org/api/v1`, `https://gitlab.example.org/api/v4`).
    pub api: String,
    /// `OWNER/REPO` (GitHub, Gitea) or the project's id or path (GitLab).
    pub repo: String,
    /// The environment variable that holds the forge's token.
    pub token_env: String,
}

/// How often a repository is polled when its entry does not say: often
/// enough that a forge that cannot reach Warren still gets a verdict within
/// minutes, rarely enough that 200 repositories cost one observer little.
pub const DEFAULT_POLL_SECS: f64 = 60.0;

fn default_poll() -> Option<f64> {
    Some(DEFAULT_POLL_SECS)
}

/// One registered repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repo {
    pub name: RepoName,
    pub url: RepoUrl,
    /// Branch patterns to build (`main`, `release/*`); empty: the
    /// repository's HEAD branch.
    #[serde(default)]
    pub branches: Vec<String>,
    /// Seconds between polls; `None` (JSON `null`): never polled, pushes
    /// only. Left out: [`DEFAULT_POLL_SECS`].
    #[serde(default = "default_poll")]
    pub poll_secs: Option<f64>,
    /// The environment variable that holds the webhook secret; `None`:
    /// webhooks for this repository are refused.
    #[serde(default)]
    pub webhook_secret_env: Option<String>,
    #[serde(default)]
    pub status: Option<StatusTarget>,
}

/// Why a registry entry is refused; the text names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RepoError {
    pub field: &'static str,
    pub reason: String,
}

fn refuse(field: &'static str, reason: impl Into<String>) -> RepoError {
    RepoError {
        field,
        reason: reason.into(),
    }
}

/// An environment variable's name: what a shell accepts.
fn check_env_name(field: &'static str, name: &str) -> Result<(), RepoError> {
    let mut chars = name.chars();
    let first = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && name.len() <= 128 {
        Ok(())
    } else {
        Err(refuse(
            field,
            format!("{name:?} is not an environment variable's name"),
        ))
    }
}

impl Repo {
    /// Checks what the types cannot: patterns, the poll interval, the
    /// variables' names, the status target.
    pub fn validate(&self) -> Result<(), RepoError> {
        for pattern in &self.branches {
            crate::branch::check_branch_pattern(pattern)
                .map_err(|e| refuse("branch", format!("{pattern:?}: {}", e.reason)))?;
        }
        if let Some(secs) = self.poll_secs {
            if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
                return Err(refuse(
                    "poll",
                    format!("expected seconds between 0 and 86400, got {secs}"),
                ));
            }
        }
        if let Some(var) = &self.webhook_secret_env {
            check_env_name("webhook_secret_env", var)?;
        }
        if let Some(status) = &self.status {
            if !(status.api.starts_with("https://") || status.api.starts_with("http://")) {
                return Err(refuse(
                    "status_api",
                    format!("expected an http:// or https:// URL, got {:?}", status.api),
                ));
            }
            let repo_ok = !status.repo.is_empty()
                && status.repo.len() <= 255
                && !status.repo.chars().any(|c| c.is_control() || c == ' ');
            if !repo_ok {
                return Err(refuse(
                    "status_repo",
                    format!("expected OWNER/REPO or a project id, got {:?}", status.repo),
                ));
            }
            check_env_name("status_token_env", &status.token_env)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> Repo {
        Repo {
            name: RepoName::parse("app").expect("name"),
            url: RepoUrl::parse("https://example.org/app.git").expect("url"),
            branches: vec!["main".into(), "release/*".into()],
            poll_secs: Some(30.0),
            webhook_secret_env: Some("APP_HOOK_SECRET".into()),
            status: Some(StatusTarget {
                kind: ForgeKind::GitHub,
                api: "https://api.github.com".into(),
                repo: "me/app".into(),
                token_env: "GITHUB_TOKEN".into(),
            }),
        }
    }

    #[test]
    fn a_full_entry_is_valid_and_round_trips() {
        assert_eq!(repo().validate(), Ok(()));
        let json = serde_json::to_string(&repo()).expect("json");
        assert_eq!(serde_json::from_str::<Repo>(&json).expect("back"), repo());
        assert!(json.contains("\"kind\":\"github\""), "{json}");
    }

    #[test]
    fn each_bad_field_is_named() {
        let mut bad = repo();
        bad.branches = vec!["a..b".into()];
        assert_eq!(bad.validate().expect_err("branch").field, "branch");
        let mut bad = repo();
        bad.poll_secs = Some(0.0);
        assert_eq!(bad.validate().expect_err("poll").field, "poll");
        let mut bad = repo();
        bad.webhook_secret_env = Some("1-not a var".into());
        assert_eq!(bad.validate().expect_err("env").field, "webhook_secret_env");
        let mut bad = repo();
        if let Some(status) = bad.status.as_mut() {
            status.api = "ftp://x".into();
        }
        assert_eq!(bad.validate().expect_err("api").field, "status_api");
        assert!("forgejo".parse::<ForgeKind>().is_err());
        assert_eq!("gitlab".parse::<ForgeKind>(), Ok(ForgeKind::GitLab));
    }
}
