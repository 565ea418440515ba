//! The client commands (`status`, `show`, `log`, `rerun`, `cancel`,
//! `trigger`, `runners`): thin callers of the dispatcher's HTTP API,
//! reading and writing the same types the dispatcher serves
//! (`model::api`). `show` and `log` exit non-zero unless the job (or the
//! commit's verdict) passed, so scripts can use them.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use model::api::{
    CancelAnswer, CommitView, ErrorBody, JobView, Queued, RerunAnswer, RunnerView, TriggerRequest,
};
use model::{BranchName, JobStatus};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cli::{
    secret, CancelArgs, LogArgs, RerunArgs, RunnersArgs, Server, ShowArgs, StatusArgs, TriggerArgs,
};

pub(crate) struct Client {
    pub(crate) base: String,
    http: reqwest::Client,
    /// WARREN_API_TOKEN (or its file), sent with every request when set.
    token: Option<String>,
}

impl Client {
    pub(crate) fn new(server: &Server) -> anyhow::Result<Client> {
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
        let message = match serde_json::from_str::<ErrorBody>(&body) {
            Ok(error) => match error.commits {
                Some(commits) => format!("{} ({})", error.error, commits.join(", ")),
                None => error.error,
            },
            Err(_) => body.trim().to_string(),
        };
        bail!("{status}: {message}")
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
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

    pub(crate) async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(reqwest::Method::POST, path, body).await
    }

    /// A request with a JSON body, and its JSON answer.
    pub(crate) async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let response = self
            .request(self.http.request(method, url).json(body))
            .await?;
        response
            .json()
            .await
            .context("reading the dispatcher's answer")
    }

    /// A `DELETE`, whose answer has no body.
    pub(crate) async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.request(self.http.delete(format!("{}{path}", self.base)))
            .await?;
        Ok(())
    }
}

/// A query parameter's value, escaped (a repository may be a URL).
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn duration(job: &JobView) -> String {
    job.record
        .duration_ms
        .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
        .unwrap_or_else(|| "-".into())
}

