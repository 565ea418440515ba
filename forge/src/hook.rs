//! Push webhooks: recognising who sent a delivery, checking that it comes
//! from someone who holds the repository's secret, and reading the push out
//! of each forge's payload into one shape, [`Push`].
//!
//! Everything a forge does differently stays here (header names, how the
//! body is signed, how its commit list is ordered and cut short), so the
//! dispatcher handles a push from GitHub, Gitea, GitLab or Warren's own
//! `post-receive` hook in one way.

use http::HeaderMap;
use model::{BranchName, CommitId};
use serde::Deserialize;

use crate::signature;

/// The largest body a webhook may have (GitHub's own limit on what it
/// sends): the integrator answers `413` above it, before reading it all.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// A subject is cut to this many bytes (at a character boundary): a job
/// message must stay far below the broker's message size limit.
pub const MAX_SUBJECT_BYTES: usize = 1024;
/// An author's name is cut to this many bytes.
pub const MAX_AUTHOR_BYTES: usize = 256;

/// GitHub lists at most 20 commits in some of its push payloads (the
/// timeline's) and up to 2,048 in others (webhooks), without saying when
/// it cut the list; 20 or more listed is therefore treated as possibly cut
/// short, which is right under either limit.
const GITHUB_LISTED_CAP: usize = 20;
/// Gitea before 1.19 sent no `total_commits`; it lists at most
/// `FEED_MAX_COMMIT_NUM` (5 by default) commits.
const GITEA_DEFAULT_LISTED_CAP: usize = 5;
/// GitLab lists at most 20 commits.
const GITLAB_LISTED_CAP: usize = 20;

/// Who sent a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forge {
    /// `X-GitHub-Event`, signed with `X-Hub-Signature-256: sha256=<hex>`.
    GitHub,
    /// Gitea and Forgejo: `X-Gitea-Event`, signed with
    /// `X-Gitea-Signature: <hex>`. (They also send GitHub's headers; their
    /// own win.)
    Gitea,
    /// `X-Gitlab-Event`, with the secret itself in `X-Gitlab-Token`.
    GitLab,
    /// Warren's `post-receive` hook: `X-Warren-Event`, signed like GitHub
    /// with `X-Warren-Signature` (see [`crate::post_receive`]).
    Warren,
}

impl Forge {
    pub fn as_str(self) -> &'static str {
        match self {
            Forge::GitHub => "github",
            Forge::Gitea => "gitea",
            Forge::GitLab => "gitlab",
            Forge::Warren => "warren",
        }
    }
}

impl std::fmt::Display for Forge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authentic webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub forge: Forge,
    /// The forge's id for this delivery (`X-GitHub-Delivery`,
    /// `X-Gitea-Delivery`, GitLab's `Idempotency-Key` or else
    /// `X-Gitlab-Event-UUID`, `X-Warren-Delivery`),
    /// the same when the forge delivers it again; `None` when the forge
    /// sent none. At most 128 visible ASCII characters.
    pub id: Option<String>,
    pub event: Event,
}

/// What a delivery says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Something was pushed: maybe jobs to queue.
    Push(Push),
    /// The forge checks that the hook works (GitHub sends one when a hook
    /// is made): nothing to queue, answer `200`.
    Ping,
    /// Any other event the hook was set up to send (issues, pull requests,
    /// GitLab's system hooks…), by the forge's name for it: nothing to
    /// queue, answer `200`.
    Other(String),
}

/// A push of one ref, in the same shape whoever sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The full ref: `refs/heads/main`, `refs/tags/v1.0`.
    pub git_ref: String,
    /// Where the ref was (all zeros: it was just created).
    pub before: CommitId,
    /// Where the ref is now (all zeros: it was deleted).
    pub after: CommitId,
    /// The branch, for a `refs/heads/…` ref; `None` for tags and other refs.
    pub branch: Option<BranchName>,
    /// A `refs/tags/…` ref.
    pub tag: bool,
    /// `before` is all zeros: the ref is new.
    pub created: bool,
    /// `after` is all zeros: the ref was deleted (no commit to build).
    pub deleted: bool,
    /// The pushed commits, oldest first, as far as the payload lists them.
    pub commits: Vec<PushedCommit>,
    /// The payload may not list every commit of `before..after` (GitLab
    /// and Gitea list the newest few and give the total; GitHub gives no
    /// total, so a long list counts as cut): list `before..after` from the
    /// repository itself.
    pub truncated: bool,
}

