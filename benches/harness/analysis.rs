//! "Against the targets" and "Where the time goes": the verdicts, and for
//! each cost what it is made of and what in Warren could lower it. The
//! numbers come from this run (the report's facts); the profile notes are
//! marked as what they are: a one-time `perf` profile taken when the
//! harness was written.

use std::fmt::Write as _;

use crate::harness::report::{Goal, Report};

/// `value` formatted with `decimals`, or "?" when the scenario did not run.
fn num(report: &Report, name: &str, decimals: usize) -> String {
    report
        .get(name)
        .map(|v| format!("{v:.decimals$}"))
        .unwrap_or_else(|| "?".into())
}

fn verdicts(report: &Report) -> String {
    let mut out = String::from("## Against the targets\n\n");
    for (section, row) in report.all_rows() {
        if let (Some(target), Some(summary)) = (&row.target, row.summary()) {
            let _ = writeln!(
                out,
                "- {} **{}** — {} (median {} {u},{} max {} {u}; scenario {}).",
                if row.met() == Some(true) {
                    "✅"
                } else {
                    "❌"
                },
                if row.met() == Some(true) {
                    "met"
                } else {
                    "missed"
                },
                row.metric_with_target(target),
                row.unit.format(summary.median),
                if matches!(target.goal, Goal::P99AtMost(_)) {
                    format!(
                        " p99 {} {},",
                        row.unit.format(summary.p99),
                        row.unit.suffix()
                    )
                } else {
                    String::new()
                },
                row.unit.format(summary.max),
                section.id,
                u = row.unit.suffix(),
            );
        }
    }
    out.push('\n');
    out
}

