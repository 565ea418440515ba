//! The client commands (`status`, `show`, `log`, `rerun`, `trigger`,
//! `runners`): thin callers of the dispatcher's HTTP API. `show` and `log`
//! exit non-zero unless the job passed, so scripts can use them.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

use crate::cli::{
    secret, LogArgs, RerunArgs, RunnersArgs, Server, ShowArgs, StatusArgs, TriggerArgs,
};

struct Client {
    base: String,
    http: reqwest::Client,
    /// WARREN_API_TOKEN (or its file), sent with every request when set.
    token: Option<String>,
}

impl Client {
    fn new(server: &Server) -> anyhow::Result<Client> {
        Ok(Client {
            base: server.server.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            token: secret("WARREN_API_TOKEN").map_err(anyhow::Error::msg)?,
        })
    }

    async fn request(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the dispatcher at {} ({})",
                self.base,
                e.without_url()
            )
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| body.trim().to_string());
        bail!("{status}: {message}")
    }

    async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let response = self
            .request(self.http.get(format!("{}{path}", self.base)))
            .await?;
        response
            .json()
            .await
            .context("reading the dispatcher's answer")
    }

    async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let response = self
            .request(self.http.get(format!("{}{path}", self.base)))
            .await?;
        Ok(response.text().await?)
    }

    async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let response = self
            .request(self.http.post(format!("{}{path}", self.base)).json(body))
            .await?;
        response
            .json()
            .await
            .context("reading the dispatcher's answer")
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn duration(job: &Value) -> String {
    job["duration_ms"]
        .as_i64()
        .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
        .unwrap_or_else(|| "-".into())
}

fn short(commit: &Value) -> String {
    commit
        .as_str()
        .map(|c| c.chars().take(10).collect())
        .unwrap_or_default()
}

fn passed(job: &Value) -> ExitCode {
    if job["status"] == "passed" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Path segment for a job id or commit (they are plain words; refuse others).
fn job_path(job: &str) -> anyhow::Result<String> {
    model::JobId::parse(job)
        .map_err(|_| anyhow!("JOB: expected a job id or commit id, got {job:?}"))?;
    Ok(format!("/api/jobs/{job}"))
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let mut path = format!("/api/jobs?limit={}", args.limit);
    if let Some(status) = &args.status {
        path.push_str(&format!("&status={status}"));
    }
    if let Some(branch) = &args.branch {
        model::BranchName::parse(branch).map_err(|e| anyhow!("--branch: {e}"))?;
        path.push_str(&format!("&branch={branch}"));
    }
    let jobs = client.get_json(&path).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<17} {:<8} {:<16} {:<10} {:>8} {:<8} {:<20} SUBJECT",
        "JOB", "STATUS", "BRANCH", "COMMIT", "TIME", "ATTEMPTS", "RUNNER"
    );
    for job in jobs.as_array().into_iter().flatten() {
        println!(
            "{:<17} {:<8} {:<16} {:<10} {:>8} {:<8} {:<20} {}",
            text(&job["id"]),
            text(&job["status"]),
            text(&job["branch"]),
            short(&job["commit"]),
            duration(job),
            text(&job["attempts"]),
            text(&job["runner"]),
            job["subject"].as_str().unwrap_or(""),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let job = client.get_json(&job_path(&args.job)?).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    } else {
        for key in [
            "id",
            "status",
            "repo",
            "branch",
            "commit",
            "subject",
            "author",
            "runner",
            "attempts",
            "duplicates",
            "enqueued_at",
            "started_at",
            "finished_at",
            "exit_code",
            "reason",
            "truncated",
        ] {
            println!("{key:<12} {}", text(&job[key]));
        }
        println!("{:<12} {}", "duration", duration(&job));
        println!("{:<12} {}{}", "log", client.base, text(&job["log_url"]));
    }
    Ok(passed(&job))
}

pub async fn log(args: LogArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let path = job_path(&args.job)?;
    let log_path = format!("{path}/log");
    let mut job = client.get_json(&path).await?;
    if !args.follow {
        print!("{}", client.get_text(&log_path).await?);
        return Ok(passed(&job));
    }
    // While the job runs, its log is what the runner has passed on so far
    // (with each heartbeat); print what each poll adds, and at the end what
    // the recorded log adds to that.
    let mut printed = String::new();
    loop {
        let running = matches!(job["status"].as_str(), Some("queued" | "running"));
        let log = client.get_text(&log_path).await?;
        match log.strip_prefix(printed.as_str()) {
            Some(new) => print!("{new}"),
            None if running => {
                eprintln!("warren: the job started again; its output from the start:");
                print!("{log}");
            }
            None => {
                eprintln!(
                    "warren: the recorded log differs from the live output; here it is whole:"
                );
                print!("{log}");
            }
        }
        std::io::Write::flush(&mut std::io::stdout())?;
        printed = log;
        if !running {
            return Ok(passed(&job));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        job = client.get_json(&path).await?;
    }
}

pub async fn rerun(args: RerunArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let answer = client
        .post_json(&format!("{}/rerun", job_path(&args.job)?), &Value::Null)
        .await?;
    println!(
        "queued job {} (rerun of {})",
        text(&answer["id"]),
        text(&answer["rerun_of"])
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn trigger(args: TriggerArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let body =
        serde_json::json!({ "target": args.target, "branch": args.branch, "repo": args.repo });
    let answer = client.post_json("/api/trigger", &body).await?;
    println!(
        "queued job {} for {} on {}",
        text(&answer["id"]),
        text(&answer["commit"]),
        text(&answer["branch"])
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn runners(args: RunnersArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let runners = client.get_json("/api/runners").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runners)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<8} {:<20} {:<17} {:>9} LAST SEEN",
        "RUNNER", "STATE", "HOST", "CURRENT JOB", "JOBS DONE"
    );
    for runner in runners.as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<8} {:<20} {:<17} {:>9} {}",
            text(&runner["id"]),
            if runner["online"] == true {
                "online"
            } else {
                "offline"
            },
            text(&runner["host"]),
            text(&runner["current_job"]),
            text(&runner["jobs_done"]),
            text(&runner["last_seen"]),
        );
    }
    Ok(ExitCode::SUCCESS)
}
