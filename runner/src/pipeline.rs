//! The `jobs:` section of a repository's `.warren.yml`: the pipeline a
//! planning job returns as a [`model::Plan`].
//!
//! ```yaml
//! jobs:
//!   lint:
//!     run: cargo clippy -- -D warnings
//!   test:
//!     run: cargo test
//!     needs: [lint]
//!     matrix:
//!       toolchain: [stable, beta]
//!       features: [default, all]
//!     env: {RUST_BACKTRACE: "1"}
//!     timeout: 10m
//!     queue: linux-x86
//!   docs:
//!     run: make docs
//!     needs: [test]
//!     allow_failure: true
//!     branches: [main, "release/*"]
//! ```
//!
//! - A job with a `matrix` runs once per combination of its values; each
//!   combination is a job of its own, named after the job and its values
//!   in the order the keys are written (`test (stable, all)`, the first key
//!   varying slowest), with `MATRIX_<KEY>` in its environment.
//! - `needs` names jobs as the file writes them; a need on a matrix job is
//!   a need on every one of its combinations.
//! - `branches` are patterns in which `*` matches any run of characters,
//!   `/` included. A job none of whose patterns matches the commit's branch
//!   is left out of the plan, and a need on a left-out job is dropped from
//!   its dependents' needs: they run without waiting for it (as if it had
//!   passed), rather than being left out or skipped with it. So `docs`,
//!   needing a `deploy` that only runs on `main`, still runs on a feature
//!   branch.
//! - Whether a file is valid does not depend on the branch: every job is
//!   checked (needs, cycles, limits, the expanded plan with
//!   [`Plan::validate`]) before `branches` are applied, so a broken file
//!   fails on every branch, not first on `main`.
//!
//! Every error names the line and the field (`.warren.yml is not valid:
//! line 7: jobs.test.timeout: "10x" is not a duration`). Structural errors
//! (unknown fields, a missing `run`, wrong types) come from the YAML parser
//! with its location; the others find the line of the job's key, or of the
//! field under it, by reading the text (block style; a job written in flow
//! style is located at its key, or at `jobs:`).

use std::collections::{BTreeMap, HashMap};

use model::pipeline::{
    is_env_name, JobSpec, Plan, PlanError, MAX_MATRIX_COMBINATIONS, MAX_PIPELINE_JOBS,
};
use model::split::{FlakyPolicy, SplitPart};
use model::QueueName;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_norway::Value;

use crate::repo_files::REPO_CONFIG_FILE;

/// The `jobs:` section as the parser reads it: job keys in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RawJobs(Vec<(String, RawJob)>);

/// One job as written. The fields whose errors the parser cannot word
/// well (durations, queues, matrices, env) are kept as YAML values and
/// checked by [`Pipeline::build`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a job: a map with run or split (and needs, matrix, env, timeout, queue, allow_failure, branches)"
)]
pub(crate) struct RawJob {
    #[serde(default)]
    run: Option<String>,
    /// Test splitting (issue 18): list the tests, run them in batches.
    #[serde(default)]
    split: Option<RawSplit>,
    #[serde(default)]
    needs: Vec<String>,
    #[serde(default)]
    matrix: Option<Value>,
    #[serde(default)]
    env: Option<Value>,
    #[serde(default)]
    timeout: Option<Value>,
    #[serde(default)]
    queue: Option<Value>,
    #[serde(default)]
    allow_failure: bool,
    #[serde(default)]
    branches: Option<Vec<String>>,
}

/// A job's `split:` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a split: a map with list and run (and parallel)"
)]
pub(crate) struct RawSplit {
    list: String,
    run: String,
    #[serde(default)]
    parallel: Option<u32>,
}

impl<'de> Deserialize<'de> for RawJobs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Jobs;
        impl<'de> Visitor<'de> for Jobs {
            type Value = RawJobs;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of job names to jobs")
            }

            fn visit_unit<E: de::Error>(self) -> Result<RawJobs, E> {
                Ok(RawJobs::default())
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawJobs, A::Error> {
                let mut jobs: Vec<(String, RawJob)> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if jobs.iter().any(|(written, _)| *written == name) {
                        return Err(de::Error::custom(format!(
                            "the job {name:?} is written twice"
                        )));
                    }
                    let job = map.next_value::<RawJob>()?;
                    jobs.push((name, job));
                }
                Ok(RawJobs(jobs))
            }
        }
        deserializer.deserialize_map(Jobs)
    }
}

