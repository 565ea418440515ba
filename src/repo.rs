//! `warren repo`: the repository registry from the command line, through
//! the dispatcher's API (`/api/repos`). `apply` reads a TOML file of
//! `[[repo]]` tables with the same fields as `add`'s flags and makes the
//! registry hold them: run twice, it changes nothing the second time.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use model::repo::DEFAULT_POLL_SECS;
use model::{ForgeKind, Repo, RepoError, RepoName, RepoUrl, StatusTarget};
use serde::Deserialize;

use crate::cli::{parse_seconds, Server};
use crate::client::{or_dash, Client};

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Register a repository
    Add(AddArgs),
    /// The registered repositories
    List(ListArgs),
    /// Unregister a repository (its jobs stay)
    Remove(RemoveArgs),
    /// Make the registry hold the [[repo]] entries of a TOML file
    Apply(ApplyArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    #[command(flatten)]
    pub server: Server,
    /// Its name in Warren: [a-z0-9][a-z0-9._-]*
    pub name: String,
    /// Where to clone it from: a git URL or a path on the runners
    pub url: String,
    /// A branch to build, `*` and `**` allowed (release/*); repeat for
    /// several [default: the repository's HEAD branch]
    #[arg(long = "branch")]
    pub branches: Vec<String>,
    /// Seconds between polls [default: 60]
    #[arg(long, value_parser = parse_seconds, conflicts_with = "no_poll")]
    pub poll: Option<std::time::Duration>,
    /// Never poll: build on pushes (webhooks, post-receive) only
    #[arg(long)]
    pub no_poll: bool,
    /// The environment variable that holds its webhook secret (the
    /// observer's environment); without it, webhooks are refused
    #[arg(long)]
    pub webhook_secret_env: Option<String>,
    /// Report commit statuses to this forge
    #[arg(long, value_parser = parse_forge, requires_all = ["status_api", "status_repo", "status_token_env"])]
    pub status_kind: Option<ForgeKind>,
    /// The forge's API base URL (https://api.github.com,
    /// https://HOST/api/v1 for Gitea, https://HOST/api/v4 for GitLab)
    #[arg(long, requires = "status_kind")]
    pub status_api: Option<String>,
    /// OWNER/REPO (GitHub, Gitea) or the project's id (GitLab)
    #[arg(long, requires = "status_kind")]
    pub status_repo: Option<String>,
    /// The environment variable that holds the forge's token (the
    /// dispatcher's environment)
    #[arg(long, requires = "status_kind")]
    pub status_token_env: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub server: Server,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub server: Server,
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub server: Server,
    /// A TOML file of [[repo]] tables
    pub file: PathBuf,
}

fn parse_forge(word: &str) -> Result<ForgeKind, String> {
    word.parse()
}

pub async fn run(command: RepoCommand) -> anyhow::Result<ExitCode> {
    match command {
        RepoCommand::Add(args) => add(args).await,
        RepoCommand::List(args) => list(args).await,
        RepoCommand::Remove(args) => remove(args).await,
        RepoCommand::Apply(args) => apply(args).await,
    }
}

/// A field's error as the flag that set it (`--status-api: …`).
fn as_flag(error: RepoError) -> anyhow::Error {
    anyhow!("--{}: {}", error.field.replace('_', "-"), error.reason)
}