impl Push {
    /// The branch whose new commits this push asks to build: `None` for a
    /// tag, another kind of ref, or a deleted branch.
    pub fn built_branch(&self) -> Option<&BranchName> {
        if self.deleted || self.tag {
            return None;
        }
        self.branch.as_ref()
    }
}

/// One pushed commit, as a push payload (or Warren's hook) describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct PushedCommit {
    pub id: CommitId,
    /// The first line of the message, at most [`MAX_SUBJECT_BYTES`].
    pub subject: Option<String>,
    /// The author's name, at most [`MAX_AUTHOR_BYTES`].
    pub author: Option<String>,
}

/// Why a delivery is refused. [`HookError::http_status`] is the answer to
/// send; the text is safe to send as the answer's body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// No secret, no signature, or the wrong one: `401`. The text says no
    /// more than that; [`Denial`] says why, for the dispatcher's own log.
    #[error("unauthorized")]
    Unauthorized(Denial),
    /// Not a webhook Warren knows, or a payload it cannot read: `400`,
    /// with the reason.
    #[error("{0}")]
    BadRequest(String),
    /// Over [`MAX_BODY_BYTES`]: `413`.
    #[error("the body is over {} MiB", MAX_BODY_BYTES >> 20)]
    TooLarge,
}

/// Why a delivery was not authentic. Meant for the receiver's log, never
/// for the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("the repository has no webhook secret")]
    NoSecret,
    #[error("the delivery carries no signature or token")]
    Missing,
    #[error("the signature or token does not match the secret")]
    Mismatch,
}

impl HookError {
    /// The HTTP status to answer with.
    pub fn http_status(&self) -> u16 {
        match self {
            HookError::Unauthorized(_) => 401,
            HookError::BadRequest(_) => 400,
            HookError::TooLarge => 413,
        }
    }
}

fn bad(reason: impl Into<String>) -> HookError {
    HookError::BadRequest(reason.into())
}

/// Reads one webhook delivery: who sent it (from its headers), whether it
/// is authentic (signature or token checked against `secret`, the
/// repository's webhook secret, in constant time, before anything in the
/// body is read), and what happened.
///
/// The integrator answers `Ok` with a push by queueing its jobs (`202`),
/// `Ok` with any other event with `200`, and `Err(e)` with
/// `e.http_status()` and `e.to_string()`.
pub fn parse_push(headers: &HeaderMap, body: &[u8], secret: &[u8]) -> Result<Delivery, HookError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(HookError::TooLarge);
    }
    let (forge, kind) = recognise(headers)?;
    verify(forge, headers, body, secret)?;
    let id = delivery_id(forge, headers)?;
    let event = match (forge, kind.as_str()) {
        (_, "ping") => Event::Ping,
        (Forge::GitHub | Forge::Gitea | Forge::Warren, "push")
        | (Forge::GitLab, "Push Hook" | "Tag Push Hook") => {
            Event::Push(read_push(forge, headers, body)?)
        }
        (_, other) => Event::Other(other.to_string()),
    };
    Ok(Delivery { forge, id, event })
}

/// The forge and its name for the event. Warren's header is looked at
/// first, then Gitea's (Gitea and Forgejo send GitHub's too), GitLab's and
/// GitHub's.
fn recognise(headers: &HeaderMap) -> Result<(Forge, String), HookError> {
    let candidates = [
        ("x-warren-event", Forge::Warren),
        ("x-gitea-event", Forge::Gitea),
        ("x-gitlab-event", Forge::GitLab),
        ("x-github-event", Forge::GitHub),
    ];
    for (name, forge) in candidates {
        if let Some(value) = headers.get(name) {
            let kind = value
                .to_str()
                .ok()
                .filter(|v| is_visible_text(v, 64))
                .ok_or_else(|| bad(format!("{name}: expected a short event name")))?;
            return Ok((forge, kind.to_string()));
        }
    }
    Err(bad(
        "not a webhook Warren knows: no X-GitHub-Event, X-Gitea-Event, X-Gitlab-Event or X-Warren-Event header",
    ))
}