/// A pipeline read from `.warren.yml`: every job, matrices expanded,
/// checked. [`Pipeline::for_branch`] gives the plan for one branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    jobs: Vec<PipelineJob>,
    /// `cancel_superseded: true` at the top of `.warren.yml` (set by
    /// [`crate::repo_files::RepoConfig::parse`]): each plan made from this
    /// pipeline asks the dispatcher to cancel the older pipelines of its
    /// branch that have not ended.
    pub(crate) cancel_superseded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PipelineJob {
    spec: JobSpec,
    /// None: every branch.
    branches: Option<Vec<String>>,
}

impl Pipeline {
    /// Checks the jobs read from `text` and expands their matrices. Err:
    /// the reason, naming the line and the field.
    pub(crate) fn build(raw: RawJobs, text: &str) -> Result<Pipeline, String> {
        let at = Locator::new(text);
        let jobs = raw.0;
        if jobs.is_empty() {
            return Err(at.error(at.jobs(), "jobs", "the pipeline has no jobs"));
        }
        let written: HashMap<&str, &RawJob> = jobs
            .iter()
            .map(|(name, job)| (name.as_str(), job))
            .collect();
        for (name, job) in &jobs {
            for need in &job.needs {
                if !written.contains_key(need.as_str()) {
                    return Err(at.error(
                        at.field(name, "needs"),
                        &format!("jobs.{name}.needs"),
                        &format!("{need:?} is not a job of the pipeline"),
                    ));
                }
            }
        }
        if let Some(cycle) = find_cycle(&jobs) {
            return Err(at.error(
                at.field(&cycle[0], "needs"),
                &format!("jobs.{}.needs", cycle[0]),
                &format!("jobs {} need each other in a cycle", cycle.join(" → ")),
            ));
        }

        // Each job's combinations, checked, then the expanded names.
        let mut expanded: Vec<(String, Vec<Combination>)> = Vec::new();
        let mut total = 0usize;
        for (name, job) in &jobs {
            let combinations = match &job.matrix {
                None => vec![Vec::new()],
                Some(value) => matrix(value).map_err(|reason| {
                    at.error(
                        at.field(name, "matrix"),
                        &format!("jobs.{name}.matrix"),
                        &reason,
                    )
                })?,
            };
            total += combinations.len();
            if total > MAX_PIPELINE_JOBS {
                return Err(at.error(
                    at.job(name),
                    &format!("jobs.{name}"),
                    &format!(
                        "the pipeline has more than {MAX_PIPELINE_JOBS} jobs (each combination of a matrix is a job)"
                    ),
                ));
            }
            expanded.push((name.clone(), combinations));
        }
        let names: HashMap<&str, Vec<String>> = expanded
            .iter()
            .map(|(name, combinations)| {
                let names = combinations
                    .iter()
                    .map(|values| job_name(name, values))
                    .collect();
                (name.as_str(), names)
            })
            .collect();

        let mut out = Vec::new();
        // The written job each expanded name comes from, for errors.
        let mut origin: Vec<(String, String)> = Vec::new();
        for ((name, job), (_, combinations)) in jobs.iter().zip(&expanded) {
            let field = |field: &str, reason: String| {
                at.error(
                    at.field(name, field),
                    &format!("jobs.{name}.{field}"),
                    &reason,
                )
            };
            let env = match &job.env {
                None => BTreeMap::new(),
                Some(value) => env(value).map_err(|reason| field("env", reason))?,
            };
            let timeout_ms = match &job.timeout {
                None => None,
                Some(value) => Some(timeout_ms(value).map_err(|reason| field("timeout", reason))?),
            };
            let queue = match &job.queue {
                None => QueueName::default(),
                Some(value) => queue(value).map_err(|reason| field("queue", reason))?,
            };
            if let Some(patterns) = &job.branches {
                if patterns.is_empty() {
                    return Err(field(
                        "branches",
                        "an empty list: the job would never run (leave branches out to run it on every branch)".into(),
                    ));
                }
                if patterns.iter().any(|p| p.trim().is_empty()) {
                    return Err(field("branches", "a pattern must not be empty".into()));
                }
            }
            let needs: Vec<String> = job
                .needs
                .iter()
                .flat_map(|need| names.get(need.as_str()).cloned().unwrap_or_default())
                .collect();
            let run = match (&job.run, &job.split) {
                (Some(run), None) => run.clone(),
                (None, Some(split)) => {
                    model::split::check_run(&split.run)
                        .map_err(|err| field("split", err.to_string()))?;
                    if split.parallel == Some(0) {
                        return Err(field("split", "parallel: must be at least 1".into()));
                    }
                    split.list.clone()
                }
                (Some(_), Some(_)) => {
                    return Err(at.error(
                        at.job(name),
                        &format!("jobs.{name}"),
                        "a job has run or split, not both",
                    ))
                }
                (None, None) => {
                    return Err(at.error(
                        at.job(name),
                        &format!("jobs.{name}"),
                        "missing field `run` (or `split`)",
                    ))
                }
            };
            for values in combinations {
                let spec = JobSpec {
                    name: job_name(name, values),
                    run: run.clone(),
                    env: env.clone(),
                    matrix: values.iter().cloned().collect(),
                    timeout_ms,
                    queue: queue.clone(),
                    needs: needs.clone(),
                    allow_failure: job.allow_failure,
                    split: None,
                };
                let Some(split) = &job.split else {
                    origin.push((spec.name.clone(), name.clone()));
                    out.push(PipelineJob {
                        spec,
                        branches: job.branches.clone(),
                    });
                    continue;
                };
                // A split job is planned as its list job and its gate.
                let gate_name = spec.name.clone();
                let list = JobSpec {
                    name: model::split::list_name(&gate_name),
                    split: Some(SplitPart::List {
                        gate: gate_name.clone(),
                        run: split.run.clone(),
                        parallel: split.parallel,
                        flaky: FlakyPolicy::default(),
                    }),
                    ..spec.clone()
                };
                let gate = JobSpec {
                    run: String::new(),
                    needs: vec![list.name.clone()],
                    split: Some(SplitPart::Gate {
                        flaky: FlakyPolicy::default(),
                    }),
                    env: BTreeMap::new(),
                    ..spec
                };
                for part in [list, gate] {
                    origin.push((part.name.clone(), name.clone()));
                    out.push(PipelineJob {
                        spec: part,
                        branches: job.branches.clone(),
                    });
                }
            }
        }

        // The model's rules, last: names, run, variable names, duplicates.
        let plan = Plan::new(out.iter().map(|job| job.spec.clone()).collect());
        if let Err(err) = plan.validate() {
            // The written job an expanded name comes from (the last one:
            // a duplicate is reported where it is written the second time).
            let written_as = |expanded: &str| {
                origin
                    .iter()
                    .rev()
                    .find(|(name, _)| name == expanded)
                    .map(|(_, written)| written.clone())
            };
            let (job, reason) = match &err {
                PlanError::Job(name, reason) => (written_as(name), reason.clone()),
                PlanError::DuplicateName(name) => (
                    written_as(name),
                    format!("two jobs are named {name:?} (a matrix combination's name is the job's and its values')"),
                ),
                PlanError::UnknownNeed { job, .. } => (written_as(job), err.to_string()),
                PlanError::Cycle(_) | PlanError::Empty | PlanError::TooManyJobs(_) => {
                    (None, err.to_string())
                }
            };
            return Err(match job {
                Some(job) => at.error(at.job(&job), &format!("jobs.{job}"), &reason),
                None => at.error(at.jobs(), "jobs", &reason),
            });
        }
        Ok(Pipeline {
            jobs: out,
            cancel_superseded: false,
        })
    }