async fn add(args: AddArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let status = match (
        args.status_kind,
        args.status_api,
        args.status_repo,
        args.status_token_env,
    ) {
        (Some(kind), Some(api), Some(repo), Some(token_env)) => Some(StatusTarget {
            kind,
            api,
            repo,
            token_env,
        }),
        _ => None,
    };
    let repo = Repo {
        name: RepoName::parse(&args.name).map_err(|e| anyhow!("NAME: {}", e.reason))?,
        url: RepoUrl::parse(&args.url).map_err(|e| anyhow!("URL: {}", e.reason))?,
        branches: args.branches,
        poll_secs: if args.no_poll {
            None
        } else {
            Some(args.poll.map_or(DEFAULT_POLL_SECS, |d| d.as_secs_f64()))
        },
        webhook_secret_env: args.webhook_secret_env,
        status,
    };
    repo.validate().map_err(as_flag)?;
    let added: Repo = client
        .send(reqwest::Method::POST, "/api/repos", &repo)
        .await?;
    println!("registered {} ({})", added.name, added.url);
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let repos: Vec<Repo> = client.get("/api/repos").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&repos)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<40} {:<20} {:>6} {:<20} STATUS",
        "NAME", "URL", "BRANCHES", "POLL", "WEBHOOK SECRET"
    );
    for repo in &repos {
        let branches = if repo.branches.is_empty() {
            "(HEAD)".to_string()
        } else {
            repo.branches.join(",")
        };
        let poll = repo
            .poll_secs
            .map_or_else(|| "no".to_string(), |s| format!("{s}s"));
        let status = repo
            .status
            .as_ref()
            .map(|s| format!("{} {}", s.kind.as_str(), s.repo));
        println!(
            "{:<20} {:<40} {:<20} {:>6} {:<20} {}",
            repo.name,
            repo.url,
            branches,
            poll,
            or_dash(repo.webhook_secret_env.as_ref()),
            or_dash(status),
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn remove(args: RemoveArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let name = RepoName::parse(&args.name).map_err(|e| anyhow!("NAME: {}", e.reason))?;
    client.delete(&format!("/api/repos/{name}")).await?;
    println!("removed {name}");
    Ok(ExitCode::SUCCESS)
}

/// The TOML file: `[[repo]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    repo: Vec<RepoEntry>,
}

/// One `[[repo]]` table: `add`'s flags as keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RepoEntry {
    name: String,
    url: String,
    #[serde(default, alias = "branches")]
    branch: Vec<String>,
    /// Seconds, or `false` for no polling.
    #[serde(default)]
    poll: Option<Poll>,
    #[serde(default)]
    webhook_secret_env: Option<String>,
    #[serde(default)]
    status_kind: Option<String>,
    #[serde(default)]
    status_api: Option<String>,
    #[serde(default)]
    status_repo: Option<String>,
    #[serde(default)]
    status_token_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Poll {
    Seconds(f64),
    Enabled(bool),
}

impl RepoEntry {
    fn into_repo(self) -> Result<Repo, String> {
        let name = RepoName::parse(&self.name).map_err(|e| format!("name: {}", e.reason))?;
        let within = |message: String| format!("repo {name}: {message}");
        let url = RepoUrl::parse(&self.url).map_err(|e| within(format!("url: {}", e.reason)))?;
        let poll_secs = match self.poll {
            None | Some(Poll::Enabled(true)) => Some(DEFAULT_POLL_SECS),
            Some(Poll::Enabled(false)) => None,
            Some(Poll::Seconds(secs)) => Some(secs),
        };
        let status = match (
            self.status_kind,
            self.status_api,
            self.status_repo,
            self.status_token_env,
        ) {
            (None, None, None, None) => None,
            (Some(kind), Some(api), Some(repo), Some(token_env)) => Some(StatusTarget {
                kind: kind
                    .parse()
                    .map_err(|e| within(format!("status-kind: {e}")))?,
                api,
                repo,
                token_env,
            }),
            _ => {
                return Err(within(
                    "status-kind, status-api, status-repo and status-token-env go together".into(),
                ))
            }
        };
        let repo = Repo {
            name: name.clone(),
            url,
            branches: self.branch,
            poll_secs,
            webhook_secret_env: self.webhook_secret_env,
            status,
        };
        repo.validate()
            .map_err(|e| within(format!("{}: {}", e.field.replace('_', "-"), e.reason)))?;
        Ok(repo)
    }
}

/// Reads and checks a registry file: every entry valid, every name once.
fn read_registry(file: &std::path::Path) -> anyhow::Result<Vec<Repo>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed: RegistryFile =
        toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    let mut repos = Vec::with_capacity(parsed.repo.len());
    for entry in parsed.repo {
        let repo = entry
            .into_repo()
            .map_err(|e| anyhow!("{}: {e}", file.display()))?;
        if repos.iter().any(|r: &Repo| r.name == repo.name) {
            anyhow::bail!("{}: repo {} is listed twice", file.display(), repo.name);
        }
        repos.push(repo);
    }
    Ok(repos)
}

/// Puts every entry of the file; entries the registry holds already, as
/// they are, are left alone. Entries not in the file are kept.
async fn apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let wanted = read_registry(&args.file)?;
    let client = Client::new(&args.server)?;
    let held: Vec<Repo> = client.get("/api/repos").await?;
    for repo in wanted {
        let verb = match held.iter().find(|h| h.name == repo.name) {
            Some(existing) if *existing == repo => {
                println!("{}: unchanged", repo.name);
                continue;
            }
            Some(_) => "updated",
            None => "registered",
        };
        let _: Repo = client
            .send(
                reqwest::Method::PUT,
                &format!("/api/repos/{}", repo.name),
                &repo,
            )
            .await
            .with_context(|| format!("repo {}", repo.name))?;
        println!("{}: {verb}", repo.name);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("repos.toml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn a_registry_file_reads_with_the_flags_names() {
        let (_dir, path) = write(
            r#"
[[repo]]
name = "app"
url = "https://example.org/app.git"
branch = ["main", "release/*"]
poll = 30
webhook-secret-env = "APP_SECRET"
status-kind = "github"
status-api = "https://api.github.com"
status-repo = "me/app"
status-token-env = "GITHUB_TOKEN"

[[repo]]
name = "lib"
url = "/srv/git/lib.git"
poll = false
"#,
        );
        let repos = read_registry(&path).expect("valid");
        assert_eq!(repos.len(), 2);
        assert_eq!(repos[0].poll_secs, Some(30.0));
        assert_eq!(repos[0].branches, ["main", "release/*"]);
        assert_eq!(
            repos[0].status.as_ref().map(|s| s.kind),
            Some(ForgeKind::GitHub)
        );
        assert_eq!(repos[1].poll_secs, None);
        assert!(repos[1].branches.is_empty());
    }

    #[test]
    fn a_bad_registry_file_is_refused_naming_the_entry_and_field() {
        for (text, expected) in [
            ("[[repo]]\nname = \"App\"\nurl = \"/x\"\n", "name:"),
            (
                "[[repo]]\nname = \"a\"\nurl = \"/x\"\npoll = 0\n",
                "repo a: poll:",
            ),
            (
                "[[repo]]\nname = \"a\"\nurl = \"/x\"\nstatus-kind = \"github\"\n",
                "go together",
            ),
            ("[[repo]]\nname = \"a\"\nurl = \"/x\"\npol = 3\n", "pol"),
            (
                "[[repo]]\nname = \"a\"\nurl = \"/x\"\n[[repo]]\nname = \"a\"\nurl = \"/y\"\n",
                "listed twice",
            ),
        ] {
            let (_dir, path) = write(text);
            let error = read_registry(&path).expect_err(text).to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