fn verify(forge: Forge, headers: &HeaderMap, body: &[u8], secret: &[u8]) -> Result<(), HookError> {
    // An empty secret would make every signature made with it valid.
    if secret.is_empty() {
        return Err(HookError::Unauthorized(Denial::NoSecret));
    }
    let header = |name: &str| headers.get(name).map(|value| value.as_bytes());
    let authentic = match forge {
        Forge::GitHub | Forge::Warren => {
            let name = if forge == Forge::GitHub {
                "x-hub-signature-256"
            } else {
                "x-warren-signature"
            };
            let given = header(name).ok_or(HookError::Unauthorized(Denial::Missing))?;
            std::str::from_utf8(given)
                .ok()
                .and_then(|given| given.strip_prefix("sha256="))
                .is_some_and(|hex| signature::hmac_matches(secret, body, hex))
        }
        Forge::Gitea => {
            let given =
                header("x-gitea-signature").ok_or(HookError::Unauthorized(Denial::Missing))?;
            std::str::from_utf8(given).is_ok_and(|hex| signature::hmac_matches(secret, body, hex))
        }
        Forge::GitLab => {
            let given = header("x-gitlab-token").ok_or(HookError::Unauthorized(Denial::Missing))?;
            signature::token_matches(secret, given)
        }
    };
    if authentic {
        Ok(())
    } else {
        Err(HookError::Unauthorized(Denial::Mismatch))
    }
}

/// GitLab 17.4 and later send `Idempotency-Key`, documented as the same
/// on every retry of one delivery; before, `X-Gitlab-Event-UUID` is all
/// there is.
fn delivery_id(forge: Forge, headers: &HeaderMap) -> Result<Option<String>, HookError> {
    let name = match forge {
        Forge::GitHub => "x-github-delivery",
        Forge::Gitea => "x-gitea-delivery",
        Forge::GitLab if headers.contains_key("idempotency-key") => "idempotency-key",
        Forge::GitLab => "x-gitlab-event-uuid",
        Forge::Warren => "x-warren-delivery",
    };
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|id| is_visible_text(id, 128))
        .map(|id| Some(id.to_string()))
        .ok_or_else(|| {
            bad(format!(
                "{name}: expected 1 to 128 visible ASCII characters"
            ))
        })
}