    /// The plan for a commit of `branch`: the jobs whose `branches` match
    /// it, with needs on the others dropped. None when no job runs on it.
    /// `flaky:` at the top of `.warren.yml`: what a flaky test makes of
    /// each split job.
    pub(crate) fn set_flaky(&mut self, policy: FlakyPolicy) {
        for job in &mut self.jobs {
            match &mut job.spec.split {
                Some(SplitPart::List { flaky, .. } | SplitPart::Gate { flaky }) => *flaky = policy,
                Some(SplitPart::Batch { .. }) | None => {}
            }
        }
    }

    pub fn for_branch(&self, branch: &str) -> Option<Plan> {
        let runs = |job: &PipelineJob| {
            job.branches
                .as_ref()
                .is_none_or(|patterns| patterns.iter().any(|p| glob_match(p, branch)))
        };
        let kept: Vec<&PipelineJob> = self.jobs.iter().filter(|job| runs(job)).collect();
        if kept.is_empty() {
            return None;
        }
        let jobs = kept
            .iter()
            .map(|job| {
                let mut spec = job.spec.clone();
                spec.needs
                    .retain(|need| kept.iter().any(|other| other.spec.name == *need));
                spec
            })
            .collect();
        Some(Plan {
            jobs,
            cancel_superseded: self.cancel_superseded,
        })
    }

    /// Every job's name, matrices expanded, whatever its branches.
    pub fn job_names(&self) -> impl Iterator<Item = &str> {
        self.jobs.iter().map(|job| job.spec.name.as_str())
    }
}

/// Parses the whole text of a `.warren.yml` and returns the plan for a
/// commit of `branch`: Ok(None) when the file has no `jobs:` section or no
/// job runs on `branch`. Err: the reason, naming the line and the field.
pub fn plan_for(text: &str, branch: &str) -> Result<Option<Plan>, String> {
    let config = crate::repo_files::RepoConfig::parse(text)?;
    Ok(config.jobs.and_then(|jobs| jobs.for_branch(branch)))
}

