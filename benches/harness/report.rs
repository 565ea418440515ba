//! Results: rows of samples with their summary and target, grouped by
//! scenario, rendered as a console table and as BENCHMARKS.md.

use std::fmt::Write as _;

use crate::harness::stats::{summarize, Summary};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Ms,
    Secs,
    JobsPerSec,
    MiB,
    Percent,
}

impl Unit {
    pub fn suffix(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::Secs => "s",
            Unit::JobsPerSec => "jobs/s",
            Unit::MiB => "MiB",
            Unit::Percent => "%",
        }
    }

    pub fn format(self, value: f64) -> String {
        if !value.is_finite() {
            return "–".into();
        }
        match self {
            Unit::Ms if value >= 100.0 => format!("{value:.0}"),
            Unit::Ms => format!("{value:.1}"),
            Unit::Secs => format!("{value:.2}"),
            Unit::JobsPerSec => format!("{value:.1}"),
            Unit::MiB => format!("{value:.1}"),
            Unit::Percent => format!("{value:.2}"),
        }
    }
}

/// Which statistic a target constrains.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// The median must not exceed the value.
    MedianAtMost(f64),
    /// Every sample must stay within the value (bounds on recovery, peaks).
    MaxAtMost(f64),
    /// The median must reach the value (rates).
    MedianAtLeast(f64),
    /// The 99th percentile must not exceed the value (latencies under a
    /// tail bound).
    P99AtMost(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub text: String,
    pub goal: Goal,
}

impl Target {
    pub fn median_at_most(value: f64, text: &str) -> Option<Target> {
        Some(Target {
            text: text.into(),
            goal: Goal::MedianAtMost(value),
        })
    }
    pub fn max_at_most(value: f64, text: &str) -> Option<Target> {
        Some(Target {
            text: text.into(),
            goal: Goal::MaxAtMost(value),
        })
    }
    pub fn p99_at_most(value: f64, text: &str) -> Option<Target> {
        Some(Target {
            text: text.into(),
            goal: Goal::P99AtMost(value),
        })
    }
    pub fn at_least(value: f64, text: &str) -> Option<Target> {
        Some(Target {
            text: text.into(),
            goal: Goal::MedianAtLeast(value),
        })
    }
}

/// One measured quantity.
#[derive(Debug, Clone)]
pub struct Row {
    pub metric: String,
    pub unit: Unit,
    pub samples: Vec<f64>,
    pub target: Option<Target>,
}

impl Row {
    pub fn new(metric: impl Into<String>, unit: Unit, samples: Vec<f64>) -> Row {
        Row {
            metric: metric.into(),
            unit,
            samples,
            target: None,
        }
    }

    pub fn target(mut self, target: Option<Target>) -> Row {
        self.target = target;
        self
    }

    pub fn summary(&self) -> Option<Summary> {
        summarize(&self.samples)
    }

    /// Met (`Some(true)`), missed (`Some(false)`), or no target / no data.
    pub fn met(&self) -> Option<bool> {
        let summary = self.summary()?;
        Some(match self.target.as_ref()?.goal {
            Goal::MedianAtMost(v) => summary.median <= v,
            Goal::MaxAtMost(v) => summary.max <= v,
            Goal::MedianAtLeast(v) => summary.median >= v,
            Goal::P99AtMost(v) => summary.p99 <= v,
        })
    }

    /// The metric and its target, for a sentence.
    pub fn metric_with_target(&self, target: &Target) -> String {
        format!("{}: target {}", self.metric, target.text)
    }

    pub fn verdict(&self) -> &'static str {
        match (self.target.is_some(), self.met()) {
            (false, _) => "",
            (true, Some(true)) => "met",
            (true, Some(false)) => "MISSED",
            (true, None) => "no data",
        }
    }
}

/// One scenario's results: rows, and free-form details (method, breakdown
/// tables, findings) in Markdown.
#[derive(Debug, Clone, Default)]
pub struct Section {
    pub id: u8,
    pub title: String,
    pub rows: Vec<Row>,
    pub details: String,
    /// Parts that could not run here, and why.
    pub skipped: Vec<String>,
    /// Load average when the scenario started and ended.
    pub load: (f64, f64),
    pub seconds: f64,
}

/// All scenarios' results.
#[derive(Debug, Clone)]
pub struct Report {
    pub sections: Vec<Section>,
    /// Named numbers the analysis quotes (e.g. `overhead.fetch.fetch`).
    pub facts: std::collections::BTreeMap<String, f64>,
}

pub const TITLES: [&str; 12] = [
    "Commit to start and commit to outcome",
    "Per-job overhead",
    "Throughput",
    "Failover",
    "Memory and CPU",
    "Dashboard and API",
    "Webhooks and many repositories (issue 15)",
    "Sandbox cost per job (issue 14)",
    "Pipelines (issue 16)",
    "Test splitting (issue 18)",
    "A million jobs (issue 19)",
    "Recording and publishing at scale (issue 19)",
];

impl Default for Report {
    fn default() -> Self {
        Report::new()
    }
}

impl Report {
    pub fn new() -> Report {
        Report {
            sections: TITLES
                .iter()
                .enumerate()
                .map(|(i, title)| Section {
                    id: i as u8 + 1,
                    title: title.to_string(),
                    ..Section::default()
                })
                .collect(),
            facts: Default::default(),
        }
    }

    pub fn fact(&mut self, name: &str, value: f64) {
        self.facts.insert(name.to_string(), value);
    }

