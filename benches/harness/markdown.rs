//! BENCHMARKS.md: the machine, the commit, the results against the
//! targets, each scenario's method and breakdowns, and where the time goes.

use std::fmt::Write as _;

use crate::harness::report::{Previous, Report};
use crate::harness::system::Machine;

/// Facts about one benchmark run.
#[derive(Debug, Clone)]
pub struct Run {
    pub machine: Machine,
    pub commit: String,
    pub started: String,
    pub seconds: f64,
    pub load: (f64, f64),
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    format!(
        "{} {:02}:{:02} UTC",
        model::trends::civil_date(days),
        rest / 3600,
        rest % 3600 / 60
    )
}

/// BENCHMARKS.md for this run; `previous` is the run the file held
/// before, whose medians are shown beside the new ones.
pub fn render(report: &Report, run: &Run, previous: Option<&Previous>) -> String {
    let m = &run.machine;
    let mut out = String::new();
    let _ = write!(
        out,
        "# Warren benchmarks\n\n\
         *Written by `cargo bench --bench scenarios` (the harness in `benches/`); rerun it to \
         refresh this file. Do not edit by hand: the next run overwrites it.*\n\n\
         The harness runs the real `warren` binary (release build) against the real RabbitMQ \
         on 127.0.0.1:5672 and real git repositories, and reports the median, p95 and max of \
         every measurement against the targets of issues 7, 14, 15, 16, 18 and 19. `cargo test \
         --test bench_smoke` runs every scenario once at a tiny size.\n\n\
         ## Machine and run\n\n\
         | | |\n|---|---|\n\
         | measured commit | {} |\n\
         | run | {}, {:.0} s |\n\
         | CPU | {} cores, {} |\n\
         | memory | {:.1} GiB |\n\
         | kernel | Linux {} |\n\
         | RabbitMQ | {} on Erlang {} (Debian package, single node, quorum queues) |\n\
         | git | {} |\n\
         | load average (1 min) | {:.2} at the start, {:.2} at the end |\n\n\
         **Noise.** This is a shared 2-core VM: other work (builds and test suites of other \
         sessions, against the same broker) ran at the same time, so the numbers are noisy and \
         on the pessimistic side; the load average per scenario is in its section. Compare \
         medians, and rerun before drawing conclusions from a single p95 or max.\n\n\
         **Judging.** A target that names the median is judged on the median, one that names \
         the p99 on the p99 (given in the verdict); bounds on recovery, memory and page \
         renders must hold for every sample (the max); rates are judged on the measured rate. Whole-system runs (throughput, memory peaks) are repeated only a few \
         times, so their n is small.\n\n",
        run.commit,
        run.started,
        run.seconds,
        m.cores,
        m.cpu_model,
        m.memory_gib,
        m.kernel,
        m.rabbitmq_version,
        m.erlang_version,
        m.git_version,
        run.load.0,
        run.load.1,
    );
    if let Some(previous) = previous {
        let _ = write!(
            out,
            "The **before** column is the median of the same metric in the previous run of this \
             file (commit {}), so every run shows what changed since.\n\n",
            previous.commit
        );
    }
    let _ = write!(out, "## Results\n\n{}\n", report.markdown_table(previous));
    let _ = write!(out, "{}", crate::harness::analysis::render(report));
    for section in &report.sections {
        let _ = write!(
            out,
            "## {}. {}\n\n*{:.0} s; load average {:.2} → {:.2}.*\n\n{}",
            section.id,
            section.title,
            section.seconds,
            section.load.0,
            section.load.1,
            section.details
        );
        for skipped in &section.skipped {
            let _ = writeln!(out, "Skipped: {skipped}\n");
        }
    }
    out
}