/// `test (stable, all)`: the job's name and its combination's values.
fn job_name(name: &str, values: &[(String, String)]) -> String {
    if values.is_empty() {
        return name.to_string();
    }
    let values: Vec<&str> = values.iter().map(|(_, value)| value.as_str()).collect();
    format!("{name} ({})", values.join(", "))
}

/// Whether `branch` matches `pattern`, in which `*` matches any run of
/// characters (`/` included) and every other character itself.
pub fn glob_match(pattern: &str, branch: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return pattern == branch;
    };
    if parts.len() == 1 {
        return pattern == branch;
    }
    if branch.len() < first.len() + last.len()
        || !branch.starts_with(first)
        || !branch.ends_with(last)
    {
        return false;
    }
    let mut rest = &branch[first.len()..branch.len() - last.len()];
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// A cycle in the written jobs' needs, as the names along it (the first
/// repeated last).
fn find_cycle(jobs: &[(String, RawJob)]) -> Option<Vec<String>> {
    let index: HashMap<&str, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.as_str(), i))
        .collect();
    // 0: not seen, 1: on the current path, 2: done.
    let mut state = vec![0u8; jobs.len()];
    for start in 0..jobs.len() {
        if state[start] != 0 {
            continue;
        }
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        state[start] = 1;
        while let Some(&(job, next)) = path.last() {
            let needs = &jobs[job].1.needs;
            if next == needs.len() {
                state[job] = 2;
                path.pop();
                continue;
            }
            if let Some(top) = path.last_mut() {
                top.1 += 1;
            }
            let Some(&need) = index.get(needs[next].as_str()) else {
                continue;
            };
            match state[need] {
                0 => {
                    state[need] = 1;
                    path.push((need, 0));
                }
                1 => {
                    let from = path.iter().position(|(j, _)| *j == need).unwrap_or(0);
                    let mut cycle: Vec<String> = path[from..]
                        .iter()
                        .map(|(j, _)| jobs[*j].0.clone())
                        .collect();
                    cycle.push(jobs[need].0.clone());
                    return Some(cycle);
                }
                _ => {}
            }
        }
    }
    None
}

/// A scalar as the text it stands for: strings as written, numbers and
/// booleans in their YAML spelling.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// What a YAML value is, for errors.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a map",
        Value::Tagged(_) => "a tagged value",
    }
}

/// One combination of a matrix: (key, value) in the keys' written order.
type Combination = Vec<(String, String)>;

/// A matrix's combinations, the first key varying slowest, each as
/// (key, value) in the keys' written order.
fn matrix(value: &Value) -> Result<Vec<Combination>, String> {
    let Value::Mapping(map) = value else {
        return Err(format!(
            "must be a map of names to lists of values, not {}",
            kind(value)
        ));
    };
    if map.is_empty() {
        return Err("an empty matrix: give at least one key and its values".into());
    }
    let mut combinations: Vec<Combination> = vec![Vec::new()];
    for (key, values) in map {
        let Value::String(key) = key else {
            return Err(format!("a key is {}, not a name", kind(key)));
        };
        if !is_env_name(key) {
            return Err(format!(
                "{key:?} is not a variable name (letters, digits and '_', not starting with a digit): it is set as MATRIX_{}",
                key.to_ascii_uppercase()
            ));
        }
        let Value::Sequence(values) = values else {
            return Err(format!(
                "{key}: must be a list of values, not {}",
                kind(values)
            ));
        };
        if values.is_empty() {
            return Err(format!("{key}: an empty list of values"));
        }
        let mut texts: Vec<String> = Vec::new();
        for value in values {
            let text = scalar(value).ok_or_else(|| {
                format!(
                    "{key}: a value is {}; values are strings, numbers or booleans",
                    kind(value)
                )
            })?;
            if texts.contains(&text) {
                return Err(format!("{key}: {text:?} is listed twice"));
            }
            texts.push(text);
        }
        let count = combinations.len().saturating_mul(texts.len());
        if count > MAX_MATRIX_COMBINATIONS {
            return Err(format!(
                "more than {MAX_MATRIX_COMBINATIONS} combinations (at least {count})"
            ));
        }
        combinations = combinations
            .iter()
            .flat_map(|before| {
                texts.iter().map(move |text| {
                    let mut combination = before.clone();
                    combination.push((key.clone(), text.clone()));
                    combination
                })
            })
            .collect();
    }
    Ok(combinations)
}

