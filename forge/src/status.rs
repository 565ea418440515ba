//! Commit statuses: where a repository's verdicts go (a [`StatusTarget`]),
//! what one report says (a [`StatusUpdate`]), and how each forge's
//! commit-status API wants it said. Sending is [`crate::StatusReporter`]'s.
//!
//! | forge | request | token header | states |
//! |---|---|---|---|
//! | GitHub | `POST {api}/repos/{owner}/{repo}/statuses/{sha}` | `Authorization: Bearer TOKEN` | `pending`, `success`, `failure`, `error` |
//! | Gitea, Forgejo | the same | `Authorization: token TOKEN` | the same |
//! | GitLab | `POST {api}/projects/{id}/statuses/{sha}` | `PRIVATE-TOKEN: TOKEN` | `pending`, `running`, `success`, `failed`, `canceled` |
//!
//! `api` is the API's base URL: `https://api.github.com` (GitHub
//! Enterprise: `https://HOST/api/v3`), `https://HOST/api/v1` (Gitea),
//! `https://HOST/api/v4` (GitLab).

use std::fmt;

use model::{CommitId, ForgeKind, JobStatus};
use serde_json::json;

/// The most characters a status description may have (GitHub's limit).
pub const MAX_DESCRIPTION_CHARS: usize = 140;

/// The forge's word for a job's status: queued and running are `pending`
/// (GitLab: `pending`, `running`), passed is `success`, failed is
/// `failure` (GitLab: `failed`), error and timeout are `error` (GitLab has
/// no such state: `failed`), canceled is GitLab's `canceled` and GitHub's
/// `error` (GitHub has no canceled commit state; `error` keeps a canceled
/// commit from looking good).
pub fn status_word(kind: ForgeKind, status: JobStatus) -> &'static str {
    let gitlab = kind == ForgeKind::GitLab;
    match status {
        JobStatus::Waiting | JobStatus::Queued => "pending",
        JobStatus::Running if gitlab => "running",
        JobStatus::Skipped if gitlab => "skipped",
        JobStatus::Skipped => "error",
        JobStatus::Canceled if gitlab => "canceled",
        JobStatus::Canceled => "error",
        JobStatus::Running => "pending",
        JobStatus::Passed => "success",
        JobStatus::Failed | JobStatus::Error | JobStatus::Timeout if gitlab => "failed",
        JobStatus::Failed => "failure",
        JobStatus::Error | JobStatus::Timeout => "error",
    }
}

/// A status target that is not usable; the text names the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("--status-api: {0}")]
    Api(String),
    #[error("--status-repo {repo:?}: {reason}")]
    Repo { repo: String, reason: String },
    #[error("--status-token-env: {0}")]
    Token(&'static str),
}

/// Where one repository's statuses go, and the token that may write them.
/// Its `Debug` never shows the token; nothing in this crate logs it.
#[derive(Clone, PartialEq, Eq)]
pub struct StatusTarget {
    kind: ForgeKind,
    /// The API's base URL, without a trailing `/`.
    api: String,
    /// What logs call the forge: the API's host (and port).
    host: String,
    /// `OWNER/REPO`, or GitLab's project id or path (as given).
    repo: String,
    /// The repository's part of the request path: `OWNER/REPO`, or the
    /// GitLab project id (a path with its `/` written `%2F`).
    repo_path: String,
    token: String,
}

