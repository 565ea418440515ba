//! Where the store is: `sqlite:PATH` or `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`.
//!
//! A `StoreUrl` shows itself (Display and Debug alike) with the password
//! replaced by `***`, so printing one in a log line or an error cannot leak
//! it; the password itself only reaches the PostgreSQL driver's options.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::StoreError;

/// A parsed store URL. Its text form hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    kind: Kind,
    /// The URL as shown: the password replaced by `***`.
    shown: String,
}

#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Sqlite(PathBuf),
    Postgres(PostgresTarget),
}

/// The parts of a `postgres://` URL the driver needs.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PostgresTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub ssl_mode: SslMode,
}

/// `?sslmode=` as libpq spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

const SSL_MODES: [(&str, SslMode); 5] = [
    ("disable", SslMode::Disable),
    ("prefer", SslMode::Prefer),
    ("require", SslMode::Require),
    ("verify-ca", SslMode::VerifyCa),
    ("verify-full", SslMode::VerifyFull),
];

const HIDDEN: &str = "***";

impl StoreUrl {
    /// The SQLite store in `path` (the default is `<data-dir>/warren.db`).
    pub fn sqlite(path: impl Into<PathBuf>) -> StoreUrl {
        let path = path.into();
        StoreUrl {
            shown: format!("sqlite:{}", path.display()),
            kind: Kind::Sqlite(path),
        }
    }

    /// Parses `sqlite:PATH` (relative or absolute) or
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?sslmode=MODE]`
    /// (`postgresql://` too). The error never contains the password.
    pub fn parse(text: &str) -> Result<StoreUrl, StoreError> {
        let text = text.trim();
        if let Some(path) = text.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(invalid("sqlite:", "expected sqlite:PATH"));
            }
            if path.starts_with(":memory:") || path.starts_with("memory:") {
                return Err(invalid(
                    text,
                    "an in-memory database forgets everything: give a file path",
                ));
            }
            return Ok(StoreUrl::sqlite(path));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return parse_postgres(text);
        }
        // Only a scheme is shown: the rest may be a secret in the wrong place.
        let shown = match text.split_once(':') {
            Some((scheme, _))
                if !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                format!("{scheme}:…")
            }
            _ => "(not shown: it has no scheme)".to_string(),
        };
        Err(invalid(
            &shown,
            "expected sqlite:PATH or postgres://USER[:PASSWORD]@HOST[:PORT]/DB",
        ))
    }

    pub(crate) fn kind(&self) -> &Kind {
        &self.kind
    }

    /// The SQLite file, for a `sqlite:` URL.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Sqlite(path) => Some(path),
            Kind::Postgres(_) => None,
        }
    }

    /// Whether this is a PostgreSQL store.
    pub fn is_postgres(&self) -> bool {
        matches!(self.kind, Kind::Postgres(_))
    }

    /// The password, if any (to hide it in driver messages too).
    pub(crate) fn password(&self) -> Option<&str> {
        match &self.kind {
            Kind::Postgres(target) => target.password.as_deref(),
            Kind::Sqlite(_) => None,
        }
    }

    /// `text` with every occurrence of the password replaced by `***`:
    /// for messages that come from the driver or the server, which this
    /// crate does not write itself.
    pub(crate) fn hide_password_in(&self, text: &str) -> String {
        match self.password() {
            Some(password) if !password.is_empty() => text.replace(password, HIDDEN),
            _ => text.to_string(),
        }
    }
}