/// A job's `env`: names to scalars, as strings.
fn env(value: &Value) -> Result<BTreeMap<String, String>, String> {
    let Value::Mapping(map) = value else {
        return Err(format!(
            "must be a map of variable names to values, not {}",
            kind(value)
        ));
    };
    let mut env = BTreeMap::new();
    for (key, value) in map {
        let Value::String(key) = key else {
            return Err(format!("a key is {}, not a variable name", kind(key)));
        };
        if !is_env_name(key) {
            return Err(format!(
                "{key:?} is not a variable name (letters, digits and '_', not starting with a digit)"
            ));
        }
        let text = scalar(value).ok_or_else(|| {
            format!(
                "{key}: the value is {}; values are strings, numbers or booleans",
                kind(value)
            )
        })?;
        env.insert(key.clone(), text);
    }
    Ok(env)
}

/// A job's `timeout` (`10m`, `90s`, `1h 30m`), in milliseconds.
fn timeout_ms(value: &Value) -> Result<u64, String> {
    let text = match value {
        Value::String(text) => text.clone(),
        other => match scalar(other) {
            Some(text) => {
                return Err(format!(
                    "{text} is not a duration: give a unit, such as 10m or 90s"
                ))
            }
            None => return Err(format!("{} is not a duration", kind(other))),
        },
    };
    let duration = humantime::parse_duration(text.trim())
        .map_err(|_| format!("{text:?} is not a duration (such as 10m, 90s or 1h 30m)"))?;
    let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Err(format!("{text:?}: a timeout must be longer than zero"));
    }
    Ok(ms)
}

/// A job's `queue`.
fn queue(value: &Value) -> Result<QueueName, String> {
    let Value::String(text) = value else {
        return Err(format!("a queue's name is a string, not {}", kind(value)));
    };
    QueueName::parse(text).map_err(|e| format!("not a queue name: {}", e.reason))
}

/// Finds the lines of `jobs:`, of a job's key under it, and of a field
/// under a job, in a block-style file. Lines are 1-based.
struct Locator<'a> {
    lines: Vec<&'a str>,
}

impl<'a> Locator<'a> {
    fn new(text: &'a str) -> Self {
        Locator {
            lines: text.lines().collect(),
        }
    }

    fn error(&self, line: usize, field: &str, reason: &str) -> String {
        located(line, &format!("{field}: {reason}"))
    }

    fn indent(line: &str) -> usize {
        line.len() - line.trim_start_matches(' ').len()
    }

    fn is_content(line: &str) -> bool {
        let trimmed = line.trim();
        !trimmed.is_empty() && !trimmed.starts_with('#')
    }

    /// Whether `line` (trimmed) is the key `key` (plain or quoted).
    fn is_key(line: &str, key: &str) -> bool {
        let line = line.trim_start();
        [key.to_string(), format!("\"{key}\""), format!("'{key}'")]
            .iter()
            .any(|form| {
                line.strip_prefix(form.as_str())
                    .is_some_and(|rest| rest.trim_start().starts_with(':'))
            })
    }

    /// The index of the top-level `jobs:` line.
    fn jobs_index(&self) -> Option<usize> {
        self.lines
            .iter()
            .position(|line| Self::indent(line) == 0 && Self::is_key(line, "jobs"))
    }

    /// The index of the key `key` in the block under the line `parent`.
    fn child(&self, parent: usize, key: &str) -> Option<usize> {
        let parent_indent = Self::indent(self.lines[parent]);
        let mut child_indent = None;
        for (i, line) in self.lines.iter().enumerate().skip(parent + 1) {
            if !Self::is_content(line) {
                continue;
            }
            let indent = Self::indent(line);
            if indent <= parent_indent {
                return None;
            }
            let level = *child_indent.get_or_insert(indent);
            if indent == level && Self::is_key(line, key) {
                return Some(i);
            }
        }
        None
    }

    fn jobs(&self) -> usize {
        self.jobs_index().map_or(1, |i| i + 1)
    }

    fn job(&self, job: &str) -> usize {
        self.jobs_index()
            .and_then(|jobs| self.child(jobs, job))
            .map_or_else(|| self.jobs(), |i| i + 1)
    }

    fn field(&self, job: &str, field: &str) -> usize {
        self.jobs_index()
            .and_then(|jobs| self.child(jobs, job))
            .and_then(|job| self.child(job, field))
            .map_or_else(|| self.job(job), |i| i + 1)
    }
}

/// `.warren.yml is not valid: line 7: …`: how every error in the file
/// reads (the prefix is the one the runner has always used for it).
fn located(line: usize, what: &str) -> String {
    format!("{REPO_CONFIG_FILE} is not valid: line {line}: {what}")
}

