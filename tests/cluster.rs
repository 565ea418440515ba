//! Issue 17, "A broker cluster": three private RabbitMQ nodes on this
//! machine (tests/common/rabbit.rs) clustered, every component given all
//! three URLs. During a burst of commits the node that leads the work
//! queue is killed (SIGKILL); once it is back, the node the dispatcher is
//! connected to. Every commit ends with exactly one outcome and every
//! component reconnects to the remaining nodes by itself.

mod common;

use std::time::{Duration, Instant};

use common::rabbit::{private_namespace, PrivateCluster};
use common::*;

/// Waits until `proc` has logged `what` at least `times` times.
fn wait_logged(proc: &Proc, what: &str, times: usize, within: Duration) {
    wait_for(
        &format!("{} to log {what:?} {times} times", proc.name),
        within,
        || (log_count(proc, what) >= times).then_some(()),
    );
}

fn assert_alive(procs: &mut [&mut Proc]) {
    for proc in procs.iter_mut() {
        let status = proc.child.as_mut().map(|c| c.try_wait().expect("try_wait"));
        assert!(
            matches!(status, Some(None)),
            "{} exited ({status:?}); its log:\n{}",
            proc.name,
            proc.log_text()
        );
    }
}

#[test]
fn losing_a_node_of_three_loses_no_commit_and_every_component_reconnects_by_itself() {
    let clock = Instant::now();
    let mut cluster = PrivateCluster::start(3);
    let ns = private_namespace("cluster");
    let scratch = Scratch::new();
    let urls = cluster.amqp_urls();
    let list = urls.join(",");
    let (origin, staging) = origin_and_staging(&scratch);
    // A test that takes a moment, so that jobs are running when a node dies.
    staging.write(".warren-test", "sleep 0.5\ncat value.txt\n");
    staging.commit("a test that takes a moment");
    git(
        &staging.path,
        &["push", "-q", origin.path_str(), "HEAD:main"],
    );

    // Every way of naming the nodes: the flag repeated, a comma-separated
    // flag, the variable, the secret file.
    let url_file = scratch.join("amqp-urls");
    std::fs::write(&url_file, format!("{}\n", urls.join("\n"))).expect("url file");
    let url_file = url_file.to_str().expect("utf8").to_string();
    let management = cluster.nodes[0].management_url();
    let mut dispatcher_args = vec!["--management-url", management.as_str()];
    for url in &urls {
        dispatcher_args.extend(["--amqp-url", url.as_str()]);
    }
    let mut dispatcher = Dispatcher::start(&ns, &scratch, &dispatcher_args);
    let api = dispatcher.api();
    let mut r1 = runner(&ns, &scratch, "r1", &["--amqp-url", &list]);
    let mut r2 = runner_with_env(&ns, &scratch, "r2", &[], &[("WARREN_AMQP_URL", &list)]);
    let mut r3 = runner_with_env(
        &ns,
        &scratch,
        "r3",
        &[],
        &[("WARREN_AMQP_URL_FILE", &url_file)],
    );
    let mut obs = observer_with_env(
        &ns,
        &scratch,
        origin.path_str(),
        &[],
        &[("WARREN_AMQP_URL", &list)],
    );

    let work = ns.broker_config().names.work_queue();
    // The work queue is replicated on all three nodes (the broker's
    // default group size: no argument declared).
    wait_for("the work queue on 3 nodes", Duration::from_secs(30), || {
        (cluster.queue_members(&work).len() == 3).then_some(())
    });
    let mut commits = vec![head(&staging)];
    commits.extend(push_commits(&origin, &staging, 1..7));
    // The burst has begun. Its jobs are short, so by the time the API is
    // asked one may have ended already: started is running or ended.
    wait_for(
        "the burst's second commit to start",
        Duration::from_secs(60),
        || {
            let jobs = api.jobs_by_commit();
            let job = jobs.get(&commits[1])?.first()?.clone();
            (job["status"] != "queued").then_some(())
        },
    );

    // 1. The work queue's leader dies in the middle of the burst.
    let leader = wait_for("the work queue's leader", Duration::from_secs(20), || {
        cluster.queue_leader(&work)
    });
    let leader = cluster.index_of(&leader);
    cluster.nodes[leader].kill_hard();
    let killed_at = Instant::now();
    commits.extend(push_commits(&origin, &staging, 7..11));
    // Commits made while it is down are tested: the others took over.
    api.wait_terminal(&commits, Duration::from_secs(60));
    eprintln!(
        "with the work queue's leader down, every commit so far ended {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    cluster.nodes[leader].restart();

    // 2. Then the node the dispatcher is connected to.
    let on = wait_for(
        "the dispatcher's connection",
        Duration::from_secs(20),
        || cluster.connection_node("warren-dispatcher-"),
    );
    let on = cluster.index_of(&on);
    commits.extend(push_commits(&origin, &staging, 11..15));
    cluster.nodes[on].kill_hard();
    let killed_at = Instant::now();
    commits.extend(push_commits(&origin, &staging, 15..18));
    let jobs = api.wait_terminal(&commits, Duration::from_secs(60));
    eprintln!(
        "with the dispatcher's node down, every commit ended {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );

    for commit in &commits {
        let job = one_job(&jobs, commit);
        assert_eq!(job["status"], "passed", "{job}");
    }
    assert_eq!(api.jobs().len(), commits.len(), "one job per commit");
    // The dispatcher lost its node and connected to another by itself.
    wait_logged(
        &dispatcher.proc,
        "lost the broker",
        1,
        Duration::from_secs(5),
    );
    let log = dispatcher.proc.log_text();
    let lost = log.rfind("lost the broker").unwrap_or_default();
    assert!(
        log[lost..].contains("connected to the broker"),
        "the dispatcher reconnected:\n{log}"
    );
    assert_alive(&mut [&mut dispatcher.proc, &mut r1, &mut r2, &mut r3, &mut obs]);
    for proc in [&dispatcher.proc, &r1, &r2, &r3, &obs] {
        let log = proc.log_text();
        assert!(
            !log.contains(":guest@"),
            "{} logs a password:\n{log}",
            proc.name
        );
    }
    eprintln!(
        "cluster test: {} commits, {:.1} s in all",
        commits.len(),
        clock.elapsed().as_secs_f64()
    );
}

#[test]
fn the_cluster_deployment_loads_the_same_definitions_as_the_single_node_one() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |path: &str| {
        std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    assert_eq!(
        read("deploy/cluster/definitions.json"),
        read("broker/rabbitmq/definitions.json"),
        "copy broker/rabbitmq/definitions.json to deploy/cluster/"
    );
}
