//! `cargo bench --bench scenarios`: Warren's benchmark (issues 7, 14, 15,
//! 16, 18 and 19).
//!
//! Runs the real `warren` binary against the RabbitMQ on 127.0.0.1:5672
//! (and a private node of the same installation for the broker restart)
//! and real git repositories, prints a table, and writes BENCHMARKS.md at
//! the workspace root. `cargo bench --bench scenarios -- 2 6` runs only
//! scenarios 2 and 6 and prints their table, rows, verdicts, analysis and
//! sections in Markdown without writing the file. With `WARREN_AMQP_URL`
//! set, the scenarios use that broker instead (e.g. a private node when
//! the shared one cannot serve); scenarios 3 and 5 still count the CPU of
//! the broker listening on 5672.

#[path = "../tests/common/mod.rs"]
mod common;
mod harness;

use std::time::Instant;

use harness::scenario;
use harness::{Report, Sizes};

fn main() {
    let selected: Vec<u8> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .filter(|id| scenario::ALL.contains(id))
        .collect();
    let all = selected.is_empty();
    let selected = if all {
        scenario::ALL.to_vec()
    } else {
        selected
    };
    common::require_broker();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let machine = harness::system::machine();
    let commit = harness::system::measured_commit(root);
    let started = harness::markdown::utc_now();
    let load_before = harness::system::load_average();
    let clock = Instant::now();

    let sizes = Sizes::full();
    let mut report = Report::new();
    for id in &selected {
        scenario::run(*id, &sizes, &mut report);
    }
    let run = harness::markdown::Run {
        machine,
        commit,
        started,
        seconds: clock.elapsed().as_secs_f64(),
        load: (load_before, harness::system::load_average()),
    };
    println!("\n{}", report.console());
    println!(
        "{} scenario(s) in {:.0} s; load average {:.2} before, {:.2} after",
        selected.len(),
        run.seconds,
        run.load.0,
        run.load.1
    );
    if all {
        let path = root.join("BENCHMARKS.md");
        let previous = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| harness::report::Previous::parse(&text));
        std::fs::write(
            &path,
            harness::markdown::render(&report, &run, previous.as_ref()),
        )
        .expect("write BENCHMARKS.md");
        println!("wrote {}", path.display());
    } else {
        // What a full run would write for these scenarios: their rows of
        // the results table, their verdicts and analysis, their sections.
        println!("\n{}", report.markdown_table(None));
        println!("{}", harness::analysis::render(&report));
        for id in &selected {
            let section = report.section(*id);
            println!(
                "\n## {}. {}\n\n{}",
                section.id, section.title, section.details
            );
        }
        println!("(a partial run: BENCHMARKS.md not written)");
    }
}