fn invalid(shown: &str, reason: &str) -> StoreError {
    StoreError::InvalidUrl {
        url: shown.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_postgres(text: &str) -> Result<StoreUrl, StoreError> {
    // What to show if parsing fails: no userinfo at all, since we do not
    // know yet where the password ends.
    let scheme = text.split_once("://").map_or("postgres", |(s, _)| s);
    let unparsed = format!("{scheme}://…");
    let url = url::Url::parse(text).map_err(|err| invalid(&unparsed, &err.to_string()))?;
    let mut shown_url = url.clone();
    let password = match url.password() {
        Some(encoded) if !encoded.is_empty() => {
            // `***` needs no escaping in a URL's userinfo.
            let _ = shown_url.set_password(Some(HIDDEN));
            Some(decode(encoded, &unparsed, "password")?)
        }
        _ => None,
    };
    let mut shown = shown_url.to_string();
    if let Some(password) = password.as_deref() {
        // Even where it is not the password (a database named alike).
        shown = shown.replace(password, HIDDEN);
    }
    let user = decode(url.username(), &shown, "user")?;
    if user.is_empty() {
        return Err(invalid(&shown, "expected a user: postgres://USER@HOST/DB"));
    }
    let host = match url.host() {
        Some(url::Host::Ipv6(address)) => address.to_string(),
        Some(host) => host.to_string(),
        None => return Err(invalid(&shown, "expected a host: postgres://USER@HOST/DB")),
    };
    let database = decode(url.path().trim_start_matches('/'), &shown, "database")?;
    if database.is_empty() || database.contains('/') {
        return Err(invalid(
            &shown,
            "expected one database name: postgres://USER@HOST/DB",
        ));
    }
    let mut ssl_mode = SslMode::Prefer;
    for (key, value) in url.query_pairs() {
        if key != "sslmode" {
            return Err(invalid(
                &shown,
                &format!("unknown parameter {key:?} (only sslmode is understood)"),
            ));
        }
        ssl_mode = SSL_MODES
            .iter()
            .find(|(word, _)| *word == value)
            .map(|(_, mode)| *mode)
            .ok_or_else(|| {
                invalid(
                    &shown,
                    "sslmode must be disable, prefer, require, verify-ca or verify-full",
                )
            })?;
    }
    Ok(StoreUrl {
        kind: Kind::Postgres(PostgresTarget {
            port: url.port().unwrap_or(5432),
            host,
            user,
            password,
            database,
            ssl_mode,
        }),
        shown,
    })
}

fn decode(encoded: &str, shown: &str, what: &str) -> Result<String, StoreError> {
    percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| invalid(shown, &format!("the {what} is not UTF-8 once decoded")))
}

impl FromStr for StoreUrl {
    type Err = StoreError;
    fn from_str(text: &str) -> Result<Self, StoreError> {
        StoreUrl::parse(text)
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({})", self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_take_any_path() {
        let url = StoreUrl::parse("sqlite:data/warren.db").expect("relative");
        assert_eq!(url.sqlite_path(), Some(Path::new("data/warren.db")));
        assert_eq!(url.to_string(), "sqlite:data/warren.db");
        let url = StoreUrl::parse("sqlite:/var/lib/warren/warren.db").expect("absolute");
        assert_eq!(
            url.sqlite_path(),
            Some(Path::new("/var/lib/warren/warren.db"))
        );
        assert!(StoreUrl::parse("sqlite:").is_err());
        assert!(StoreUrl::parse("sqlite::memory:").is_err());
    }

    #[test]
    fn postgres_urls_are_parsed_and_shown_without_their_password() {
        let url = StoreUrl::parse("postgres://warren:s3cr%40t@db.example:6543/ci?sslmode=require")
            .expect("parse");
        let Kind::Postgres(target) = url.kind() else {
            panic!("not postgres");
        };
        assert_eq!(target.user, "warren");
        assert_eq!(target.password.as_deref(), Some("s3cr@t"));
        assert_eq!((target.host.as_str(), target.port), ("db.example", 6543));
        assert_eq!(target.database, "ci");
        assert_eq!(target.ssl_mode, SslMode::Require);
        assert_eq!(
            url.to_string(),
            "postgres://warren:***@db.example:6543/ci?sslmode=require"
        );
        assert!(!format!("{url:?}").contains("s3cr"));

        let url = StoreUrl::parse("postgresql://u@[::1]/d").expect("ipv6");
        let Kind::Postgres(target) = url.kind() else {
            panic!("not postgres");
        };
        assert_eq!((target.host.as_str(), target.port), ("::1", 5432));
        assert_eq!(url.to_string(), "postgresql://u@[::1]/d");
    }

    #[test]
    fn bad_urls_are_refused_in_words_that_never_contain_the_password() {
        for (text, expected) in [
            ("postgres://hunter2secret@/db", "host"),
            ("postgres://:hunter2secret@h/db", "user"),
            ("postgres://u:hunter2secret@h/", "database"),
            ("postgres://u:hunter2secret@h/db?sslmode=maybe", "sslmode"),
            ("postgres://u:hunter2secret@h/db?foo=1", "foo"),
            ("postgres://u:hunter2secret@h:99999/db", "port"),
            ("mysql://u:hunter2secret@h/db", "expected sqlite:PATH"),
            ("hunter2secret", "expected sqlite:PATH"),
        ] {
            let err = StoreUrl::parse(text).expect_err(text).to_string();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(!err.contains("hunter2secret"), "{text}: {err}");
        }
    }
}
