//! Identifiers that are valid by construction. Each wraps a `String` that
//! passed its rule; deserialising one checks the rule too, so a decoded
//! message cannot carry a commit id that git would read as an option, a
//! branch that is not a branch, or a job id that escapes a folder.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a value is not a valid identifier. Its text names the field as
/// messages call it (`invalid field commit: …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field {field}: {reason}")]
pub struct IdError {
    pub field: &'static str,
    pub reason: String,
}

impl IdError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        IdError {
            field,
            reason: reason.into(),
        }
    }
}

/// Declares a validated string newtype: construction (`parse`, `FromStr`,
/// `TryFrom<String>`, deserialisation) runs `$check`, and the value reads
/// back as `&str`.
macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $field:literal, $check:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The field name messages use for it, for errors.
            pub const FIELD: &'static str = $field;

            /// Checks `value` and wraps it.
            pub fn parse(value: &str) -> Result<Self, IdError> {
                $check(value).map_err(|reason| IdError::new($field, reason))?;
                Ok($name(value.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                $check(&value).map_err(|reason| IdError::new($field, reason))?;
                Ok($name(value))
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                $name::parse(value)
            }
        }

        /// Read-only: an identifier reads as the text it is.
        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

identifier!(
    /// A job's id: 1 to 128 letters, digits, `-`, `_` or `.`, never `.` or
    /// `..` (it names the job's log file). Warren's own ids are 16 hex
    /// digits made by [`crate::job_id`].
    JobId,
    "id",
    check_file_name
);

identifier!(
    /// A runner's id: the same rule as a job id (it ends up in logs and
    /// file names).
    RunnerId,
    "runner.id",
    check_file_name
);

identifier!(
    /// A full commit id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
    CommitId,
    "commit",
    check_commit
);

identifier!(
    /// A branch name that git's ref-format rules accept (`git
    /// check-ref-format --branch`) and that cannot be mistaken for an
    /// option.
    BranchName,
    "branch",
    check_branch
);

identifier!(
    /// Where a repository is: an absolute path, a URL with an allowed
    /// scheme (`https`, `http`, `ssh`, `git`, `file`), or scp-like
    /// `user@host:path`.
    RepoUrl,
    "repo",
    check_repo
);

identifier!(
    /// A registered repository's name: a lowercase letter or digit, then
    /// lowercase letters, digits, `.`, `_` or `-` (at most 100 in all). It
    /// names the repository in the API, in `/hooks/{name}` and in file
    /// names.
    RepoName,
    "name",
    check_repo_name
);

impl CommitId {
    /// Whether the id is a SHA-256 one (64 digits) rather than SHA-1.
    pub fn is_sha256(&self) -> bool {
        self.0.len() == 64
    }
}

impl BranchName {
    /// `main`, the branch a manual job of a commit is filed under when
    /// nothing says otherwise.
    pub fn main() -> BranchName {
        BranchName("main".to_string())
    }
}

impl RepoUrl {
    /// Whether it names a folder on this machine rather than a URL.
    pub fn is_local_path(&self) -> bool {
        self.0.starts_with('/')
    }
}

identifier!(
    /// A work queue's name as a pipeline job names it (`queue:`) and a
    /// runner serves it (`--queue`): a lowercase letter or digit, then
    /// lowercase letters, digits, '.', '_' or '-' (at most 64). `default`
    /// is the namespace's original work queue.
    QueueName,
    "queue",
    check_queue_name
);

impl QueueName {
    /// The queue a job goes to when it names none.
    pub const DEFAULT: &'static str = "default";

    pub fn is_default(&self) -> bool {
        self.0 == Self::DEFAULT
    }
}

impl Default for QueueName {
    fn default() -> Self {
        QueueName(Self::DEFAULT.to_string())
    }
}

fn check_queue_name(name: &str) -> Result<(), String> {
    check_lowercase_name(name, 64)
}

fn check_file_name(id: &str) -> Result<(), String> {
    let ok_chars = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if id.is_empty() || id.len() > 128 || !ok_chars || id == "." || id == ".." {
        return Err("expected 1 to 128 letters, digits, '-', '_' or '.'".into());
    }
    Ok(())
}

fn check_repo_name(name: &str) -> Result<(), String> {
    check_lowercase_name(name, 100)
}

/// A lowercase letter or digit, then lowercase letters, digits, '.', '_'
/// or '-': a name that is safe in a queue name, a file name and a URL.
fn check_lowercase_name(name: &str, max: usize) -> Result<(), String> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok = bytes.all(|b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-'
    });
    if first_ok && rest_ok && name.len() <= max {
        Ok(())
    } else {
        Err(format!("expected a lowercase letter or digit, then lowercase letters, digits, '.', '_' or '-' (at most {max}), got {name:?}"))
    }
}