fn is_visible_text(text: &str, max: usize) -> bool {
    !text.is_empty() && text.len() <= max && text.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

/// Every forge's push payload, read into one structure: the fields they
/// share, plus each one's way of saying how many commits there were.
#[derive(Deserialize)]
struct RawPush {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    #[serde(default)]
    commits: Option<Vec<RawCommit>>,
    /// Gitea (1.19 and later).
    #[serde(default)]
    total_commits: Option<u64>,
    /// GitLab.
    #[serde(default)]
    total_commits_count: Option<u64>,
    /// Warren's hook.
    #[serde(default)]
    truncated: Option<bool>,
}

#[derive(Deserialize)]
struct RawCommit {
    id: String,
    /// The forges send the whole message…
    #[serde(default)]
    message: Option<String>,
    /// …Warren's hook the subject.
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    author: Option<RawAuthor>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawAuthor {
    /// The forges: `{"name": …, "email": …}`.
    Person {
        #[serde(default)]
        name: Option<String>,
    },
    /// Warren's hook: the name.
    Name(String),
}

fn read_push(forge: Forge, headers: &HeaderMap, body: &[u8]) -> Result<Push, HookError> {
    let form = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if form {
        return Err(bad(
            "the webhook sends form data: set its content type to application/json",
        ));
    }
    let raw: RawPush = serde_json::from_slice(body)
        .map_err(|err| bad(format!("malformed push payload: {err}")))?;
    if !raw.git_ref.starts_with("refs/")
        || raw.git_ref.len() > 1024
        || raw.git_ref.chars().any(char::is_control)
    {
        return Err(bad("ref: expected a full ref name (refs/…)"));
    }
    let commit = |field: &str, value: &str| {
        CommitId::parse(value).map_err(|err| bad(format!("{field}: {}", err.reason)))
    };
    let before = commit("before", &raw.before)?;
    let after = commit("after", &raw.after)?;
    let tag = raw.git_ref.starts_with("refs/tags/");
    let branch = match raw.git_ref.strip_prefix("refs/heads/") {
        Some(name) => {
            Some(BranchName::parse(name).map_err(|err| bad(format!("ref: {}", err.reason)))?)
        }
        None => None,
    };
    let raw_commits = raw.commits.unwrap_or_default();
    let listed = raw_commits.len();
    let mut commits = raw_commits
        .into_iter()
        .map(|c| {
            let subject = c
                .subject
                .or(c.message)
                .map(|text| first_line(&text, MAX_SUBJECT_BYTES));
            let author = c.author.and_then(|author| match author {
                RawAuthor::Person { name } => name,
                RawAuthor::Name(name) => Some(name),
            });
            Ok(PushedCommit {
                id: commit("commits[].id", &c.id)?,
                subject: subject.filter(|s| !s.is_empty()),
                author: author
                    .map(|name| first_line(&name, MAX_AUTHOR_BYTES))
                    .filter(|s| !s.is_empty()),
            })
        })
        .collect::<Result<Vec<_>, HookError>>()?;
    oldest_first(forge, &after, &mut commits);
    let total = |total: Option<u64>, cap: usize| match total {
        Some(total) => total > listed as u64,
        None => listed >= cap,
    };
    let truncated = match forge {
        Forge::GitHub => listed >= GITHUB_LISTED_CAP,
        Forge::Gitea => total(raw.total_commits, GITEA_DEFAULT_LISTED_CAP),
        Forge::GitLab => total(raw.total_commits_count, GITLAB_LISTED_CAP),
        Forge::Warren => raw.truncated.unwrap_or(false),
    };
    Ok(Push {
        created: is_zero(&before),
        deleted: is_zero(&after),
        git_ref: raw.git_ref,
        before,
        after,
        branch,
        tag,
        commits,
        truncated,
    })
}

/// GitHub, GitLab and Warren list the oldest commit first, Gitea the
/// newest. The pushed head (`after`) is the newest commit, so where it
/// stands says the order; the forge's habit decides only when the list
/// does not end with it.
fn oldest_first(forge: Forge, after: &CommitId, commits: &mut [PushedCommit]) {
    let newest_first = match (commits.first(), commits.last()) {
        (Some(first), Some(last)) if commits.len() > 1 && first.id == *after => last.id != *after,
        (Some(_), Some(last)) if last.id == *after => false,
        _ => forge == Forge::Gitea,
    };
    if newest_first {
        commits.reverse();
    }
}

fn is_zero(commit: &CommitId) -> bool {
    commit.bytes().all(|b| b == b'0')
}

/// The first line of `text`, without its line end, cut to at most `max`
/// bytes at a character boundary.
fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default().trim_end();
    let mut end = line.len().min(max);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_is_the_first_line_cut_at_a_character_boundary() {
        assert_eq!(first_line("Fix it\r\n\nbecause", 100), "Fix it");
        assert_eq!(first_line("", 100), "");
        // "é" is two bytes: a cut in its middle moves before it.
        assert_eq!(first_line("aé", 2), "a");
        assert_eq!(first_line("aé", 3), "aé");
    }

    fn commit(n: u8) -> PushedCommit {
        PushedCommit {
            id: CommitId::parse(&format!("{n:02x}").repeat(20)).expect("id"),
            subject: None,
            author: None,
        }
    }

    #[test]
    fn the_pushed_head_says_which_end_is_newest() {
        let ids =
            |commits: &[PushedCommit]| commits.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
        let oldest_first_list = vec![commit(1), commit(2), commit(3)];
        let head = commit(3).id;
        for forge in [Forge::GitHub, Forge::Gitea, Forge::GitLab] {
            let mut list = oldest_first_list.clone();
            oldest_first(forge, &head, &mut list);
            assert_eq!(ids(&list), ids(&oldest_first_list), "{forge}");
            let mut list: Vec<_> = oldest_first_list.iter().rev().cloned().collect();
            oldest_first(forge, &head, &mut list);
            assert_eq!(ids(&list), ids(&oldest_first_list), "{forge} reversed");
        }
        // The head not listed: each forge's habit.
        let elsewhere = commit(9).id;
        let mut list = oldest_first_list.clone();
        oldest_first(Forge::GitHub, &elsewhere, &mut list);
        assert_eq!(ids(&list), ids(&oldest_first_list));
        oldest_first(Forge::Gitea, &elsewhere, &mut list);
        assert_eq!(list[0].id, commit(3).id);
    }
}