/// A parser's error in the same words: the line first, the parser's
/// path (`jobs.test`) and message, without its own `at line … column …`.
pub(crate) fn yaml_error(err: &serde_norway::Error) -> String {
    let text = err.to_string();
    match err.location() {
        Some(location) => {
            let mark = format!(" at line {} column {}", location.line(), location.column());
            let text = text.replacen(&mark, "", 1);
            located(location.line(), &text)
        }
        None => format!("{REPO_CONFIG_FILE} is not valid: {text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "\
network: false
jobs:
  lint:
    run: cargo clippy -- -D warnings
  test:
    run: cargo test
    needs: [lint]
    matrix:
      toolchain: [stable, beta]     # the job runs once per combination
      features: [default, all]
    env: {RUST_BACKTRACE: \"1\", LEVEL: 3, FAST: true}
    timeout: 10m
    queue: linux-x86
  docs:
    run: make docs
    needs: [test]
    allow_failure: true
    branches: [main, \"release/*\"]
";

    fn plan(text: &str, branch: &str) -> Plan {
        plan_for(text, branch)
            .unwrap_or_else(|e| panic!("{e}"))
            .expect("a plan")
    }

    fn error(text: &str) -> String {
        plan_for(text, "main").expect_err("an error")
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.jobs.iter().map(|job| job.name.as_str()).collect()
    }

    fn job<'a>(plan: &'a Plan, name: &str) -> &'a JobSpec {
        plan.jobs
            .iter()
            .find(|job| job.name == name)
            .unwrap_or_else(|| panic!("no job {name}"))
    }

    #[test]
    fn cancel_superseded_at_the_top_is_carried_by_every_plan() {
        assert!(!plan(EXAMPLE, "main").cancel_superseded);
        let text = format!("cancel_superseded: true\n{EXAMPLE}");
        assert!(plan(&text, "main").cancel_superseded);
        assert!(plan(&text, "feature").cancel_superseded);
        let err = plan_for(
            "cancel_superseded: yes please\njobs:\n  a:\n    run: x\n",
            "main",
        )
        .expect_err("not a boolean");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn every_field_is_read_into_the_plan() {
        let plan = plan(EXAMPLE, "main");
        assert_eq!(plan.validate(), Ok(()));
        let lint = job(&plan, "lint");
        assert_eq!(lint.run, "cargo clippy -- -D warnings");
        assert_eq!(lint.queue, QueueName::default());
        assert_eq!(lint.timeout_ms, None);
        assert!(lint.needs.is_empty() && lint.env.is_empty() && lint.matrix.is_empty());
        assert!(!lint.allow_failure);

        let test = job(&plan, "test (beta, all)");
        assert_eq!(test.run, "cargo test");
        assert_eq!(test.needs, vec!["lint".to_string()]);
        assert_eq!(test.timeout_ms, Some(600_000));
        assert_eq!(test.queue.as_str(), "linux-x86");
        let env: Vec<(&str, &str)> = test
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            vec![("FAST", "true"), ("LEVEL", "3"), ("RUST_BACKTRACE", "1")]
        );
        assert_eq!(
            test.matrix.get("toolchain").map(String::as_str),
            Some("beta")
        );
        assert_eq!(test.matrix.get("features").map(String::as_str), Some("all"));
        let matrix_env: Vec<(String, &str)> = test.matrix_env().collect();
        assert!(matrix_env.contains(&("MATRIX_TOOLCHAIN".to_string(), "beta")));

        let docs = job(&plan, "docs");
        assert!(docs.allow_failure);
        assert_eq!(
            docs.needs,
            vec![
                "test (stable, default)",
                "test (stable, all)",
                "test (beta, default)",
                "test (beta, all)"
            ]
        );
    }

    #[test]
    fn matrix_names_follow_the_keys_written_order_not_the_alphabet() {
        let plan = plan(EXAMPLE, "main");
        assert_eq!(
            names(&plan),
            vec![
                "lint",
                "test (stable, default)",
                "test (stable, all)",
                "test (beta, default)",
                "test (beta, all)",
                "docs"
            ]
        );
        let text = "jobs:\n  t:\n    run: x\n    matrix:\n      zeta: [1, 2]\n      alpha: [a]\n      mid: [true]\n";
        assert_eq!(
            names(&plan_for(text, "main").unwrap().unwrap()),
            vec!["t (1, a, true)", "t (2, a, true)"]
        );
    }

    #[test]
    fn jobs_are_left_out_by_branches_and_needs_on_them_dropped() {
        let feature = plan(EXAMPLE, "feature/x");
        assert!(!names(&feature).contains(&"docs"));
        assert_eq!(names(&feature).len(), 5);
        assert!(names(&plan(EXAMPLE, "release/1.2")).contains(&"docs"));
        assert!(names(&plan(EXAMPLE, "release/1.2/hotfix")).contains(&"docs"));
        assert!(!names(&plan(EXAMPLE, "prerelease/1")).contains(&"docs"));

        let text = "jobs:\n  deploy:\n    run: ./deploy\n    branches: [main]\n  notify:\n    run: ./notify\n    needs: [deploy]\n";
        let on_main = plan(text, "main");
        assert_eq!(job(&on_main, "notify").needs, vec!["deploy".to_string()]);
        let elsewhere = plan(text, "dev");
        assert_eq!(names(&elsewhere), vec!["notify"]);
        assert!(job(&elsewhere, "notify").needs.is_empty());
        assert_eq!(elsewhere.validate(), Ok(()));

        let only_main = "jobs:\n  deploy:\n    run: ./deploy\n    branches: [main]\n";
        assert_eq!(plan_for(only_main, "dev"), Ok(None));
    }

    #[test]
    fn branch_patterns_match_any_run_of_characters_at_a_star() {
        for (pattern, branch, matches) in [
            ("main", "main", true),
            ("main", "main2", false),
            ("release/*", "release/1.0", true),
            ("release/*", "release/", true),
            ("release/*", "release", false),
            ("*", "a/b/c", true),
            ("*-fix", "feature/a-fix", true),
            ("*-fix", "feature/a-fix2", false),
            ("a*b*c", "a-b-b-c", true),
            ("a*b*c", "a-c", false),
            ("a*a", "a", false),
            ("**", "x", true),
        ] {
            assert_eq!(glob_match(pattern, branch), matches, "{pattern} {branch}");
        }
    }

    #[test]
    fn no_jobs_section_is_no_pipeline_and_an_empty_one_is_an_error() {
        assert_eq!(plan_for("network: false\n", "main"), Ok(None));
        assert_eq!(plan_for("", "main"), Ok(None));
        for text in ["jobs:\n", "jobs: {}\n", "network: true\njobs:\n# later\n"] {
            let err = error(text);
            assert!(err.contains("the pipeline has no jobs"), "{err}");
            assert!(err.starts_with(".warren.yml is not valid: line "), "{err}");
        }
        assert!(error("network: true\njobs:\n").contains("line 2: jobs:"));
    }

    /// Every error names its line and field.
    #[test]
    fn every_error_names_the_field_and_the_line() {
        let base = "network: true\njobs:\n  lint:\n    run: lint\n  test:\n    run: cargo test\n";
        for (extra, line, words) in [
            (
                "    timeout: 10x\n",
                7,
                "jobs.test.timeout: \"10x\" is not a duration",
            ),
            (
                "    timeout: 0s\n",
                7,
                "jobs.test.timeout: \"0s\": a timeout must be longer than zero",
            ),
            (
                "    timeout: 600\n",
                7,
                "jobs.test.timeout: 600 is not a duration: give a unit",
            ),
            ("    queue: Linux\n", 7, "jobs.test.queue: not a queue name"),
            (
                "    needs: [lnt]\n",
                7,
                "jobs.test.needs: \"lnt\" is not a job of the pipeline",
            ),
            ("    matrix: {}\n", 7, "jobs.test.matrix: an empty matrix"),
            (
                "    matrix:\n      toolchain: []\n",
                7,
                "jobs.test.matrix: toolchain: an empty list of values",
            ),
            (
                "    matrix:\n      tool-chain: [a]\n",
                7,
                "jobs.test.matrix: \"tool-chain\" is not a variable name",
            ),
            (
                "    matrix:\n      t: [a, a]\n",
                7,
                "jobs.test.matrix: t: \"a\" is listed twice",
            ),
            (
                "    matrix:\n      t: [[a]]\n",
                7,
                "jobs.test.matrix: t: a value is a list",
            ),
            ("    matrix: [a]\n", 7, "jobs.test.matrix: must be a map"),
            (
                "    env: {\"1X\": a}\n",
                7,
                "jobs.test.env: \"1X\" is not a variable name",
            ),
            (
                "    env: {X: [a]}\n",
                7,
                "jobs.test.env: X: the value is a list",
            ),
            ("    branches: []\n", 7, "jobs.test.branches: an empty list"),
            (
                "    env: {}\n    color: red\n",
                8,
                "jobs.test: unknown field `color`",
            ),
            (
                "    allow_failure: maybe\n",
                7,
                "jobs.test.allow_failure: invalid type",
            ),
            ("    needs: lint\n", 7, "jobs.test.needs: invalid type"),
        ] {
            let text = format!("{base}{extra}");
            let err = error(&text);
            let expected = format!(".warren.yml is not valid: line {line}: {words}");
            assert!(
                err.starts_with(&expected),
                "{extra:?}\n{err}\nnot\n{expected}"
            );
        }
    }

    #[test]
    fn structural_errors_name_the_line_too() {
        let missing_run = "jobs:\n  lint:\n    run: x\n  test:\n    needs: [lint]\n";
        let err = error(missing_run);
        assert!(err.contains("jobs.test: missing field `run`"), "{err}");
        assert!(err.contains("line 5") || err.contains("line 4"), "{err}");

        let unknown_top = "network: true\nstages: [a]\n";
        let err = error(unknown_top);
        assert!(
            err.starts_with(".warren.yml is not valid: line 2: unknown field `stages`"),
            "{err}"
        );

        let twice = "jobs:\n  a:\n    run: x\n  a:\n    run: y\n";
        let err = error(twice);
        assert!(
            err.contains("line ") && err.contains("the job \"a\" is written twice"),
            "{err}"
        );

        let not_a_map = "jobs:\n  a: echo\n";
        let err = error(not_a_map);
        assert!(err.starts_with(".warren.yml is not valid: line 2: jobs.a: invalid type: string \"echo\", expected a job: a map with run"), "{err}");

        let syntax = "jobs:\n  a:\n    run: [x\n";
        let err = error(syntax);
        assert!(err.starts_with(".warren.yml is not valid: line "), "{err}");
    }

    #[test]
    fn a_cycle_names_its_jobs_and_line() {
        let text = "jobs:\n  a:\n    run: x\n    needs: [c]\n  b:\n    run: x\n    needs: [a]\n  c:\n    run: x\n    needs: [b]\n  d:\n    run: x\n";
        let err = error(text);
        assert_eq!(
            err,
            ".warren.yml is not valid: line 4: jobs.a.needs: jobs a → c → b → a need each other in a cycle"
        );
        let own = "jobs:\n  a:\n    run: x\n  b:\n    run: y\n    needs: [a, b]\n";
        let err = error(own);
        assert!(err.contains("line 6: jobs.b.needs: jobs b → b"), "{err}");
    }

    #[test]
    fn the_models_checks_are_mapped_to_the_jobs_line() {
        let blank_run = "jobs:\n  lint:\n    run: x\n  test:\n    run: \"  \"\n";
        let err = error(blank_run);
        assert!(
            err.starts_with(".warren.yml is not valid: line 4: jobs.test: run: must be a command"),
            "{err}"
        );

        let clash =
            "jobs:\n  t:\n    run: x\n    matrix:\n      v: [a]\n  \"t (a)\":\n    run: y\n";
        let err = error(clash);
        assert!(
            err.starts_with(
                ".warren.yml is not valid: line 6: jobs.t (a): two jobs are named \"t (a)\""
            ),
            "{err}"
        );
    }

    #[test]
    fn the_job_and_combination_limits_hold() {
        let matrix = |n: usize| {
            let values: Vec<String> = (0..n).map(|i| i.to_string()).collect();
            format!("[{}]", values.join(", "))
        };
        let at_limit = format!(
            "jobs:\n  t:\n    run: x\n    matrix:\n      a: {}\n      b: {}\n",
            matrix(8),
            matrix(8)
        );
        assert_eq!(plan(&at_limit, "main").jobs.len(), 64);
        let over = format!(
            "jobs:\n  t:\n    run: x\n    matrix:\n      a: {}\n      b: {}\n      c: [x, y]\n",
            matrix(8),
            matrix(8)
        );
        let err = error(&over);
        assert!(
            err.starts_with(
                ".warren.yml is not valid: line 4: jobs.t.matrix: more than 64 combinations"
            ),
            "{err}"
        );

        let jobs = |count: usize| {
            let mut text = String::from("jobs:\n");
            for i in 0..count {
                text.push_str(&format!(
                    "  j{i}:\n    run: x\n    matrix:\n      v: {}\n",
                    matrix(64)
                ));
            }
            text
        };
        assert_eq!(plan(&jobs(4), "main").jobs.len(), 256);
        let err = error(&format!("{}  last:\n    run: x\n", jobs(4)));
        assert!(
            err.contains(": jobs.last: the pipeline has more than 256 jobs"),
            "{err}"
        );
        assert!(
            err.starts_with(&format!(".warren.yml is not valid: line {}:", 4 * 4 + 2)),
            "{err}"
        );
    }

    #[test]
    fn flow_style_jobs_are_read_and_located_at_jobs() {
        let text = "jobs: {a: {run: x}, b: {run: y, needs: [a], timeout: 90s}}\n";
        let plan = plan(text, "main");
        assert_eq!(names(&plan), vec!["a", "b"]);
        assert_eq!(job(&plan, "b").timeout_ms, Some(90_000));
        let bad = "jobs: {a: {run: x, timeout: soon}}\n";
        assert!(error(bad).starts_with(".warren.yml is not valid: line 1: jobs.a.timeout:"));
    }
}