fn check_commit(commit: &str) -> Result<(), String> {
    let hex = commit
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if (commit.len() == 40 || commit.len() == 64) && hex {
        Ok(())
    } else {
        Err("expected 40 or 64 lowercase hex digits".into())
    }
}

fn check_branch(branch: &str) -> Result<(), String> {
    let bad = |why: &str| Err(why.to_string());
    if branch.is_empty() || branch.len() > 255 {
        return bad("must be 1 to 255 bytes");
    }
    if branch.starts_with('-') {
        return bad("must not start with '-'");
    }
    if branch == "@" {
        return bad("must not be '@'");
    }
    if branch.starts_with('/') || branch.ends_with('/') || branch.contains("//") {
        return bad("must not start or end with '/' or contain '//'");
    }
    if branch.ends_with('.') || branch.contains("..") || branch.contains("@{") {
        return bad("must not end with '.' or contain '..' or '@{'");
    }
    if branch
        .chars()
        .any(|c| c.is_control() || " ~^:?*[\\".contains(c))
    {
        return bad("must not contain spaces, control characters or any of ~^:?*[\\");
    }
    for component in branch.split('/') {
        if component.starts_with('.') || component.ends_with(".lock") {
            return bad("no component may start with '.' or end with '.lock'");
        }
    }
    Ok(())
}

fn check_repo(repo: &str) -> Result<(), String> {
    if repo.is_empty() || repo.len() > 4096 {
        return Err("must be 1 to 4096 bytes".into());
    }
    if repo.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    if repo.starts_with('-') {
        return Err("must not start with '-'".into());
    }
    if repo.starts_with('/') {
        return Ok(());
    }
    if let Some((scheme, _)) = repo.split_once("://") {
        return if ["https", "http", "ssh", "git", "file"].contains(&scheme) {
            Ok(())
        } else {
            Err(format!(
                "scheme {scheme:?} is not one of https, http, ssh, git, file"
            ))
        };
    }
    if let Some((user_host, _)) = repo.split_once(':') {
        if user_host.contains('@') && !user_host.contains('/') {
            return Ok(());
        }
    }
    Err("expected an absolute path or a URL (https, http, ssh, git, file)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn commits_must_be_full_lowercase_hex() {
        assert!(CommitId::parse(COMMIT).is_ok());
        assert!(CommitId::parse(&"a".repeat(64))
            .expect("sha256")
            .is_sha256());
        for bad in [
            "",
            "abc",
            "--upload-pack=x",
            &"g".repeat(40),
            &"A".repeat(40),
        ] {
            let err = CommitId::parse(bad).expect_err(bad);
            assert_eq!(err.field, "commit");
        }
    }

    #[test]
    fn branches_follow_ref_format() {
        for good in ["main", "feature/x", "release-1.2", "a_b"] {
            assert!(BranchName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-x",
            "--upload-pack=touch",
            "a..b",
            "a b",
            "x; touch /tmp/pwned",
            ".hidden",
            "a/.b",
            "x.lock",
            "a//b",
            "/a",
            "a/",
            "a~1",
            "a^",
            "a:b",
            "@",
            "a@{1}",
            "end.",
        ] {
            assert!(BranchName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repos_are_paths_or_allowed_urls() {
        for good in [
            "/srv/git/repo",
            "https://example.org/r.git",
            "ssh://git@host/r",
            "git@host:org/r.git",
            "file:///srv/r",
        ] {
            assert!(RepoUrl::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "relative/path",
            "-uhttps://x",
            "ext::sh -c touch",
            "fd::1",
            "javascript://x",
        ] {
            assert!(RepoUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(RepoUrl::parse("/srv/r").expect("path").is_local_path());
    }

    #[test]
    fn repository_names_are_lowercase_words() {
        for good in ["app", "app-2", "my.lib_x", "0day"] {
            assert!(RepoName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "App", "-x", ".x", "a/b", "a b", &"x".repeat(101)] {
            assert!(RepoName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_cannot_escape_a_folder() {
        for bad in [
            "",
            "..",
            ".",
            "../x",
            "/abs",
            "a/b",
            "nul\0",
            &"x".repeat(129),
        ] {
            assert!(JobId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(RunnerId::parse("runner-1.host_2").is_ok());
    }

    #[test]
    fn deserialising_checks_the_rule_and_names_the_field() {
        let ok: CommitId = serde_json::from_str(&format!("\"{COMMIT}\"")).expect("valid");
        assert_eq!(ok, COMMIT);
        let err = serde_json::from_str::<BranchName>("\"-x\"").expect_err("invalid");
        assert!(
            err.to_string().starts_with("invalid field branch: "),
            "{err}"
        );
        assert_eq!(
            serde_json::to_string(&ok).expect("json"),
            format!("\"{COMMIT}\"")
        );
    }
}
