//! Warren's own "forge": a bare repository's `post-receive` hook (`warren
//! hook post-receive`) tells the dispatcher what was pushed, for
//! repositories that live on a plain git server. Its notification goes
//! through the same parser as a forge's ([`crate::parse_push`]), so the
//! dispatcher has one way in for pushes.
//!
//! The hook reads git's `OLD NEW REF` lines on stdin
//! ([`parse_ref_updates`]), lists each update's commits with git
//! ([`RefUpdate::log_args`], read back by [`parse_log`]) and POSTs one
//! [`Notification`] per ref to `/hooks/{name}`:
//!
//! ```text
//! X-Warren-Event: push
//! X-Warren-Delivery: <first 32 hex digits of the body's SHA-256>
//! X-Warren-Signature: sha256=<hex HMAC-SHA256 of the body, keyed with the repository's webhook secret>
//! Content-Type: application/json
//!
//! {"ref": "refs/heads/main", "before": "<40 hex>", "after": "<40 hex>",
//!  "commits": [{"id": "<40 hex>", "subject": "…", "author": "…"}, …],   (oldest first)
//!  "truncated": false}
//! ```

use model::CommitId;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::hook::PushedCommit;
use crate::signature;

/// The most commits one notification lists (the newest ones, and then
/// `truncated` is set): about 2 MB of body, well under the receiver's 25
/// MiB. The dispatcher lists the rest from the repository.
pub const MAX_LISTED_COMMITS: usize = 10_000;

/// The fields of a commit as [`RefUpdate::log_args`] asks git to print
/// them: id, author name and subject, separated by the unit separator.
const LOG_FORMAT: &str = "--format=%H%x1f%an%x1f%s";

/// One line of git's input to `post-receive`: a ref moved from `before` to
/// `after` (all zeros: created, or deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    pub before: CommitId,
    pub after: CommitId,
    pub git_ref: String,
}

/// A line of the hook's input that is not `OLD NEW REF`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostReceiveError {
    #[error("line {line} of the hook's input: expected `OLD NEW REF`, got {text:?}")]
    Line { line: usize, text: String },
    #[error("line {line} of git log's output: expected `ID\\x1fAUTHOR\\x1fSUBJECT`")]
    Log { line: usize },
}

/// Reads git's `post-receive` input: one `OLD NEW REF` line per updated
/// ref. Blank lines are skipped.
pub fn parse_ref_updates(input: &str) -> Result<Vec<RefUpdate>, PostReceiveError> {
    let mut updates = Vec::new();
    for (index, text) in input.lines().enumerate() {
        if text.trim().is_empty() {
            continue;
        }
        let wrong = || PostReceiveError::Line {
            line: index + 1,
            text: text.chars().take(200).collect(),
        };
        let mut parts = text.split(' ');
        let (Some(before), Some(after), Some(git_ref), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(wrong());
        };
        let (Ok(before), Ok(after)) = (CommitId::parse(before), CommitId::parse(after)) else {
            return Err(wrong());
        };
        if !git_ref.starts_with("refs/") || git_ref.chars().any(char::is_control) {
            return Err(wrong());
        }
        updates.push(RefUpdate {
            before,
            after,
            git_ref: git_ref.to_string(),
        });
    }
    Ok(updates)
}

impl RefUpdate {
    /// The arguments of the `git log` that lists this update's commits,
    /// oldest first, for [`parse_log`]; `None` when there is nothing to
    /// list (a deleted ref).
    ///
    /// A new ref lists only its head, as the observer's first poll of a
    /// branch does: its other commits are the history it was made from.
    /// An update lists `before..after`, at most [`MAX_LISTED_COMMITS`] + 1
    /// of them (the newest: git applies the limit before `--reverse`), so
    /// [`notification`] can tell when the list is cut.
    pub fn log_args(&self) -> Option<Vec<String>> {
        let zero = |c: &CommitId| c.bytes().all(|b| b == b'0');
        if zero(&self.after) {
            return None;
        }
        let mut args = vec!["log".to_string(), LOG_FORMAT.to_string()];
        if zero(&self.before) {
            args.push("--max-count=1".to_string());
            args.push("--end-of-options".to_string());
            args.push(self.after.to_string());
        } else {
            args.push("--reverse".to_string());
            args.push(format!("--max-count={}", MAX_LISTED_COMMITS + 1));
            args.push("--end-of-options".to_string());
            args.push(format!("{}..{}", self.before, self.after));
        }
        Some(args)
    }
}

/// Reads what the `git log` of [`RefUpdate::log_args`] printed.
pub fn parse_log(output: &str) -> Result<Vec<PushedCommit>, PostReceiveError> {
    output
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(index, line)| {
            let mut fields = line.splitn(3, '\u{1f}');
            let (Some(id), Some(author), Some(subject)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(PostReceiveError::Log { line: index + 1 });
            };
            let id = CommitId::parse(id).map_err(|_| PostReceiveError::Log { line: index + 1 })?;
            let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
            Ok(PushedCommit {
                id,
                subject: text(subject),
                author: text(author),
            })
        })
        .collect()
}