fn passed(job: &JobView) -> ExitCode {
    if job.record.status == JobStatus::Passed {
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
    if let Some(repo) = &args.repo {
        path.push_str(&format!("&repo={}", percent_encode(repo)));
    }
    if let Some(branch) = &args.branch {
        BranchName::parse(branch).map_err(|e| anyhow!("--branch: {e}"))?;
        path.push_str(&format!("&branch={branch}"));
    }
    let jobs: Vec<JobView> = client.get(&path).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<17} {:<8} {:<16} {:<10} {:>8} {:<8} {:<20} SUBJECT",
        "JOB", "STATUS", "BRANCH", "COMMIT", "TIME", "ATTEMPTS", "RUNNER"
    );
    for job in &jobs {
        let record = &job.record;
        println!(
            "{:<17} {:<8} {:<16} {:<10} {:>8} {:<8} {:<20} {}",
            record.id,
            record.status,
            record.branch,
            &record.commit[..10],
            duration(job),
            record.attempts,
            or_dash(record.runner.as_ref()),
            record.subject.as_deref().unwrap_or(""),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Path segment for a commit (a plain word; refuse others).
fn commit_path(commit: &str) -> anyhow::Result<String> {
    model::JobId::parse(commit)
        .map_err(|_| anyhow!("expected a full or abbreviated commit id, got {commit:?}"))?;
    Ok(format!("/api/commits/{commit}"))
}

/// Whether `key` names a job by its id (rather than a commit, whose
/// newest job the API gives for it).
async fn names_a_job(client: &Client, key: &str) -> anyhow::Result<bool> {
    let job: JobView = client.get(&job_path(key)?).await?;
    Ok(job.record.id.as_str() == key)
}

/// A commit's pipeline: its verdict, then one line per job.
fn print_commit(view: &CommitView) {
    println!("{:<12} {}", "commit", view.commit);
    println!("{:<12} {}", "repo", view.repo);
    println!("{:<12} {}", "branch", view.branch);
    println!("{:<12} {}", "status", view.status);
    println!("{:<12} {}", "pipeline", view.pipeline);
    println!();
    let width = view
        .jobs
        .iter()
        .map(|job| job.record.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    println!(
        "{:<width$} {:<17} {:<8} {:<12} {:>8} {:<16} WHY",
        "NAME", "JOB", "STATUS", "QUEUE", "TIME", "NEEDS"
    );
    for job in &view.jobs {
        let record = &job.record;
        let needs = if record.needs.is_empty() {
            "-".to_string()
        } else {
            record.needs.join(",")
        };
        let why = job
            .waiting_reason
            .as_deref()
            .or(record.reason.as_deref())
            .unwrap_or("");
        println!(
            "{:<width$} {:<17} {:<8} {:<12} {:>8} {:<16} {}",
            record.name,
            record.id,
            record.status,
            record.queue,
            duration(job),
            needs,
            why,
        );
    }
}

pub async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let job: JobView = client.get(&job_path(&args.job)?).await?;
    if job.record.id.as_str() != args.job {
        // A commit: its newest pipeline. A commit without a pipeline file
        // has one job, shown as a job.
        let view: CommitView = client.get(&commit_path(&args.job)?).await?;
        let single = view.jobs.len() == 1 && view.jobs[0].record.id == view.pipeline;
        if !single {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print_commit(&view);
            }
            return Ok(if view.status == model::Verdict::Passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&job)?);
        return Ok(passed(&job));
    }
    let record = &job.record;
    let rows: [(&str, String); 16] = [
        ("id", record.id.to_string()),
        ("status", record.status.to_string()),
        ("repo", record.repo.to_string()),
        ("branch", record.branch.to_string()),
        ("commit", record.commit.to_string()),
        ("subject", or_dash(record.subject.as_ref())),
        ("author", or_dash(record.author.as_ref())),
        ("runner", or_dash(record.runner.as_ref())),
        ("attempts", record.attempts.to_string()),
        ("duplicates", record.duplicates.to_string()),
        ("enqueued_at", or_dash(job.enqueued_at.as_ref())),
        ("started_at", or_dash(job.started_at.as_ref())),
        ("finished_at", or_dash(job.finished_at.as_ref())),
        ("exit_code", or_dash(record.exit_code)),
        ("reason", or_dash(record.reason.as_ref())),
        ("truncated", record.truncated.to_string()),
    ];
    for (key, value) in rows {
        println!("{key:<12} {value}");
    }
    println!("{:<12} {}", "duration", duration(&job));
    println!("{:<12} {}{}", "log", client.base, job.log_url);
    Ok(passed(&job))
}

pub async fn log(args: LogArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let path = job_path(&args.job)?;
    let log_path = format!("{path}/log");
    let mut job: JobView = client.get(&path).await?;
    if !args.follow {
        print!("{}", client.get_text(&log_path).await?);
        return Ok(passed(&job));
    }
    // While the job runs, its log is what the runner has passed on so far
    // (with each heartbeat); print what each poll adds, and at the end what
    // the recorded log adds to that.
    let mut printed = String::new();
    loop {
        let running = !job.record.status.is_terminal();
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
        job = client.get(&path).await?;
    }
}

pub async fn rerun(args: RerunArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    if args.failed {
        let answer: RerunAnswer = client
            .post(
                &format!("{}/rerun?failed=true", commit_path(&args.job)?),
                &(),
            )
            .await?;
        println!(
            "running {} job(s) again in pipeline {}:",
            answer.jobs.len(),
            answer.pipeline
        );
        for job in &answer.jobs {
            println!(
                "  {} {} ({})",
                job.record.id, job.record.name, job.record.status
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let answer: Queued = client
        .post(&format!("{}/rerun", job_path(&args.job)?), &())
        .await?;
    println!(
        "queued job {} (rerun of {})",
        answer.id,
        or_dash(answer.rerun_of)
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(args: CancelArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let path = if names_a_job(&client, &args.target).await? {
        format!("{}/cancel", job_path(&args.target)?)
    } else {
        format!("{}/cancel", commit_path(&args.target)?)
    };
    let answer: CancelAnswer = client.post(&path, &()).await?;
    for id in &answer.canceled {
        println!("canceled job {id}");
    }
    for id in &answer.skipped {
        println!("skipped job {id}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn trigger(args: TriggerArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let request = TriggerRequest {
        target: args.target,
        branch: args.branch,
        repo: args.repo,
    };
    let answer: Queued = client.post("/api/trigger", &request).await?;
    println!(
        "queued job {} for {} on {}",
        answer.id,
        or_dash(answer.commit),
        or_dash(answer.branch)
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn runners(args: RunnersArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let runners: Vec<RunnerView> = client.get("/api/runners").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runners)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<8} {:<20} {:<7} {:<17} {:>9} LAST SEEN",
        "RUNNER", "STATE", "HOST", "SANDBOX", "CURRENT JOB", "JOBS DONE"
    );
    for runner in &runners {
        println!(
            "{:<24} {:<8} {:<20} {:<7} {:<17} {:>9} {}",
            runner.record.id,
            if runner.online { "online" } else { "offline" },
            runner.record.host,
            runner.record.sandbox,
            or_dash(runner.record.current_job.as_ref()),
            runner.record.jobs_done,
            or_dash(runner.last_seen.as_ref()),
        );
    }
    Ok(ExitCode::SUCCESS)
}