impl StatusTarget {
    /// Checks and builds a target: `api` an `http` or `https` URL without
    /// credentials, query or fragment; `repo` `OWNER/REPO` (GitHub, Gitea)
    /// or a project id or `group/project` path (GitLab); `token` the
    /// token's text (from the variable the registry names).
    pub fn new(kind: ForgeKind, api: &str, repo: &str, token: &str) -> Result<Self, TargetError> {
        let url =
            reqwest::Url::parse(api).map_err(|err| TargetError::Api(format!("{api:?}: {err}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(TargetError::Api(format!(
                "{api:?}: expected an http or https URL"
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TargetError::Api(
                "the URL must not hold credentials: give the token through --status-token-env"
                    .into(),
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(TargetError::Api(format!(
                "{api:?}: expected no query or fragment"
            )));
        }
        let host = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            (None, _) => return Err(TargetError::Api(format!("{api:?}: expected a host"))),
        };
        let repo_path = repo_path(kind, repo)?;
        if token.is_empty() {
            return Err(TargetError::Token("the token is empty"));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TargetError::Token(
                "the token must be visible ASCII characters without spaces",
            ));
        }
        Ok(StatusTarget {
            kind,
            api: url.as_str().trim_end_matches('/').to_string(),
            host,
            repo: repo.to_string(),
            repo_path,
            token: token.to_string(),
        })
    }

    pub fn kind(&self) -> ForgeKind {
        self.kind
    }

    /// The forge's host (and port): what logs name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The repository as given (`OWNER/REPO` or GitLab's project).
    pub fn repo(&self) -> &str {
        &self.repo
    }

    /// What tells two targets' queues apart: the same API and repository
    /// share one.
    pub(crate) fn queue_key(&self) -> String {
        format!("{} {}", self.api, self.repo_path)
    }

    /// The token, to keep it out of anything a forge answers that is logged.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// The request that reports `update` for this target.
    pub(crate) fn request(&self, update: &StatusUpdate) -> StatusRequest {
        let state = status_word(self.kind, update.status);
        let (url, auth) = match self.kind {
            ForgeKind::GitHub => (
                format!(
                    "{}/repos/{}/statuses/{}",
                    self.api, self.repo_path, update.commit
                ),
                ("authorization", format!("Bearer {}", self.token)),
            ),
            ForgeKind::Gitea => (
                format!(
                    "{}/repos/{}/statuses/{}",
                    self.api, self.repo_path, update.commit
                ),
                ("authorization", format!("token {}", self.token)),
            ),
            ForgeKind::GitLab => (
                format!(
                    "{}/projects/{}/statuses/{}",
                    self.api, self.repo_path, update.commit
                ),
                ("private-token", self.token.clone()),
            ),
        };
        let description = cut_description(&update.description);
        // GitLab calls the context `name` (it takes `context` as an alias).
        let label = if self.kind == ForgeKind::GitLab {
            "name"
        } else {
            "context"
        };
        let mut body = json!({
            "state": state,
            label: update.context,
            "description": description,
        });
        if let Some(target_url) = &update.target_url {
            body["target_url"] = json!(target_url);
        }
        let accept = if self.kind == ForgeKind::GitHub {
            "application/vnd.github+json"
        } else {
            "application/json"
        };
        let mut headers = vec![
            (auth.0, auth.1),
            ("accept", accept.to_string()),
            ("content-type", "application/json".to_string()),
        ];
        if self.kind == ForgeKind::GitHub {
            headers.push(("x-github-api-version", "2022-11-28".to_string()));
        }
        StatusRequest {
            url,
            headers,
            body: body.to_string(),
            state,
        }
    }
}

/// Never the token.
impl fmt::Debug for StatusTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusTarget")
            .field("kind", &self.kind)
            .field("api", &self.api)
            .field("repo", &self.repo)
            .field("token", &"***")
            .finish()
    }
}

fn repo_path(kind: ForgeKind, repo: &str) -> Result<String, TargetError> {
    let wrong = |reason: &str| TargetError::Repo {
        repo: repo.to_string(),
        reason: reason.to_string(),
    };
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.len() <= 255
            && c != "."
            && c != ".."
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    let components: Vec<&str> = repo.split('/').collect();
    match kind {
        ForgeKind::GitHub | ForgeKind::Gitea => {
            if components.len() == 2 && components.iter().all(|c| component_ok(c)) {
                Ok(repo.to_string())
            } else {
                Err(wrong(
                    "expected OWNER/REPO (letters, digits, '.', '_', '-')",
                ))
            }
        }
        ForgeKind::GitLab => {
            if !repo.is_empty() && repo.bytes().all(|b| b.is_ascii_digit()) {
                Ok(repo.to_string())
            } else if components.len() >= 2 && components.iter().all(|c| component_ok(c)) {
                Ok(components.join("%2F"))
            } else {
                Err(wrong("expected a project id or a GROUP/PROJECT path"))
            }
        }
    }
}