/// A signed notification, ready to POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The exact bytes that were signed.
    pub body: Vec<u8>,
    /// `sha256=<hex>`.
    pub signature: String,
    /// The same for the same push, so a notification sent twice queues
    /// nothing twice.
    pub delivery: String,
}

impl Notification {
    /// Every header to send with the body.
    pub fn headers(&self) -> [(&'static str, String); 4] {
        [
            ("X-Warren-Event", "push".to_string()),
            ("X-Warren-Delivery", self.delivery.clone()),
            ("X-Warren-Signature", self.signature.clone()),
            ("Content-Type", "application/json".to_string()),
        ]
    }
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "ref")]
    git_ref: &'a str,
    before: &'a CommitId,
    after: &'a CommitId,
    commits: &'a [PushedCommit],
    truncated: bool,
}

/// The notification of one ref update with its commits (oldest first, as
/// [`parse_log`] gives them), signed with the repository's webhook
/// secret. More than [`MAX_LISTED_COMMITS`] commits keeps the newest and
/// marks the list truncated.
pub fn notification(update: &RefUpdate, commits: &[PushedCommit], secret: &[u8]) -> Notification {
    let (listed, truncated) = match commits.len().checked_sub(MAX_LISTED_COMMITS) {
        Some(extra) if extra > 0 => (&commits[extra..], true),
        _ => (commits, false),
    };
    let body = Body {
        git_ref: &update.git_ref,
        before: &update.before,
        after: &update.after,
        commits: listed,
        truncated,
    };
    let body = serde_json::to_vec(&body).expect("strings and ids always serialise");
    let delivery = Sha256::digest(&body)
        .iter()
        .take(16)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    Notification {
        signature: signature::sign(secret, &body),
        delivery,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const ZERO: &str = "0000000000000000000000000000000000000000";

    #[test]
    fn git_input_lines_are_read_and_bad_ones_named() {
        let input = format!("{A} {B} refs/heads/main\n\n{ZERO} {A} refs/tags/v1\n");
        let updates = parse_ref_updates(&input).expect("valid");
        assert_eq!(updates.len(), 2);
        assert_eq!(updates[0].git_ref, "refs/heads/main");
        assert_eq!(updates[1].before, ZERO);
        for bad in [
            format!("{A} {B}"),
            format!("{A} {B} refs/heads/main extra"),
            format!("{A} -x refs/heads/main"),
            format!("{A} {B} main"),
        ] {
            let err = parse_ref_updates(&bad).expect_err(&bad);
            assert!(
                err.to_string().starts_with("line 1 of the hook's input"),
                "{err}"
            );
        }
    }

    #[test]
    fn log_arguments_follow_the_kind_of_update() {
        let update = |before: &str, after: &str| RefUpdate {
            before: CommitId::parse(before).expect("id"),
            after: CommitId::parse(after).expect("id"),
            git_ref: "refs/heads/main".into(),
        };
        assert_eq!(update(A, ZERO).log_args(), None, "a deletion lists nothing");
        let created = update(ZERO, B).log_args().expect("args");
        assert_eq!(created[created.len() - 2..], ["--end-of-options", B]);
        assert!(created.contains(&"--max-count=1".to_string()));
        let moved = update(A, B).log_args().expect("args");
        assert!(moved.contains(&"--reverse".to_string()));
        assert_eq!(moved.last().expect("range"), &format!("{A}..{B}"));
    }

    #[test]
    fn a_long_list_keeps_the_newest_and_says_it_is_cut() {
        let update = RefUpdate {
            before: CommitId::parse(A).expect("id"),
            after: CommitId::parse(B).expect("id"),
            git_ref: "refs/heads/main".into(),
        };
        let commits: Vec<PushedCommit> = (0..MAX_LISTED_COMMITS + 1)
            .map(|n| PushedCommit {
                id: CommitId::parse(&format!("{n:040x}")).expect("id"),
                subject: None,
                author: None,
            })
            .collect();
        let cut = notification(&update, &commits, b"k");
        let body: serde_json::Value = serde_json::from_slice(&cut.body).expect("json");
        assert_eq!(body["truncated"], true);
        let listed = body["commits"].as_array().expect("commits");
        assert_eq!(listed.len(), MAX_LISTED_COMMITS);
        assert_eq!(listed[0]["id"], format!("{:040x}", 1));
        // The dispatcher's parser reads the flag: it lists the rest itself.
        let mut headers = http::HeaderMap::new();
        for (name, value) in cut.headers() {
            headers.insert(name, value.parse().expect("a header value"));
        }
        let delivery = crate::parse_push(&headers, &cut.body, b"k").expect("authentic");
        let crate::Event::Push(push) = delivery.event else {
            panic!("a push: {delivery:?}");
        };
        assert!(push.truncated);
        assert_eq!(push.commits.len(), MAX_LISTED_COMMITS);
        let whole = notification(&update, &commits[1..], b"k");
        let body: serde_json::Value = serde_json::from_slice(&whole.body).expect("json");
        assert_eq!(body["truncated"], false);
        assert_eq!(whole.delivery.len(), 32);
        assert_ne!(whole.delivery, cut.delivery);
    }
}
