//! `warren hook post-receive`: installed as a bare repository's
//! `post-receive` hook, it tells the observer what was pushed, for
//! self-hosted repositories without a forge.
//!
//! git gives the hook one `OLD NEW REF` line per updated ref on stdin,
//! and runs it in the repository. For each ref the hook lists the pushed
//! commits (`forge::post_receive`), signs the notification with the
//! repository's webhook secret and posts it to `POST /hooks/NAME`, as a
//! forge would. The push has happened whatever the hook does; a failure
//! is printed for the pusher and makes the exit status non-zero, and the
//! next poll (if the repository is polled) picks the commits up.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use forge::post_receive::{notification, parse_log, parse_ref_updates};
use git::Git;
use tokio::io::AsyncReadExt;

use crate::cli::{parse_http_url, secret, GitArgs};

/// How long the observer gets to answer one notification (it answers
/// within 10 s, as forges require).
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

/// Largest hook input read: far more than any push's ref lines.
const MAX_INPUT_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, Subcommand)]
pub enum HookCommand {
    /// Read git's post-receive input and notify the observer
    PostReceive(PostReceiveArgs),
}

#[derive(Debug, Clone, Args)]
pub struct PostReceiveArgs {
    /// Where the observer receives webhooks (its --hooks-http)
    #[arg(long, env = "WARREN_HOOKS_URL", default_value = "http://127.0.0.1:8081", value_parser = parse_http_url)]
    pub server: String,

    /// The repository's name in the registry
    #[arg(long, value_parser = parse_repo_name)]
    pub repo: model::RepoName,

    /// The environment variable holding the repository's webhook secret
    /// (or NAME_FILE, a file holding it): the registry's
    /// --webhook-secret-env for this repository
    #[arg(long, default_value = "WARREN_HOOK_SECRET")]
    pub secret_env: String,

    #[command(flatten)]
    pub git: GitArgs,
}

fn parse_repo_name(text: &str) -> Result<model::RepoName, String> {
    model::RepoName::parse(text).map_err(|e| e.to_string())
}

pub async fn run(command: HookCommand) -> anyhow::Result<ExitCode> {
    match command {
        HookCommand::PostReceive(args) => post_receive(args).await,
    }
}

async fn post_receive(args: PostReceiveArgs) -> anyhow::Result<ExitCode> {
    let secret = secret(&args.secret_env)
        .map_err(anyhow::Error::msg)?
        .ok_or_else(|| anyhow!("--secret-env: {} is not set", args.secret_env))?;
    let mut input = String::new();
    tokio::io::stdin()
        .take(MAX_INPUT_BYTES)
        .read_to_string(&mut input)
        .await
        .context("reading git's input")?;
    let updates = parse_ref_updates(&input)?;
    let repository = std::env::current_dir().context("finding the repository")?;
    let git = Git::new(repository).with_timeout(args.git.git_timeout);
    let http = reqwest::Client::builder()
        .timeout(ANSWER_WITHIN)
        .build()
        .context("building the HTTP client")?;
    let url = format!("{}/hooks/{}", args.server.trim_end_matches('/'), args.repo);
    let mut failed = false;
    for update in updates {
        let commits = match update.log_args() {
            None => Vec::new(),
            Some(log) => {
                let log: Vec<&str> = log.iter().map(String::as_str).collect();
                let listed = git
                    .run(&log)
                    .await
                    .with_context(|| format!("listing the commits of {}", update.git_ref))?;
                parse_log(&listed)?
            }
        };
        let note = notification(&update, &commits, secret.as_bytes());
        let mut request = http.post(&url).body(note.body.clone());
        for (name, value) in note.headers() {
            request = request.header(name, value);
        }
        match request.send().await {
            Ok(answer) => {
                let status = answer.status();
                let text = answer.text().await.unwrap_or_default();
                eprintln!("warren: {}: {status} {}", update.git_ref, text.trim());
                failed |= !status.is_success();
            }
            Err(err) => {
                eprintln!(
                    "warren: {}: cannot reach {url}: {}",
                    update.git_ref,
                    err.without_url()
                );
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