/// One change of a job, to report on its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub commit: CommitId,
    pub status: JobStatus,
    /// Which check this is on the commit: `warren`, or the job's name.
    /// Reports with the same context replace each other on the forge.
    pub context: String,
    /// Cut to [`MAX_DESCRIPTION_CHARS`] when sent.
    pub description: String,
    /// The job's page under the public URL.
    pub target_url: Option<String>,
}

impl StatusUpdate {
    /// A report with context `warren` and the status as its description.
    pub fn new(commit: CommitId, status: JobStatus) -> Self {
        let description = match status {
            JobStatus::Waiting => "Waiting",
            JobStatus::Skipped => "Skipped",
            JobStatus::Canceled => "Canceled",
            JobStatus::Queued => "Queued",
            JobStatus::Running => "Running",
            JobStatus::Passed => "Passed",
            JobStatus::Failed => "Failed",
            JobStatus::Error => "Error",
            JobStatus::Timeout => "Timed out",
        };
        StatusUpdate {
            commit,
            status,
            context: "warren".to_string(),
            description: description.to_string(),
            target_url: None,
        }
    }
}

/// What [`StatusTarget::request`] makes: everything the sender needs.
#[derive(Debug, Clone)]
pub(crate) struct StatusRequest {
    pub url: String,
    /// The token's header first, then the others.
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// The forge's state word, for logs.
    pub state: &'static str,
}

