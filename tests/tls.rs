//! Issue 6: `amqps://` against a broker with a self-signed certificate.
//! A private node gets a TLS listener with a certificate signed by a CA made
//! for the test; Warren trusts that CA through `SSL_CERT_FILE` (read by
//! rustls-native-certs, which lapin uses) and a commit flows end to end over
//! TLS. Without the CA, the connection is refused for the certificate and
//! the component says so and keeps retrying.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::rabbit::{free_node_port, private_namespace, PrivateNode};
use common::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for `localhost` signed by it, in `dir`.
fn make_certificates(dir: &Path) {
    let days = ["-days", "2"];
    openssl(
        dir,
        &[
            &["req", "-x509", "-newkey", "rsa:2048", "-nodes"][..],
            &["-keyout", "ca.key", "-out", "ca.pem"],
            &["-subj", "/CN=warren-test-ca"],
            &days,
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = DNS:localhost, IP:127.0.0.1\nbasicConstraints = CA:FALSE\n",
    )
    .expect("write server.ext");
    openssl(
        dir,
        &[
            &["x509", "-req", "-in", "server.csr", "-CA", "ca.pem"][..],
            &["-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem"],
            &["-extfile", "server.ext"],
            &days,
        ]
        .concat(),
    );
}

#[test]
fn amqps_with_a_self_signed_certificate_carries_a_commit_end_to_end() {
    let scratch = Scratch::new();
    let certs = scratch.join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    make_certificates(&certs);
    let tls_port = free_node_port();
    let file = |name: &str| certs.join(name).to_str().expect("utf8").to_string();
    let node = PrivateNode::start(&format!(
        "listeners.ssl.default = {tls_port}\n\
         ssl_options.cacertfile = {}\n\
         ssl_options.certfile = {}\n\
         ssl_options.keyfile = {}\n\
         ssl_options.verify = verify_none\n\
         ssl_options.fail_if_no_peer_cert = false\n",
        file("ca.pem"),
        file("server.pem"),
        file("server.key"),
    ));
    let ns = private_namespace("tls");
    let url = format!("amqps://guest:guest@localhost:{tls_port}/%2f");
    let ca = file("ca.pem");
    let trust = [("SSL_CERT_FILE", ca.as_str())];
    let amqp = ["--amqp-url", url.as_str()];

    let repo = Repo::new(scratch.join("repo"));
    repo.write("value.txt", "over tls\n");
    let commit = repo.commit("a commit tested over amqps");
    let management = node.management_url();
    let dispatcher = Dispatcher::start_with_env(
        &ns,
        &scratch,
        &[amqp[0], amqp[1], "--management-url", &management],
        &trust,
    );
    let _runner = runner_with_env(
        &ns,
        &scratch,
        "r1",
        &[amqp[0], amqp[1], "--test-command", "cat value.txt"],
        &trust,
    );
    let _observer = observer_with_env(&ns, &scratch, repo.path_str(), &amqp, &trust);
    let jobs = dispatcher
        .api()
        .wait_terminal(std::slice::from_ref(&commit), Duration::from_secs(60));
    let job = one_job(&jobs, &commit);
    assert_eq!(job["status"], "passed", "{job}");
    let id = job["id"].as_str().expect("id");
    assert!(dispatcher.api().log(id).contains("over tls"));
    // The connections really are TLS: the broker lists every one of them
    // (dispatcher, runner, observer) on the TLS port, as TLS.
    let connections = node.ctl(&[
        "list_connections",
        "--quiet",
        "--no-table-headers",
        "port",
        "ssl",
    ]);
    let listed = String::from_utf8_lossy(&connections.stdout).into_owned();
    let rows: Vec<&str> = listed.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(rows.len() >= 3, "{listed}");
    let expected = format!("{tls_port}\ttrue");
    assert!(rows.iter().all(|row| *row == expected), "{listed}");

    // Without the CA the certificate is refused, and said so.
    let untrusting = runner(&ns, &scratch, "untrusting", &amqp);
    wait_for("a certificate error", Duration::from_secs(30), || {
        let log = untrusting.log_text();
        (log.contains("certificate") && log.contains("retrying")).then_some(())
    });
    assert!(!untrusting.log_text().contains("guest:guest"));
}