    /// A fact, if the scenario that measures it ran.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.facts.get(name).copied().filter(|v| v.is_finite())
    }

    /// Scenario `id` (1 to 10).
    pub fn section(&mut self, id: u8) -> &mut Section {
        &mut self.sections[usize::from(id) - 1]
    }

    pub fn add(&mut self, id: u8, row: Row) {
        self.section(id).rows.push(row);
    }

    pub fn detail(&mut self, id: u8, markdown: &str) {
        let details = &mut self.section(id).details;
        details.push_str(markdown);
        if !markdown.ends_with('\n') {
            details.push('\n');
        }
        details.push('\n');
    }

    pub fn all_rows(&self) -> impl Iterator<Item = (&Section, &Row)> {
        self.sections
            .iter()
            .flat_map(|s| s.rows.iter().map(move |r| (s, r)))
    }

    /// The console table.
    pub fn console(&self) -> String {
        let mut out = String::new();
        let header = format!(
            "{:<3} {:<58} {:>5} {:>10} {:>10} {:>10}  {:<7} {}",
            "#", "metric", "n", "median", "p95", "max", "unit", "target"
        );
        let _ = writeln!(out, "{header}");
        let _ = writeln!(out, "{}", "-".repeat(header.chars().count() + 12));
        for section in &self.sections {
            for row in &section.rows {
                let s = row.summary();
                let cell = |f: fn(&Summary) -> f64| {
                    s.as_ref()
                        .map(|s| row.unit.format(f(s)))
                        .unwrap_or_else(|| "–".into())
                };
                let target = row
                    .target
                    .as_ref()
                    .map(|t| format!("{} ({})", t.text, row.verdict()))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{:<3} {:<58} {:>5} {:>10} {:>10} {:>10}  {:<7} {}",
                    section.id,
                    truncate(&row.metric, 58),
                    s.map(|s| s.n).unwrap_or(0),
                    cell(|s| s.median),
                    cell(|s| s.p95),
                    cell(|s| s.max),
                    row.unit.suffix(),
                    target
                );
            }
            for skipped in &section.skipped {
                let _ = writeln!(out, "{:<3} skipped: {skipped}", section.id);
            }
        }
        out
    }

    /// The results table in Markdown, with the median of the same metric
    /// in the previous run beside each, when there was one.
    pub fn markdown_table(&self, previous: Option<&Previous>) -> String {
        let mut out = match previous {
            Some(previous) => format!(
                "| # | metric | n | median | before ({}) | p95 | max | target | |\n|---|---|--:|--:|--:|--:|--:|---|---|\n",
                previous.short_commit()
            ),
            None => String::from(
                "| # | metric | n | median | p95 | max | target | |\n|---|---|--:|--:|--:|--:|---|---|\n",
            ),
        };
        for (section, row) in self.all_rows() {
            let s = row.summary();
            let cell = |f: fn(&Summary) -> f64| {
                s.as_ref()
                    .map(|s| format!("{} {}", row.unit.format(f(s)), row.unit.suffix()))
                    .unwrap_or_else(|| "–".into())
            };
            let verdict = match row.verdict() {
                "MISSED" => "**missed**",
                other => other,
            };
            let before = previous.map(|previous| {
                format!(
                    " {} |",
                    previous.median(section.id, &row.metric).unwrap_or("–")
                )
            });
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |{} {} | {} | {} | {} |",
                section.id,
                row.metric,
                s.map(|s| s.n).unwrap_or(0),
                cell(|s| s.median),
                before.unwrap_or_default(),
                cell(|s| s.p95),
                cell(|s| s.max),
                row.target.as_ref().map(|t| t.text.as_str()).unwrap_or(""),
                verdict
            );
        }
        out
    }
}

/// The figures of the run BENCHMARKS.md held before this one: its commit
/// and the median of each metric, as written, so that a run shows what it
/// changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Previous {
    pub commit: String,
    /// (scenario, metric) → the median cell as written (value and unit).
    medians: std::collections::HashMap<(u8, String), String>,
}

impl Previous {
    /// Reads the previous run from the text of BENCHMARKS.md: the measured
    /// commit, and the results table's median column (which follows the
    /// `n` column whatever other columns the table had).
    pub fn parse(markdown: &str) -> Option<Previous> {
        let commit = markdown
            .lines()
            .find_map(|line| line.strip_prefix("| measured commit | "))?
            .trim_end_matches(" |")
            .trim()
            .to_string();
        let results = markdown.split("## Results").nth(1)?;
        let medians = results
            .lines()
            .skip_while(|line| !line.starts_with("| # |"))
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let id: u8 = cells.get(1)?.parse().ok()?;
                Some(((id, cells.get(2)?.to_string()), cells.get(4)?.to_string()))
            })
            .collect();
        Some(Previous { commit, medians })
    }

    pub fn short_commit(&self) -> &str {
        self.commit.get(..7).unwrap_or(&self.commit)
    }

    pub fn median(&self, scenario: u8, metric: &str) -> Option<&str> {
        self.medians
            .get(&(scenario, metric.to_string()))
            .map(String::as_str)
    }
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(width - 1).collect();
        cut.push('…');
        cut
    }
}

/// A Markdown table of named sample sets (median, p95, max), for the
/// breakdowns in the details.
pub fn breakdown_table(unit: Unit, rows: &[(&str, Vec<f64>)]) -> String {
    let mut out = String::from("| part | n | median | p95 | max |\n|---|--:|--:|--:|--:|\n");
    for (name, samples) in rows {
        match summarize(samples) {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "| {name} | {} | {} {u} | {} {u} | {} {u} |",
                    s.n,
                    unit.format(s.median),
                    unit.format(s.p95),
                    unit.format(s.max),
                    u = unit.suffix()
                );
            }
            None => {
                let _ = writeln!(out, "| {name} | 0 | – | – | – |");
            }
        }
    }
    out
}