pub fn render(report: &Report) -> String {
    let mut out = verdicts(report);
    out.push_str("## Where the time goes\n\n");
    let n = |name: &str, decimals: usize| num(report, name, decimals);

    // Scenario 2.
    if report.get("overhead.fetch.total").is_some() {
        let _ = write!(
            out,
            "### Per job: process starts, and `git fetch` where there is one\n\n\
             A job for a new commit of a repository named by its path costs the runner {} ms \
             (median, receipt to ack): the runner's clone shares the repository's objects \
             (`git clone --shared`), so the commit is already there and is checked out at once. \
             Named by a URL, the same job costs {} ms, {} ms of it fetching. A job whose commit \
             is already fetched costs {} ms: announcing it {} ms, checkout {} ms, clean {} ms, \
             the test's processes (`warren supervise` → `bwrap` → `sh -c true`) {} ms, \
             publishing the result with its confirm {} ms, the ack {} ms, the rest {} ms. On a \
             runner with `--sandbox none` the same job costs {} ms, of it {} ms for the test's \
             processes (`warren supervise` → `sh -c true`): Warren's own part, to which the \
             sandbox adds its namespaces (scenario 8). The broker's part (two confirmed \
             publishes and an ack) is small; the runner's time goes into the processes it \
             starts.\n\n\
             Every job starts `git checkout` and the test's processes (`warren supervise`, \
             `bwrap`, `sh`); `git clean` runs only when the last job changed the tree (below); \
             a new commit by URL adds seven: the first checkout, which fails, and `git fetch` with the five \
             it runs (`git-upload-pack`, `git pack-objects`, `git unpack-objects`, `git rev-list` \
             for the connectivity check and `git maintenance run --auto`). \
             On this machine a process costs {} ms to start and reap even when it does nothing \
             (`git --version`; `sh -c true` {} ms). A one-time profile taken when the harness was \
             written (`perf record -a -e cpu-clock`, 8 s of a one-runner drain on the shared \
             machine) found git processes at 29 % of all samples, RabbitMQ's schedulers at about \
             13 % and the runner's main thread (which runs its job loop) at 10 %; over a quarter \
             of git's CPU was glibc's loader probing cache sizes with `cpuid` \
             (`intel_check_word`, `handle_intel`, `init_cpu_features`), an instruction this VM's \
             hypervisor traps. Process start is therefore unusually expensive here, and the same \
             jobs cost less on bare metal — but the count of processes per job is Warren's to \
             lower. Done after that profile:\n\n\
             - **Local repositories are shared, not fetched.** The first run of this harness \
             measured 44.5 ms per new commit by path, 29 ms of it `git fetch`; the shared clone \
             removes the fetch for `warren up` and for every runner on the repository's machine. \
             If the repository later loses objects the clone used (a force push and a gc), the \
             checkout fails, the clone counts as broken and is made again.\n\
             - **No checks before the checkout.** The runner used to ask git whether its clone \
             was sound (`git rev-parse`) and had the commit (`git cat-file`) before every \
             checkout, and again after a fetch; it now checks out at once and asks only when \
             the checkout fails: two to three processes fewer per job.\n\
             - **Leftover processes are found in `/proc/self/task/*/children`.** After every test \
             the runner used to read the status of every process on the machine on an async \
             worker (≈ 1.5 ms per job with ~150 processes, a third of the runner's main thread \
             in the profile); it now reads its own threads' child lists, on a blocking thread, \
             still before the next job starts.\n\
             - **`git clean` only when the tree changed.** Right after each checkout and clean \
             the runner keeps a digest of the work tree's paths (with their types) and of \
             `.git/index`; when the next job finds both the same, the last test created, \
             removed or retyped nothing and left the index alone, so `git clean` would remove \
             nothing and is skipped (one process, 2–3 ms). Anything else (a build's output, an \
             edited index, a tree over 10,000 entries) and it runs as before.\n\
             - **One optimisation unit.** The release build is linked with `lto = \"fat\"` and \
             one codegen unit: the binary went from 27 to 19 MB and its relocations at start \
             from 36,000 to 17,000, which every `warren supervise` pays.\n\
             - **Timings to 10 µs.** The runner's timing lines (`checkout_ms`, `test_ms`, \
             `publish_ms`, …) had whole milliseconds, so every part lost up to 1 ms to \
             \"the rest\"; they now have hundredths.\n\
             - **git without a copy of the runner.** The runner's git gets an environment of its \
             own; named plain `git`, that made the standard library fork the runner (copying its \
             page tables: `copy_page_range` was 6 % of the CPU of the runner and its children \
             in a 1-runner drain) and search the PATH on every call. git is now named by the \
             absolute path found on that PATH and started with `posix_spawn`, which borrows \
             the runner's memory until the exec.\n\n\
             Left as they are:\n\n\
             1. **Fetching by URL.** The fetch is `git fetch` and the five processes it starts. \
             `git fetch origin \
             <branch>` instead of every ref would shorten negotiation on repositories with many \
             refs, not the process count; turning off `git maintenance run --auto` would save \
             one process but let the clone's loose objects pile up.\n\
             2. **The test's processes.** `warren supervise` is the whole `warren` binary, \
             started for every job (about 2 ms here to load and relocate 19 MB, most of it \
             page faults; 2.6 ms for 27 MB before the release build was linked as one unit, \
             `lto = \"fat\"`); bubblewrap's namespaces and mounts cost about 4 ms more (scenario \
             8); the runner still forks itself to start the supervisor (its start-up hook moves \
             it into the job's cgroup). A small supervisor binary, or a pre-forked helper that \
             starts the supervisors, would save about 2 ms a job; one binary to deploy was kept.\n\n",
            n("overhead.shared.total", 1),
            n("overhead.fetch.total", 1),
            n("overhead.fetch.fetch", 1),
            n("overhead.warm.total", 1),
            n("overhead.warm.announce", 1),
            n("overhead.warm.checkout", 1),
            n("overhead.warm.clean", 1),
            n("overhead.warm.process", 1),
            n("overhead.warm.publish", 1),
            n("overhead.warm.ack", 1),
            n("overhead.warm.other", 1),
            n("overhead.bare.total", 1),
            n("overhead.bare.process", 1),
            n("machine.git_start_ms", 1),
            n("machine.sh_start_ms", 1),
        );
    }

    // Scenario 3.
    if let Some(runner) = report.get("throughput.cpu_ms_per_job.runner") {
        let git = report
            .get("throughput.cpu_ms_per_job.git_and_test")
            .unwrap_or(f64::NAN);
        let dispatcher = report
            .get("throughput.cpu_ms_per_job.dispatcher")
            .unwrap_or(f64::NAN);
        let rabbitmq = report
            .get("throughput.cpu_ms_per_job.rabbitmq")
            .unwrap_or(f64::NAN);
        let total = runner + git + dispatcher + rabbitmq;
        let cores = std::thread::available_parallelism()
            .map(|c| c.get())
            .unwrap_or(1) as f64;
        let reference = report
            .get("throughput.reference_runners")
            .unwrap_or(f64::NAN);
        let most = report.get("throughput.max_runners").unwrap_or(f64::NAN);
        let rate = |runners: f64| report.get(&format!("throughput.rate.{runners}"));
        let more = match (rate(reference), rate(most)) {
            (Some(at_reference), Some(at_most)) if most > reference => {
                if at_most <= at_reference * 1.15 {
                    format!(
                        ", and {most} runners drained at {at_most:.0} jobs/s against \
                         {at_reference:.0} with {reference}: more runners add little"
                    )
                } else {
                    format!(
                        "; {most} runners still drained faster ({at_most:.0} jobs/s against \
                         {at_reference:.0} with {reference})"
                    )
                }
            }
            _ => String::new(),
        };
        let _ = write!(
            out,
            "### Throughput: the CPU is the ceiling\n\n\
             With {} runners the machine was {} % busy during the drains (all cores, including \
             the other work sharing it){more}. One job costs about {:.1} ms of CPU in all: the runner itself {:.1} ms, the \
             git and sh processes it starts {:.1} ms, the dispatcher {:.1} ms (three SQLite \
             transactions and a log file), RabbitMQ {:.1} ms (three confirmed persistent \
             publishes into quorum queues, two deliveries, acks; the whole broker process, which \
             also served the other work on the machine). That bounds {:.0} cores at \
             roughly {:.0} jobs/s with the machine to itself. Waiting for confirms and fsyncs \
             overlaps across runners; CPU does not — so once the cores are busy, fewer processes \
             per job (above) is what raises throughput.\n\n",
            n("throughput.reference_runners", 0),
            n("throughput.machine_busy", 0),
            total,
            runner,
            git,
            dispatcher,
            rabbitmq,
            cores,
            cores * 1000.0 / total,
        );
        if let Some(rate) = report.get("throughput.observer_publish_per_s") {
            let _ = write!(
                out,
                "**The observer published {rate:.0} commits/s** here, sharing the cores with \
                 four runners draining the same commits. It sends a poll's commits pipelined \
                 and awaits the confirms in order, moving its state only past confirmed \
                 commits; alone, a branch moving by 10,000 commits is published at {} \
                 commits/s (scenario 12).\n\n",
                n("scale.observer_per_s", 0)
            );
        }
    }

    // Scenario 4.
    if report.get("restart.reconnect.max").is_some() {
        let _ = write!(
            out,
            "### Failover: the broker and the lease do the work; the reconnect backoff is the \
             slack\n\n\
             SIGKILL failover is RabbitMQ's: the kernel closes the dead runner's socket, the \
             broker requeues the unacked job and delivers it to the idle runner within \
             milliseconds. SIGSTOP failover is the lease: a frozen runner's job moves after the \
             lease (counted from its last heartbeat) plus up to 0.5 s until the dispatcher's next \
             check plus closing the connection through the management API (here the lease \
             expired {} ms after the SIGSTOP at the median and the close took {} ms more; the \
             close first lists every connection on the broker, `GET /api/connections`, so it \
             grows with the broker's size). After a broker \
             restart the components reconnect with a backoff that doubles from 0.2 s up to 1 s \
             (it went up to 5 s when the harness was written, and the first result after a \
             restart then took up to 4 s): a component notices the broker is back within about \
             a second, and the first result waits for it (here: dispatcher back after {} ms, \
             runners after {} ms at the median, {} ms at worst).\n\n",
            n("stop.lease_expired", 0),
            n("stop.close_ms", 0),
            n("restart.reconnect.dispatcher", 0),
            n("restart.reconnect.runners", 0),
            n("restart.reconnect.max", 0),
        );
    }

    // Scenario 1.
    if let Some(wait) = report.get("latency.0.2.poll_wait") {
        let _ = write!(
            out,
            "### Commit to start: the polling interval\n\n\
             From `git commit` to the job starting is the wait for the observer's next poll \
             (uniform over the interval, so interval/2 at the median: {wait:.0} ms at 0.2 s, \
             {} ms at 1 s) plus {} ms to publish, confirm, route and deliver the job. Each poll \
             of a local repository costs one `git rev-parse` per watched branch, so 0.2 s \
             polling starts five git processes a second per branch. Commit to outcome adds the \
             per-job work above and the dispatcher recording the result ({} ms at the median \
             at 0.2 s).\n\n",
            n("latency.1.poll_wait", 0),
            n("latency.0.2.to_runner", 0),
            n("latency.0.2.start_to_recorded", 0),
        );
    }

    // Scenario 7.
    if report.get("pushes.to_start").is_some() {
        let _ = write!(
            out,
            "### Push to start: no poll wait; the observer's state file is most of what is left\n\n\
             A webhook takes a commit to an idle runner in {} ms (median) instead of the wait for \
             the next poll: {} ms until the observer has made the job — reading the request, \
             checking the signature, parsing the payload, handing the push to the repository's \
             watcher, and writing the watcher's state file ahead of the publish (a temporary \
             file, fsync, rename, fsync of the folder) — then {} ms to publish, route and \
             deliver it. The forge gets its answer {} ms after the POST: after the confirm ({} \
             ms), the watcher writes its state file once more, the confirmed commit and the \
             delivery id together ({} ms); the write ahead stays (it is what keeps a crash from \
             losing a publish in flight).\n\n",
            n("pushes.to_start", 1),
            n("pushes.to_made", 1),
            n("pushes.made_to_start", 1),
            n("pushes.answered", 1),
            n("pushes.confirmed", 1),
            report
                .get("pushes.answered")
                .zip(report.get("pushes.confirmed"))
                .map(|(answered, confirmed)| format!("{:.1}", answered - confirmed))
                .unwrap_or_else(|| "?".into()),
        );
        if report.get("pushes.burst.answer").is_some() {
            let _ = write!(
                out,
                "**A push of many commits** is answered once all of them are confirmed: {} ms to \
                 read what the payload left out from the repository (one `git rev-list`) and \
                 publish the first, {} ms for the rest (published in batches of 256, each \
                 batch's confirms awaited together, one state write per batch), {} s in all. The \
                 dispatcher records them behind the observer, at about {} jobs/s (one store write \
                 each, then the ack), so all are in its API {} s after the POST.\n\n",
                n("pushes.burst.to_first", 0),
                n("pushes.burst.first_to_last", 0),
                n("pushes.burst.answer", 2),
                n("pushes.burst.recorded_per_s", 0),
                n("pushes.burst.recorded", 2),
            );
        }
        if let Some(cpu) = report.get("pushes.many.cpu") {
            let count = report.get("pushes.many.count").unwrap_or(f64::NAN);
            let poll = report.get("pushes.many.poll").unwrap_or(f64::NAN);
            let _ = write!(
                out,
                "**Many repositories cost the observer git processes, not memory.** Polling a \
                 local repository runs two git processes (`git symbolic-ref` for the HEAD branch, \
                 `git rev-parse` for its head), so {count:.0} repositories every {poll} s start \
                 about {:.0} a second; they are {} % of the {cpu:.2} % of a core the observer \
                 used, the observer itself {} %. Its resident memory peaked at {} MiB. A \
                 repository named by URL adds a `git fetch` (and the processes it starts) to \
                 every poll.\n\n",
                count * 2.0 / poll,
                n("pushes.many.git", 2),
                n("pushes.many.own", 2),
                n("pushes.many.peak", 1),
            );
        }
    }
    // Scenario 8.
    if let Some(cost) = report.get("sandbox.cost") {
        let _ = write!(
            out,
            "### The sandbox: one bubblewrap per job; a job's cgroup: one move into it\n\n\
             Running a job in the sandbox costs {cost:.1} ms (the median test step of `true`: \
             {} ms with `--sandbox none`, {} ms with `--sandbox bwrap`). The difference is in \
             the test process (`test_ms` {} ms against {} ms; the rest of the step {} ms \
             against {} ms): `bwrap` started between the runner's supervisor and `sh`, making \
             new mount, PID, IPC and UTS namespaces, mounting the system read-only, a `/proc`, \
             a `/dev`, a `/tmp` and a `HOME` of its own and the checkout, and reporting the \
             test's exit on a status pipe. For scale, the harness measured `sh -c true` at {} \
             ms and the same in a comparable bubblewrap sandbox at {} ms. A sandbox kept from \
             one job to the next would save this, at the price of what a job could leave for \
             the next — which is what the sandbox is there to stop.\n\n\
             **A cgroup per job** (`--job-memory 512M`) adds {} ms more ({} ms in all against \
             `none`). Making it and removing it is not where that goes (the rest of the step \
             {} ms, against {} ms with `bwrap` alone); the test process is slower to start \
             (`test_ms` {} ms against {} ms): the supervisor enters the job's cgroup between \
             fork and exec by writing to its `cgroup.procs`, and the kernel's lock for moving \
             processes between cgroups (`cgroup_threadgroup_rwsem`, a per-CPU rwsem) waits \
             for an RCU grace period unless a move happened just before. Tried by hand on this \
             machine (cgroup v1 memory hierarchy): moving a process into a new memory cgroup \
             took 0.2–0.4 ms when the moves came back to back and 7–16 ms when they were \
             50 ms apart, as jobs are. What would lower it: on cgroup v2, starting the test in \
             its cgroup instead of moving it there (`clone3` with `CLONE_INTO_CGROUP`), or \
             the hierarchy mounted with `favordynmods`; without a cgroup, `--job-memory` falls \
             back to `RLIMIT_AS`, which costs nothing per job but limits address space, not \
             memory.\n\n",
            n("sandbox.none.step", 1),
            n("sandbox.bwrap.step", 1),
            n("sandbox.bwrap.process", 1),
            n("sandbox.none.process", 1),
            n("sandbox.bwrap.rest", 1),
            n("sandbox.none.rest", 1),
            n("sandbox.sh_start_ms", 1),
            n("sandbox.bwrap_start_ms", 1),
            n("sandbox.cgroup_only", 1),
            n("sandbox.cgroup_cost", 1),
            n("sandbox.cgroup.rest", 1),
            n("sandbox.bwrap.rest", 1),
            n("sandbox.cgroup.process", 1),
            n("sandbox.bwrap.process", 1),
        );
    }
    // Scenario 9.
    if let Some(gap) = report.get("pipelines.gap.1") {
        let slowest = match (
            report.get("pipelines.gap.1.max"),
            report.get("pipelines.gap.1.max_publish"),
        ) {
            (Some(max), Some(publish)) if publish >= max / 2.0 => format!(
                " The slowest gap with one runner, {max:.0} ms, held {publish:.0} ms of its runner \
                 waiting for the broker to confirm the result ({} ms at the median): a slow \
                 broker, not work the pipeline adds.",
                n("pipelines.gap.1.publish", 0)
            ),
            (Some(max), _) => format!(" The slowest gap with one runner was {max:.0} ms."),
            _ => String::new(),
        };
        let scenario_3 = report
            .get("throughput.rate.4")
            .map(|rate| format!(" (scenario 3's flat queue drains at {rate:.0} with four)"))
            .unwrap_or_default();
        let _ = write!(
            out,
            "### Pipelines: a released job is one transaction and one publish away\n\n\
             Between two jobs of a chain {gap:.1} ms pass at the median with one runner ({} ms \
             with two; target ≤ 20 ms). {} ms of it go until the dispatcher has stored the \
             previous job's outcome and, in the same transaction, released the next job into the \
             outbox (on the runner's side, the result published and confirmed and the job acked: \
             {} ms); {} ms \
             more until a runner has the next job: the event bus wakes the outbox task, which \
             reads the row and the job, publishes it to the work queue, and the broker pushes it \
             to the runner consuming it. The confirm and the row marked sent come after ({} ms \
             after the record) and are not on the path; neither is the poll of the outbox \
             (every second, for rows a dead dispatcher left).{slowest} A chain job's own cost \
             (checkout and `true`: {} ms, scenario 2's per-job overhead) is larger than the gap, \
             so a chain of ten trivial jobs and its plan take {} ms, mostly in the jobs. A \
             {}-job fan-out over {} runners ran at {} jobs/s{scenario_3}: the first job started \
             {} ms after the plan ended and the outbox had every job published and confirmed \
             {} ms after it, so the runners, {} jobs each on {} shared cores, set the pace.\n\n",
            n("pipelines.gap.2", 1),
            n("pipelines.gap.1.to_recorded", 1),
            n("pipelines.gap.1.runner_done", 1),
            n("pipelines.gap.1.recorded_to_start", 1),
            n("pipelines.gap.1.recorded_to_published", 1),
            n("pipelines.job.1", 1),
            n("pipelines.whole.1", 0),
            n("pipelines.fanout.jobs", 0),
            n("pipelines.fanout.runners", 0),
            n("pipelines.fanout.rate", 0),
            n("pipelines.fanout.to_first", 0),
            n("pipelines.fanout.published", 0),
            report
                .get("pipelines.fanout.jobs")
                .zip(report.get("pipelines.fanout.runners"))
                .map(|(jobs, runners)| format!("{:.0}", jobs / runners))
                .unwrap_or_else(|| "?".into()),
            std::thread::available_parallelism()
                .map(|c| c.get())
                .unwrap_or(1),
        );
    }
    // Scenarios 11 and 12.
    if report.get("million.sqlite.ready_ms").is_some()
        || report.get("scale.results.sqlite").is_some()
    {
        let _ = write!(
            out,
            "### A million jobs: every page is one index range; a results backlog: one \
             transaction per batch\n\n\
             On a million jobs every page the API serves is read newest first from one index: \
             the first page, a page deep in history (`before=` is a keyset on `seq`, never an \
             `OFFSET`), one job by its id, and every combination of the `status`, `repo` and \
             `branch` filters (migration 0008 gave each combination its index; before it a \
             filter matching few jobs of the large repository walked that repository's \
             history: 0.35 s for `status=error&repo=…monorepo&branch=feature-101` on SQLite). \
             `/metrics` reads no table: its counters are loaded once at start (one pass over \
             the jobs, most of the {} ms from start to ready on SQLite, {} ms on PostgreSQL) \
             and then moved by the job events. The dispatcher's memory does not grow with the \
             store: nothing of it is cached beyond a page.\n\n\
             Results are recorded in batches: up to 128 results already waiting in the \
             dispatcher's prefetch (256, so the next batch arrives while one is recorded) go \
             into one transaction, their logs and their runners' counts written with one \
             statement each, then each result is acked. From a backlog of 20,000 that records \
             {} results/s on SQLite (810/s with a transaction per result) and {} on \
             PostgreSQL (426/s with a transaction per result; 1,148/s with batches whose \
             results took three statements each, 64 to a batch). On PostgreSQL every \
             statement is a round trip (about 0.2 ms here; the cores were not saturated, about \
             30 % idle in a run watched with vmstat), so a batch now costs five whatever its \
             size: all its known jobs locked in one `UPDATE … WHERE id IN (…)`; one query for \
             which of those that are their own pipeline have a job waiting in it; the \
             outcomes of every job whose result needs nothing else first (not a plan, not a \
             part of a split job) in one `UPDATE … FROM (VALUES …)`; the logs; the runners' \
             counts. Each result is then finished in order (released jobs, skips, plans, \
             split tests), and up to 128 results make a batch. Each outcome still rewrites \
             the job's row and an entry in each of the table's twelve indexes (a change of \
             an indexed status is never a heap-only update) and its trigger writes the change \
             row the announcer reads and deletes again.\n\n\
             Trivial jobs stay well under the 300 jobs/s target with 4 runners, and the \
             per-job overhead with the default sandbox over the 10 ms target (scenarios 2 \
             and 3). At 300 jobs/s two \
             cores allow 6.7 ms of CPU per job in all; a job costs about {} ms here \
             (Throughput): the processes it starts (`git checkout`, `warren supervise`, \
             `bwrap`, `sh`) {} ms, the runner {} ms, the dispatcher {} ms, RabbitMQ {} ms \
             (three confirmed persistent publishes into quorum queues, two deliveries). The \
             broker and the dispatcher alone use most of what the target allows, and a \
             process start costs 1–2.5 ms on this VM (Per job). Without a sandbox a job's \
             overhead is {} ms (scenario 2, against 10 ms); with the default sandbox, \
             bubblewrap's namespaces add about 4 ms (scenario 8). Meeting the targets here \
             would take jobs that start no process of their own (an in-process checkout, no \
             supervisor, no sandbox) and messages that are not each a confirmed write to a \
             replicated queue: the guarantees this design keeps.\n\n",
            n("million.sqlite.ready_ms", 0),
            n("million.postgresql.ready_ms", 0),
            n("scale.results.sqlite", 0),
            n("scale.results.postgresql", 0),
            n("throughput.cpu_ms_per_job.total", 1),
            n("throughput.cpu_ms_per_job.git_and_test", 1),
            n("throughput.cpu_ms_per_job.runner", 1),
            n("throughput.cpu_ms_per_job.dispatcher", 1),
            n("throughput.cpu_ms_per_job.rabbitmq", 1),
            n("overhead.bare.total", 1),
        );
    }
    out
}