/// At most [`MAX_DESCRIPTION_CHARS`] characters, on one line: a longer
/// text is cut at a character boundary and ends with `…`.
pub(crate) fn cut_description(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let one_line = one_line.trim();
    if one_line.chars().count() <= MAX_DESCRIPTION_CHARS {
        return one_line.to_string();
    }
    let mut cut: String = one_line.chars().take(MAX_DESCRIPTION_CHARS - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn update(status: JobStatus) -> StatusUpdate {
        StatusUpdate::new(CommitId::parse(SHA).expect("id"), status)
    }

    #[test]
    fn each_forge_has_its_words_for_each_status() {
        use JobStatus::*;
        let expected = [
            (
                ForgeKind::GitHub,
                ["pending", "pending", "success", "failure", "error", "error"],
            ),
            (
                ForgeKind::Gitea,
                ["pending", "pending", "success", "failure", "error", "error"],
            ),
            (
                ForgeKind::GitLab,
                [
                    "pending", "running", "success", "failed", "failed", "failed",
                ],
            ),
        ];
        for (kind, words) in expected {
            let got =
                [Queued, Running, Passed, Failed, Error, Timeout].map(|s| status_word(kind, s));
            assert_eq!(got, words, "{kind}");
        }
    }

    #[test]
    fn descriptions_are_cut_at_140_characters_on_a_character_boundary() {
        assert_eq!(cut_description("Passed"), "Passed");
        assert_eq!(cut_description("a\nb\tc "), "a b c");
        let exact = "é".repeat(140);
        assert_eq!(cut_description(&exact), exact);
        let long = "é".repeat(141);
        let cut = cut_description(&long);
        assert_eq!(cut.chars().count(), 140);
        assert!(cut.ends_with("é…"));
        let emoji = "🦀".repeat(200);
        assert_eq!(cut_description(&emoji).chars().count(), 140);
    }

    #[test]
    fn targets_are_checked_and_name_the_flag() {
        let ok = StatusTarget::new(ForgeKind::GitHub, "https://api.github.com/", "o/r", "t")
            .expect("valid");
        assert_eq!(ok.host(), "api.github.com");
        let cases = [
            (ForgeKind::GitHub, "ftp://x", "o/r", "t", "--status-api"),
            (
                ForgeKind::GitHub,
                "https://u:p@x",
                "o/r",
                "t",
                "--status-api",
            ),
            (
                ForgeKind::GitHub,
                "https://x/?q=1",
                "o/r",
                "t",
                "--status-api",
            ),
            (ForgeKind::GitHub, "not a url", "o/r", "t", "--status-api"),
            (ForgeKind::GitHub, "https://x", "o", "t", "--status-repo"),
            (
                ForgeKind::GitHub,
                "https://x",
                "o/r/x",
                "t",
                "--status-repo",
            ),
            (ForgeKind::Gitea, "https://x", "../r", "t", "--status-repo"),
            (ForgeKind::Gitea, "https://x", "o/r?x", "t", "--status-repo"),
            (ForgeKind::GitLab, "https://x", "", "t", "--status-repo"),
            (ForgeKind::GitLab, "https://x", "a b", "t", "--status-repo"),
            (
                ForgeKind::GitHub,
                "https://x",
                "o/r",
                "",
                "--status-token-env",
            ),
            (
                ForgeKind::GitHub,
                "https://x",
                "o/r",
                "a\nb",
                "--status-token-env",
            ),
        ];
        for (kind, api, repo, token, flag) in cases {
            let err = StatusTarget::new(kind, api, repo, token).expect_err(api);
            assert!(err.to_string().starts_with(flag), "{api} {repo}: {err}");
        }
        assert_eq!("gitlab".parse::<ForgeKind>(), Ok(ForgeKind::GitLab));
        assert!("bitbucket"
            .parse::<ForgeKind>()
            .expect_err("unknown")
            .contains("unknown forge"));
    }

    #[test]
    fn the_debug_form_hides_the_token() {
        let target = StatusTarget::new(
            ForgeKind::Gitea,
            "https://git.example/api/v1",
            "o/r",
            "hunter2",
        )
        .expect("valid");
        let shown = format!("{target:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"));
    }

    #[test]
    fn each_forge_gets_its_path_token_header_and_body() {
        let github = StatusTarget::new(
            ForgeKind::GitHub,
            "https://api.github.com",
            "octo/hello",
            "ghp_x",
        )
        .expect("valid");
        let mut passed = update(JobStatus::Passed);
        passed.target_url = Some("https://ci.example/jobs/abc".into());
        let request = github.request(&passed);
        assert_eq!(
            request.url,
            format!("https://api.github.com/repos/octo/hello/statuses/{SHA}")
        );
        assert_eq!(
            request.headers[0],
            ("authorization", "Bearer ghp_x".to_string())
        );
        let body: serde_json::Value = serde_json::from_str(&request.body).expect("json");
        assert_eq!(
            body,
            json!({"state": "success", "context": "warren", "description": "Passed",
                   "target_url": "https://ci.example/jobs/abc"})
        );

        let gitea = StatusTarget::new(
            ForgeKind::Gitea,
            "http://gitea.local:3000/api/v1/",
            "o/r",
            "tok",
        )
        .expect("valid");
        let request = gitea.request(&update(JobStatus::Running));
        assert_eq!(
            request.url,
            format!("http://gitea.local:3000/api/v1/repos/o/r/statuses/{SHA}")
        );
        assert_eq!(
            request.headers[0],
            ("authorization", "token tok".to_string())
        );
        assert_eq!(request.state, "pending");
        assert_eq!(gitea.host(), "gitea.local:3000");

        let gitlab = StatusTarget::new(
            ForgeKind::GitLab,
            "https://gitlab.example/api/v4",
            "group/sub/proj",
            "glpat",
        )
        .expect("valid");
        let mut timeout = update(JobStatus::Timeout);
        timeout.context = "warren/main".into();
        let request = gitlab.request(&timeout);
        assert_eq!(
            request.url,
            format!("https://gitlab.example/api/v4/projects/group%2Fsub%2Fproj/statuses/{SHA}")
        );
        assert_eq!(request.headers[0], ("private-token", "glpat".to_string()));
        let body: serde_json::Value = serde_json::from_str(&request.body).expect("json");
        assert_eq!(
            body,
            json!({"state": "failed", "name": "warren/main", "description": "Timed out"})
        );
        let by_id = StatusTarget::new(
            ForgeKind::GitLab,
            "https://gitlab.example/api/v4",
            "42",
            "glpat",
        )
        .expect("valid");
        assert!(by_id
            .request(&timeout)
            .url
            .contains("/projects/42/statuses/"));
    }
}
