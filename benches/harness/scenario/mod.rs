//! The six scenarios of issue 7, the pushes of issue 15, the sandbox of
//! issue 14, the pipelines of issue 16, the test splitting of issue 18
//! and the million-job store of issue 19. Each adds rows and details to a [`Report`]; [`run`] also notes
//! the load average and duration.

pub mod api;
pub mod failover;
pub mod latency;
pub mod million;
pub mod overhead;
pub mod pipelines;
pub mod pushes;
pub mod resources;
pub mod sandbox;
pub mod scale;
pub mod splitting;
pub mod throughput;

use std::time::Instant;

use crate::harness::system::load_average;
use crate::harness::{Report, Sizes};

/// The scenarios by number, in the order of the issues.
pub const ALL: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

/// Runs scenario `id`, printing its progress to stderr.
pub fn run(id: u8, sizes: &Sizes, report: &mut Report) {
    let title = report.section(id).title.clone();
    eprintln!("scenario {id}: {title} …");
    let load_before = load_average();
    let clock = Instant::now();
    match id {
        1 => latency::run(sizes, report),
        2 => overhead::run(sizes, report),
        3 => throughput::run(sizes, report),
        4 => failover::run(sizes, report),
        5 => resources::run(sizes, report),
        6 => api::run(sizes, report),
        7 => pushes::run(sizes, report),
        8 => sandbox::run(sizes, report),
        9 => pipelines::run(sizes, report),
        10 => splitting::run(sizes, report),
        11 => million::run(sizes, report),
        12 => scale::run(sizes, report),
        _ => panic!("no scenario {id}"),
    }
    let seconds = clock.elapsed().as_secs_f64();
    let section = report.section(id);
    section.load = (load_before, load_average());
    section.seconds = seconds;
    eprintln!("scenario {id}: done in {seconds:.1} s");
}
