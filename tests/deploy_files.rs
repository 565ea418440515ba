//! Keeps the deployment files honest without a Docker engine or a cluster:
//! compose.yaml, the Dockerfile, broker/rabbitmq/ and deploy/kubernetes/ are
//! parsed and checked against the real `warren` binary (its subcommands,
//! flags, `WARREN_*` variables, defaults and generated definitions) and
//! against the files of the repository.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;

const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// The compose services that run `warren`.
const WARREN_SERVICES: [&str; 3] = ["dispatcher", "observer", "runner"];

/// Environment keys a Warren container may set besides the `WARREN_*` ones
/// that `warren <sub> --help` lists: RUST_LOG is read by the log filter
/// (tracing's EnvFilter), not by clap, so no help text shows it.
const OTHER_ENV: [&str; 1] = ["RUST_LOG"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    let full = root().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

fn warren(args: &[&str]) -> String {
    let output = Command::new(WARREN)
        .args(args)
        // Variables of the test's own environment must not change defaults.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("running warren");
    assert!(
        output.status.success(),
        "warren {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("warren prints UTF-8")
}

/// What `warren <sub> --help` says a subcommand accepts.
struct Help {
    text: String,
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
}

impl Help {
    fn of(sub: &str) -> Help {
        let text = warren(&[sub, "--help"]);
        let flags = text
            .split_whitespace()
            .map(|w| w.trim_matches(|c| c == ',' || c == '[' || c == ']'))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| w.split('=').next().unwrap_or(w).to_string())
            .collect();
        let env = text
            .match_indices("[env: ")
            .map(|(at, m)| {
                let rest = &text[at + m.len()..];
                let end = rest.find(['=', ']']).unwrap_or(rest.len());
                rest[..end].to_string()
            })
            .collect();
        Help { text, flags, env }
    }

    /// The `[default: ...]` shown for `flag`, if any.
    fn default_of(&self, flag: &str) -> Option<String> {
        let mut lines = self.text.lines().skip_while(|line| {
            !line
                .split_whitespace()
                .any(|w| w.trim_end_matches(',') == flag)
        });
        let first = lines.next()?;
        // The option's entry ends where the next option or section begins.
        let rest = lines.take_while(|line| {
            let trimmed = line.trim_start();
            !trimmed.starts_with('-') && (trimmed.is_empty() || line.starts_with(' '))
        });
        let entry: String = std::iter::once(first)
            .chain(rest)
            .collect::<Vec<_>>()
            .join("\n");
        let at = entry.find("[default: ")?;
        let value = &entry[at + "[default: ".len()..];
        Some(value[..value.find(']')?].to_string())
    }
}

/// The subcommands `warren --help` lists.
fn subcommands() -> BTreeSet<String> {
    let help = warren(&["--help"]);
    let section = help
        .split("Commands:")
        .nth(1)
        .expect("warren --help lists its commands");
    section
        .lines()
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Replaces `${VAR:-default}` / `${VAR-default}` with the default and
/// `${VAR}` / `${VAR:?message}` with `<VAR>`: what compose would use
/// when the variable is not set.
fn interpolate_defaults(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${...}") + start;
        let inner = &rest[start + 2..end];
        let name_end = inner
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(inner.len());
        let (name, operator) = inner.split_at(name_end);
        match operator
            .strip_prefix(":-")
            .or_else(|| operator.strip_prefix('-'))
        {
            Some(default) => out.push_str(default),
            None => out.push_str(&format!("<{name}>")),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Every variable compose interpolates (`${VAR...}`).
fn interpolated_variables(text: &str) -> BTreeSet<String> {
    text.match_indices("${")
        .map(|(at, _)| {
            let inner = &text[at + 2..];
            let end = inner
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(inner.len());
            inner[..end].to_string()
        })
        .collect()
}

fn compose() -> Value {
    let mut value: Value =
        serde_norway::from_str(&read("compose.yaml")).expect("compose.yaml is YAML");
    value.apply_merge().expect("merge keys in compose.yaml");
    value
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("compose.yaml has no service {name}"))
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Sequence(items) => items.iter().map(scalar).collect(),
        Value::Null => Vec::new(),
        other => vec![scalar(other)],
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// A service's environment as key -> value (None: passed through from the
/// shell or .env, unset otherwise).
fn environment(service: &Value) -> BTreeMap<String, Option<String>> {
    match &service["environment"] {
        Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| (scalar(k), if v.is_null() { None } else { Some(scalar(v)) }))
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                let item = scalar(item);
                match item.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (item, None),
                }
            })
            .collect(),
        Value::Null => BTreeMap::new(),
        other => panic!("environment must be a map or a list, got {other:?}"),
    }
}

/// Checks one `warren` invocation (a compose command, a Kubernetes
/// container's args) and its environment against the real command line;
/// returns the subcommand's help.
fn check_invocation(place: &str, args: &[String], env: &BTreeMap<String, Option<String>>) -> Help {
    let subcommands = subcommands();
    let sub = args
        .first()
        .unwrap_or_else(|| panic!("{place}: no subcommand"));
    assert!(
        subcommands.contains(sub)
            && ["observer", "runner", "dispatcher", "up"].contains(&sub.as_str()),
        "{place}: {sub:?} is not a warren service subcommand (warren has {subcommands:?})"
    );
    let help = Help::of(sub);
    for arg in args.iter().filter(|a| a.starts_with("--")) {
        let flag = arg.split('=').next().unwrap_or(arg);
        assert!(
            help.flags.contains(flag),
            "{place}: `warren {sub}` does not accept {flag} (it takes {:?})",
            help.flags
        );
    }
    for key in env.keys() {
        if key.starts_with("WARREN_") {
            // A secret may be given as a file: `X_FILE` names it, for each
            // `X` whose help says so.
            let file_of = key
                .strip_suffix("_FILE")
                .filter(|stem| help.env.contains(*stem) && help.text.contains(key.as_str()));
            assert!(
                help.env.contains(key) || file_of.is_some(),
                "{place}: `warren {sub}` does not read {key} (it reads {:?})",
                help.env
            );
        } else {
            assert!(
                OTHER_ENV.contains(&key.as_str()),
                "{place}: unexpected variable {key}"
            );
        }
    }
    help
}

/// The variables .env.example sets, with `${VAR}` replaced by the values of
/// the lines above it, as Compose reads a `.env` file.
fn env_example() -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for line in read(".env.example").lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let mut resolved = String::new();
        let mut rest = value;
        while let Some(start) = rest.find("${") {
            resolved.push_str(&rest[..start]);
            let end = rest[start..].find('}').expect("closed ${...}") + start;
            let name = &rest[start + 2..end];
            resolved.push_str(vars.get(name).map(String::as_str).unwrap_or(""));
            rest = &rest[end + 1..];
        }
        resolved.push_str(rest);
        vars.insert(key.to_string(), resolved);
    }
    vars
}

/// The secret a service reads from the file named by its environment
/// variable `key` (`WARREN_AMQP_URL_FILE`): the file must be a Compose
/// secret granted to the service, owned by the image's user and readable
/// by it alone. Returns the value it gets from .env.example, with the
/// password as .env.example leaves it (empty) replaced by `<password>`.
fn secret_file_value(
    compose: &Value,
    service: &Value,
    place: &str,
    key: &str,
    image_uid: &str,
) -> String {
    let env = environment(service);
    let path = env
        .get(key)
        .cloned()
        .flatten()
        .unwrap_or_else(|| panic!("{place}: sets {key}"));
    let granted = match &service["secrets"] {
        Value::Sequence(items) => items.clone(),
        _ => panic!("{place}: is granted no secrets, but reads {key}"),
    };
    let grant = granted
        .iter()
        .find(|grant| {
            let source = scalar(grant.get("source").unwrap_or(grant));
            let target = grant
                .get("target")
                .map(scalar)
                .unwrap_or_else(|| format!("/run/secrets/{source}"));
            target == path
        })
        .unwrap_or_else(|| panic!("{place}: {key}={path} is not a secret granted to it"));
    // No uid or gid: given either, Compose has the engine give the file to
    // the container's user, which the engine looks up on the host
    // (moby/moby#34142), and `up` fails where the host has no user named
    // like the image's (seen with Docker 20.10 and Compose 2.26).
    for field in ["uid", "gid"] {
        assert!(
            grant.get(field).is_none(),
            "{place}: the secret behind {key} must not set {field} (the engine would look the image's user {image_uid} up on the host)"
        );
    }
    // 0444: root's, readable by the image's user, not writable. YAML 1.1
    // (Compose) reads it as octal, YAML 1.2 as decimal.
    let mode = grant.get("mode").map(scalar).unwrap_or_default();
    assert!(
        ["292", "444", "0444"].contains(&mode.as_str()),
        "{place}: the secret behind {key} must be mode 0444, got {mode:?}"
    );
    let source = scalar(grant.get("source").expect("long syntax"));
    let variable = scalar(
        compose["secrets"][source.as_str()]
            .get("environment")
            .unwrap_or_else(|| panic!("secret {source} comes from an environment variable")),
    );
    let value = env_example()
        .get(&variable)
        .cloned()
        .unwrap_or_else(|| panic!(".env.example does not set {variable} (secret {source})"));
    value.replace(":@", ":<password>@")
}

/// The value given to `flag` in an argument list (`--flag value` or
/// `--flag=value`).
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&format!("{flag}=")).map(str::to_string)
        }
    })
}

/// Seconds in a compose duration such as `45s`, `1m30s` or `90`.
fn compose_duration_secs(value: &str) -> f64 {
    let mut total = 0.0;
    let mut number = String::new();
    for c in value.chars() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
        } else {
            let n: f64 = number
                .parse()
                .unwrap_or_else(|_| panic!("bad duration {value:?}"));
            number.clear();
            total += n * match c {
                'h' => 3600.0,
                'm' => 60.0,
                's' => 1.0,
                _ => panic!("bad duration {value:?}"),
            };
        }
    }
    if !number.is_empty() {
        total += number.parse::<f64>().unwrap();
    }
    total
}

/// The broker's consumer_timeout in milliseconds, from a rabbitmq.conf text.
fn consumer_timeout_ms(conf: &str) -> u64 {
    conf_value(conf, "consumer_timeout")
        .expect("consumer_timeout is set")
        .parse()
        .expect("consumer_timeout is a number of milliseconds")
}

fn conf_value(conf: &str, key: &str) -> Option<String> {
    conf.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
}

/// Container port of a compose port entry (`8080:8080`, `127.0.0.1:80:8080/tcp`, `5672`).
fn container_port(entry: &str) -> u16 {
    let entry = entry.split('/').next().unwrap_or(entry);
    entry
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("bad port {entry:?}"))
}

fn port_of_url(url: &str) -> u16 {
    let after_at = url.rsplit('@').next().unwrap();
    let host_port = after_at.split('/').next().unwrap();
    host_port
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no port in {url:?}"))
}

fn seconds(value: &str) -> f64 {
    value
        .parse()
        .unwrap_or_else(|_| panic!("not a number of seconds: {value:?}"))
}

/// The definitions the binary generates for the default namespace.
fn generated_definitions() -> serde_json::Value {
    serde_json::from_str(&warren(&["topology", "--definitions"]))
        .expect("warren prints JSON definitions")
}

/// The work queue runners compete on: the one with a delivery limit.
fn work_queue(definitions: &serde_json::Value) -> String {
    definitions["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["arguments"].get("x-delivery-limit").is_some())
        .and_then(|q| q["name"].as_str())
        .expect("a queue with a delivery limit")
        .to_string()
}

#[test]
fn compose_yaml_matches_the_binary_and_the_repository() {
    let compose = compose();
    let text = read("compose.yaml");
    let broker = service(&compose, "rabbitmq");
    let runner_help = Help::of("runner");

    // --- the broker: pinned official image, ports, healthcheck, restart
    let image = scalar(&broker["image"]);
    let tag = image.split_once(':').map(|(_, t)| t).unwrap_or("");
    assert!(
        image.starts_with("rabbitmq:")
            && tag.contains("management")
            && tag.starts_with(|c: char| c.is_ascii_digit()),
        "rabbitmq must be the official management image at a pinned version, got {image}"
    );
    let broker_ports: BTreeSet<u16> = strings(&broker["ports"])
        .iter()
        .map(|p| container_port(p))
        .collect();
    assert!(
        broker_ports.contains(&5672) && broker_ports.contains(&15672),
        "rabbitmq must publish 5672 and 15672"
    );
    let health = strings(&broker["healthcheck"]["test"]).join(" ");
    assert!(
        health.contains("rabbitmq-diagnostics"),
        "rabbitmq needs a healthcheck, got {health:?}"
    );

    let dockerfile_text = read("Dockerfile");
    let image_uid = dockerfile_text
        .split_whitespace()
        .skip_while(|w| *w != "--uid")
        .nth(1)
        .expect("the Dockerfile creates its user with --uid")
        .to_string();
    for name in WARREN_SERVICES {
        let svc = service(&compose, name);
        let place = format!("compose.yaml service {name}");

        // --- one image, built once from the one Dockerfile: by the
        // dispatcher; the others use it by name and never pull it. (With a
        // `build:` each, Compose builds one image per service under the one
        // tag, and the next `up --scale` recreates the services whose
        // image lost the tag: scripts/test-deploy saw it.)
        assert_eq!(
            svc["image"], compose["services"]["dispatcher"]["image"],
            "{place}: one image for all"
        );
        if name == "dispatcher" {
            let context = scalar(svc["build"].get("context").unwrap_or(&svc["build"]));
            assert_eq!(
                context, ".",
                "{place}: builds from the repository's Dockerfile"
            );
            assert!(root().join(&context).join("Dockerfile").is_file());
        } else {
            assert!(
                svc.get("build").is_none(),
                "{place}: only the dispatcher builds the image"
            );
            assert_eq!(
                svc["pull_policy"].as_str(),
                Some("never"),
                "{place}: uses the dispatcher's image, never pulls one"
            );
        }

        // --- start order and restarts
        assert_eq!(
            svc["depends_on"]["rabbitmq"]["condition"].as_str(),
            Some("service_healthy"),
            "{place}: waits for a healthy broker"
        );
        assert_eq!(
            svc["restart"].as_str(),
            Some("unless-stopped"),
            "{place}: restart policy"
        );

        // --- the command and the environment use what warren accepts
        let command = strings(&svc["command"]);
        assert_eq!(
            command.first().map(String::as_str),
            Some(name),
            "{place}: runs `warren {name}`"
        );
        let env = environment(svc);
        check_invocation(&place, &command, &env);

        // --- no password in the environment: every credential is a secret file
        for (key, value) in &env {
            let value = value.clone().unwrap_or_default();
            assert!(
                !["WARREN_AMQP_URL", "WARREN_MANAGEMENT_URL", "WARREN_API_TOKEN", "WARREN_WEBHOOK_SECRET"]
                    .contains(&key.as_str())
                    && !value.contains("PASSWORD")
                    && !value.contains('@'),
                "{place}: {key} puts a password in the environment; give it as a file (X_FILE, a Compose secret)"
            );
        }

        // --- the broker URLs (from the secret files) point at the broker
        // service's ports
        let amqp = secret_file_value(&compose, svc, &place, "WARREN_AMQP_URL_FILE", &image_uid);
        assert!(
            amqp.starts_with("amqp://") && amqp.contains("@rabbitmq:"),
            "{place}: talks to the rabbitmq service, got {amqp}"
        );
        assert!(
            !amqp.contains("guest"),
            "{place}: guest cannot log in from another container"
        );
        assert!(
            broker_ports.contains(&port_of_url(&amqp)),
            "{place}: AMQP port"
        );
        if env.contains_key("WARREN_MANAGEMENT_URL_FILE") {
            let management = secret_file_value(
                &compose,
                svc,
                &place,
                "WARREN_MANAGEMENT_URL_FILE",
                &image_uid,
            );
            assert!(
                broker_ports.contains(&port_of_url(&management)),
                "{place}: management port"
            );
        }

        // --- mounts: host files exist, named volumes are declared, and
        // data folders exist in the image (so non-root warren owns them)
        let dockerfile = read("Dockerfile");
        for volume in strings(&svc["volumes"]) {
            let volume = interpolate_defaults(&volume);
            let parts: Vec<&str> = volume.split(':').collect();
            if parts.len() == 1 {
                continue; // anonymous volume
            }
            let source = parts[0].to_string();
            let target = parts[1];
            if source.starts_with('.') || source.starts_with('/') {
                assert!(
                    root().join(&source).exists(),
                    "{place}: mounts {source}, which is not in the repository"
                );
                assert_eq!(
                    parts.get(2),
                    Some(&"ro"),
                    "{place}: host folders are mounted read-only"
                );
            } else {
                assert!(
                    compose["volumes"].get(source.as_str()).is_some(),
                    "{place}: volume {source} is not declared"
                );
                assert!(
                    dockerfile.contains(target),
                    "{place}: the Dockerfile does not create {target}"
                );
            }
        }
    }

    // --- the dispatcher's API is published on the default port, on all interfaces
    let dispatcher = service(&compose, "dispatcher");
    let dispatcher_help = Help::of("dispatcher");
    let default_http = dispatcher_help
        .default_of("--http")
        .expect("--http has a default");
    let default_port: u16 = default_http.rsplit(':').next().unwrap().parse().unwrap();
    let http = environment(dispatcher)["WARREN_HTTP"]
        .clone()
        .expect("WARREN_HTTP is set");
    assert_eq!(
        http,
        format!("0.0.0.0:{default_port}"),
        "the dispatcher must listen on every interface"
    );
    let published: Vec<String> = strings(&dispatcher["ports"]);
    assert!(
        published.iter().any(
            |p| p.starts_with(&format!("{default_port}:")) && container_port(p) == default_port
        ),
        "the dispatcher publishes {default_port}, got {published:?}"
    );

    // --- the runner scales: no fixed name, no host port, one workdir each
    let runner = service(&compose, "runner");
    assert!(
        runner.get("container_name").is_none(),
        "runner must not have a container_name"
    );
    assert!(
        runner.get("ports").is_none(),
        "runner must not publish ports"
    );
    let command = strings(&runner["command"]);
    let workdir = flag_value(&command, "--workdir").expect("runner gets --workdir");
    assert!(
        !strings(&runner["volumes"])
            .iter()
            .any(|volume| volume == &workdir || volume.ends_with(&format!(":{workdir}"))),
        "the runner's workdir {workdir} must be in the container, not a volume: a named one is shared by all replicas, an anonymous one is left behind by every scale-down"
    );
    let grace = seconds(
        &flag_value(&command, "--grace")
            .unwrap_or_else(|| runner_help.default_of("--grace").expect("--grace default")),
    );
    let stop = compose_duration_secs(&scalar(&runner["stop_grace_period"]));
    assert!(
        stop > grace,
        "runner stop_grace_period ({stop} s) must exceed --grace ({grace} s)"
    );

    // --- job timeout + grace below the broker's consumer_timeout
    let conf = read("broker/rabbitmq/rabbitmq.conf");
    let timeout_ms = consumer_timeout_ms(&conf);
    let default_timeout = seconds(
        &runner_help
            .default_of("--job-timeout")
            .expect("--job-timeout default"),
    );
    let compose_timeout = environment(runner)
        .get("WARREN_JOB_TIMEOUT")
        .cloned()
        .flatten()
        .map(|v| seconds(&interpolate_defaults(&v)))
        .unwrap_or(default_timeout);
    let job_timeout = default_timeout.max(compose_timeout);
    assert!(
        (job_timeout + grace) * 1000.0 < timeout_ms as f64,
        "consumer_timeout {timeout_ms} ms must exceed job timeout {job_timeout} s + grace {grace} s"
    );
    // An unreachable repository holds a job for three tries of its clone
    // or fetch, each up to the git timeout.
    let default_git = seconds(
        &runner_help
            .default_of("--git-timeout")
            .expect("--git-timeout default"),
    );
    let git_timeout = environment(runner)
        .get("WARREN_GIT_TIMEOUT")
        .cloned()
        .flatten()
        .map(|v| seconds(&interpolate_defaults(&v)))
        .unwrap_or(default_git)
        .max(default_git);
    assert!(
        3.0 * git_timeout * 1000.0 < timeout_ms as f64,
        "consumer_timeout {timeout_ms} ms must exceed 3 tries of the git timeout {git_timeout} s"
    );

    // --- the broker's files: mounted from the repository where rabbitmq.conf expects them
    let mounts: BTreeMap<String, String> = strings(&broker["volumes"])
        .iter()
        .filter_map(|v| {
            let parts: Vec<&str> = v.split(':').collect();
            (parts[0].starts_with("./")).then(|| {
                assert_eq!(
                    parts.get(2),
                    Some(&"ro"),
                    "broker files are mounted read-only: {v}"
                );
                (
                    parts[0].trim_start_matches("./").to_string(),
                    parts[1].to_string(),
                )
            })
        })
        .collect();
    for file in [
        "rabbitmq.conf",
        "enabled_plugins",
        "definitions.json",
        "warren-init.sh",
    ] {
        let path = format!("broker/rabbitmq/{file}");
        assert!(root().join(&path).is_file(), "{path} exists");
        assert!(
            mounts.contains_key(&path),
            "compose.yaml mounts {path} into the broker"
        );
    }
    for path in mounts.keys() {
        assert!(
            root().join(path).is_file(),
            "compose.yaml mounts {path}, which does not exist"
        );
    }
    let definitions_dir = Path::new(&mounts["broker/rabbitmq/definitions.json"])
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        conf_value(&conf, "load_definitions").map(|d| d.trim_end_matches('/').to_string()),
        Some(definitions_dir),
        "rabbitmq.conf loads definitions from the folder compose mounts them into"
    );
    let conf_target = &mounts["broker/rabbitmq/rabbitmq.conf"];
    assert!(
        conf_target == "/etc/rabbitmq/rabbitmq.conf"
            || conf_target.starts_with("/etc/rabbitmq/conf.d/"),
        "rabbitmq.conf mounted where RabbitMQ reads it, got {conf_target}"
    );
    let entrypoint = strings(&broker["entrypoint"]).join(" ");
    assert!(
        entrypoint.contains(&mounts["broker/rabbitmq/warren-init.sh"]),
        "the broker starts through warren-init.sh, got {entrypoint:?}"
    );

    // --- every variable compose reads is documented in .env.example
    let example = read(".env.example");
    for var in interpolated_variables(&text) {
        assert!(
            example.lines().any(|l| l
                .trim_start_matches(['#', ' '])
                .starts_with(&format!("{var}="))),
            ".env.example does not mention {var}"
        );
    }
    // --- and so is every variable a secret is read from
    for (name, secret) in compose["secrets"]
        .as_mapping()
        .expect("compose.yaml declares its secrets")
    {
        let variable = scalar(
            secret
                .get("environment")
                .unwrap_or_else(|| panic!("secret {name:?} comes from a variable in .env")),
        );
        assert!(
            example.lines().any(|l| l
                .trim_start_matches(['#', ' '])
                .starts_with(&format!("{variable}="))),
            ".env.example does not mention {variable}"
        );
    }
    // --- and no password is written into compose.yaml itself
    let settings = text.lines().filter(|l| !l.trim_start().starts_with('#'));
    for line in settings.filter(|l| l.contains("amqp://") || l.contains("http://")) {
        if let Some(userinfo) = line
            .split("://")
            .nth(1)
            .and_then(|r| r.split('@').next())
            .filter(|_| line.contains('@'))
        {
            assert!(
                userinfo.contains("${"),
                "credentials in compose.yaml must come from .env: {line}"
            );
        }
    }
}

/// Issue 14 in Docker: the runner service has the settings bubblewrap
/// needs (scripts/test-deploy proves on a real engine that they are
/// enough, and that without them the runner falls back and warns), each
/// explained in compose.yaml, and no other service is widened.
#[test]
fn the_runner_service_gives_bubblewrap_what_it_needs_and_no_more() {
    let compose = compose();
    let text = read("compose.yaml");
    // What scripts/test-deploy found by trying (Docker 20.10, no AppArmor
    // on its host): without seccomp=unconfined bubblewrap cannot make its
    // namespaces; without systempaths=unconfined it cannot mount /proc.
    // apparmor=unconfined is for hosts with AppArmor (docker-default denies
    // mount).
    let needed = [
        "seccomp=unconfined",
        "apparmor=unconfined",
        "systempaths=unconfined",
    ];
    let runner = service(&compose, "runner");
    let options: BTreeSet<String> = strings(&runner["security_opt"]).into_iter().collect();
    let expected: BTreeSet<String> = needed.iter().map(|s| s.to_string()).collect();
    assert_eq!(options, expected, "the runner's security_opt");
    for option in needed {
        let (name, _) = option.split_once('=').unwrap();
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with('#') && l.contains(option)),
            "compose.yaml explains {option} in a comment"
        );
        assert!(
            read("README.md").contains(name) && read("ARCHITECTURE.md").contains(name),
            "README.md and ARCHITECTURE.md explain {name}"
        );
    }
    // The runner chooses at start: bwrap when it works, else none with a
    // warning.
    let env = environment(runner);
    let sandbox = env
        .get("WARREN_SANDBOX")
        .cloned()
        .flatten()
        .expect("the runner sets WARREN_SANDBOX");
    assert_eq!(interpolate_defaults(&sandbox), "auto");
    assert!(
        Help::of("runner").text.contains("--sandbox"),
        "warren runner has --sandbox"
    );
    // Nothing more for the runner, nothing at all for the others.
    for name in ["rabbitmq", "dispatcher", "observer", "runner"] {
        let svc = service(&compose, name);
        for key in ["privileged", "cap_add", "devices", "pid", "userns_mode"] {
            assert!(svc.get(key).is_none(), "{name} must not set {key}");
        }
        if name != "runner" {
            assert!(
                svc.get("security_opt").is_none(),
                "only the runner relaxes its security options, {name} does too"
            );
        }
    }
    // The image has bubblewrap.
    assert!(
        read("Dockerfile")
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .any(|l| l.split_whitespace().any(|w| w == "bubblewrap")),
        "the image installs bubblewrap"
    );
}

#[test]
fn committed_definitions_equal_what_the_binary_generates() {
    let committed: serde_json::Value =
        serde_json::from_str(&read("broker/rabbitmq/definitions.json"))
            .expect("definitions.json is JSON");
    assert_eq!(
        committed,
        generated_definitions(),
        "broker/rabbitmq/definitions.json is stale: run `cargo run -q --bin warren -- topology --definitions > broker/rabbitmq/definitions.json`"
    );
}

/// Dockerfile instructions as (INSTRUCTION, arguments).
type Instructions = Vec<(String, String)>;

/// The Dockerfile's instructions, continuation lines joined.
fn dockerfile_instructions(text: &str) -> Instructions {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (instruction, rest) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((instruction.to_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    out
}

#[test]
fn dockerfile_builds_and_runs_the_warren_binary() {
    let text = read("Dockerfile");
    let instructions = dockerfile_instructions(&text);

    // Stages: (name, instructions), and the image each starts FROM.
    let mut stages: Vec<(Option<String>, Instructions)> = Vec::new();
    let mut bases: Vec<String> = Vec::new();
    for (instruction, rest) in instructions {
        if instruction == "FROM" {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let name = words
                .iter()
                .position(|w| w.eq_ignore_ascii_case("as"))
                .and_then(|i| words.get(i + 1))
                .map(|s| s.to_string());
            stages.push((name, Vec::new()));
            bases.push(words[0].to_string());
        } else {
            stages
                .last_mut()
                .expect("FROM first")
                .1
                .push((instruction, rest));
        }
    }
    assert!(stages.len() >= 2, "a multi-stage build");

    // The builder runs `cargo build --release --locked --bin warren`.
    let (builder_name, builder) = stages
        .iter()
        .find(|(_, s)| {
            s.iter()
                .any(|(i, r)| i == "RUN" && r.contains("cargo build"))
        })
        .expect("a stage runs cargo build");
    let builder_name = builder_name.clone().expect("the build stage is named");
    let build = &builder
        .iter()
        .find(|(i, r)| i == "RUN" && r.contains("cargo build"))
        .unwrap()
        .1;
    let words: Vec<&str> = build.split_whitespace().collect();
    for flag in ["--release", "--locked"] {
        assert!(words.contains(&flag), "cargo build {flag}: {build}");
    }
    let bin = words
        .iter()
        .position(|w| *w == "--bin")
        .and_then(|i| words.get(i + 1))
        .copied()
        .or_else(|| words.iter().find_map(|w| w.strip_prefix("--bin=")));
    assert_eq!(bin, Some("warren"), "cargo build --bin warren: {build}");
    // ...a binary the workspace really has (the one this test runs).
    assert!(read("Cargo.toml").contains("name = \"warren\""));
    assert!(warren(&["--version"]).starts_with("warren "));
    let workdir = builder
        .iter()
        .rev()
        .find(|(i, _)| i == "WORKDIR")
        .map(|(_, r)| r.clone())
        .unwrap_or_else(|| "/".to_string());
    let built = format!("{}/target/release/warren", workdir.trim_end_matches('/'));

    // A stage's instructions with those of the stages it is built FROM
    // (`FROM base`), oldest first: what the image it makes has.
    let effective = |index: usize| -> Instructions {
        let mut chain = vec![index];
        while let Some(parent) = stages
            .iter()
            .position(|(name, _)| name.as_deref() == Some(bases[*chain.last().unwrap()].as_str()))
        {
            assert!(!chain.contains(&parent), "FROM loop at stage {parent}");
            chain.push(parent);
        }
        chain
            .iter()
            .rev()
            .flat_map(|&i| stages[i].1.iter().cloned())
            .collect()
    };

    // The runtime stage (the last, the default target) copies exactly that
    // file, runs it as non-root.
    let (_, runtime_own) = stages.last().unwrap();
    let runtime = &effective(stages.len() - 1);
    let copy = runtime_own
        .iter()
        .find(|(i, r)| i == "COPY" && r.contains(&format!("--from={builder_name}")))
        .map(|(_, r)| {
            r.split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect::<Vec<_>>()
        })
        .expect("the runtime stage copies from the build stage");
    let source = copy[0];
    let source = if source.starts_with('/') {
        source.to_string()
    } else {
        format!("{workdir}/{source}")
    };
    assert_eq!(
        source, built,
        "the runtime stage copies the binary cargo built"
    );
    let installed = copy[1];
    let entrypoint: Vec<String> = serde_json::from_str(
        &runtime
            .iter()
            .rev()
            .find(|(i, _)| i == "ENTRYPOINT")
            .expect("an ENTRYPOINT")
            .1,
    )
    .expect("ENTRYPOINT in exec form");
    assert!(
        entrypoint[0] == "warren" || entrypoint[0] == installed,
        "the entrypoint is warren, got {entrypoint:?}"
    );
    assert!(
        installed.starts_with("/usr/local/bin/") || installed.starts_with("/usr/bin/"),
        "warren is installed on PATH, got {installed}"
    );
    let user = runtime
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .expect("a USER")
        .1
        .clone();
    assert!(
        user != "root" && !user.starts_with("0") && !user.starts_with("root:"),
        "runs as non-root, got {user}"
    );

    // The runner's default test command needs python3, and every service git.
    let packages = runtime
        .iter()
        .filter(|(i, r)| i == "RUN" && r.contains("apt-get install"))
        .map(|(_, r)| r.clone())
        .collect::<Vec<_>>()
        .join(" ");
    let runner_help = Help::of("runner");
    for package in ["git", "python3", "ca-certificates"] {
        assert!(
            packages.split_whitespace().any(|w| w == package),
            "the runtime image installs {package}"
        );
    }
    assert!(
        runner_help.text.contains("python3"),
        "the runner's default test command is still python"
    );

    // The prebuilt stage (scripts/test-deploy, CI) is the runtime image
    // around a binary from its own build context: the same base, the same
    // place, nothing else added.
    let prebuilt = stages
        .iter()
        .position(|(name, _)| name.as_deref() == Some("prebuilt"))
        .expect("a stage named prebuilt, for a binary built outside Docker");
    assert_eq!(
        bases[prebuilt],
        bases[stages.len() - 1],
        "the prebuilt and the runtime stage start from the same base"
    );
    assert_eq!(
        stages[prebuilt].1,
        vec![("COPY".to_string(), format!("warren {installed}"))],
        "the prebuilt stage only copies the binary named warren to where the runtime stage has it"
    );

    // Every file the build COPYs from the context exists (the prebuilt
    // stage's context is the folder of the binary, not this repository).
    for (index, (_, stage)) in stages.iter().enumerate() {
        if index == prebuilt {
            continue;
        }
        for (_, rest) in stage.iter().filter(|(i, _)| i == "COPY" || i == "ADD") {
            if rest.contains("--from=") {
                continue;
            }
            let words: Vec<&str> = rest
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            for source in &words[..words.len() - 1] {
                assert!(
                    root().join(source).exists(),
                    "the Dockerfile copies {source}, which does not exist"
                );
            }
        }
    }

    // The build context leaves out build output, history and secrets.
    let ignore = read(".dockerignore");
    for entry in ["target", ".git", ".env"] {
        assert!(
            ignore
                .lines()
                .any(|l| l.trim().trim_start_matches('/') == entry),
            ".dockerignore lists {entry}"
        );
    }
}

/// Every document of every YAML file in deploy/kubernetes.
fn kubernetes_documents() -> Vec<(String, Value)> {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        // Documents are separated by `---` lines.
        let mut chunk = String::new();
        for line in text.lines().chain(std::iter::once("---")) {
            if line.trim_end() == "---" {
                let value: Value = serde_norway::from_str(&chunk)
                    .unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
                if !value.is_null() {
                    docs.push((name.clone(), value));
                }
                chunk.clear();
            } else {
                chunk.push_str(line);
                chunk.push('\n');
            }
        }
    }
    docs
}

fn k8s_env(container: &Value) -> BTreeMap<String, Option<String>> {
    strings_or_maps(&container["env"])
        .iter()
        .map(|e| (scalar(&e["name"]), e.get("value").map(scalar)))
        .collect()
}

fn strings_or_maps(value: &Value) -> Vec<Value> {
    match value {
        Value::Sequence(items) => items.clone(),
        _ => Vec::new(),
    }
}

#[test]
fn kubernetes_manifests_match_the_binary() {
    let docs = kubernetes_documents();
    let kind_named = |kind: &str, name: &str| {
        docs.iter().map(|(_, d)| d).find(|d| {
            d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
        })
    };

    // kustomization.yaml lists files that exist.
    let kustomization: Value =
        serde_norway::from_str(&read("deploy/kubernetes/kustomization.yaml")).unwrap();
    for resource in strings(&kustomization["resources"]) {
        assert!(
            root().join("deploy/kubernetes").join(&resource).is_file(),
            "kustomization lists {resource}"
        );
    }

    // Every container running the warren image uses real flags and variables.
    let mut runner_deployment = None;
    let mut seen = BTreeSet::new();
    for (file, doc) in &docs {
        if doc["kind"].as_str() != Some("Deployment") {
            continue;
        }
        let pod = &doc["spec"]["template"]["spec"];
        for container in strings_or_maps(&pod["containers"]) {
            if container["image"].as_str() != Some("warren") {
                continue;
            }
            let place = format!("{file}: {}", scalar(&doc["metadata"]["name"]));
            let command = strings(&container["command"]);
            assert_eq!(
                command.last().map(String::as_str),
                Some("warren"),
                "{place}: runs warren"
            );
            if command.iter().any(|c| c.contains("tini")) {
                assert!(
                    read("Dockerfile").contains("tini"),
                    "{place}: the image must install tini"
                );
            }
            let args = strings(&container["args"]);
            let help = check_invocation(&place, &args, &k8s_env(&container));
            seen.insert(args[0].clone());
            if args[0] == "runner" {
                let grace = seconds(
                    &flag_value(&args, "--grace")
                        .unwrap_or_else(|| help.default_of("--grace").unwrap()),
                );
                let period = pod["terminationGracePeriodSeconds"]
                    .as_f64()
                    .unwrap_or(30.0);
                assert!(
                    period > grace,
                    "{place}: terminationGracePeriodSeconds must exceed --grace"
                );
                runner_deployment = Some(scalar(&doc["metadata"]["name"]));
            }
            if args[0] == "dispatcher" {
                assert_eq!(
                    k8s_env(&container)["WARREN_HTTP"]
                        .as_deref()
                        .map(|h| h.starts_with("0.0.0.0:")),
                    Some(true),
                    "{place}: the API listens on every interface"
                );
            }
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from(["dispatcher", "observer", "runner"].map(String::from)),
        "a Deployment each for the dispatcher, the observer and the runners"
    );

    // KEDA scales the runner Deployment on the work queue's length.
    let runner_deployment = runner_deployment.unwrap();
    let scaled = docs
        .iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"].as_str() == Some("ScaledObject"))
        .expect("a KEDA ScaledObject");
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"].as_str(),
        Some(runner_deployment.as_str())
    );
    let trigger = &strings_or_maps(&scaled["spec"]["triggers"])[0];
    assert_eq!(trigger["type"].as_str(), Some("rabbitmq"));
    assert_eq!(trigger["metadata"]["mode"].as_str(), Some("QueueLength"));
    assert_eq!(
        trigger["metadata"]["queueName"].as_str(),
        Some(work_queue(&generated_definitions()).as_str()),
        "KEDA watches the queue the runners consume"
    );
    let auth = scalar(&trigger["authenticationRef"]["name"]);
    assert!(
        kind_named("TriggerAuthentication", &auth).is_some(),
        "TriggerAuthentication {auth} exists"
    );

    // The reference broker uses the same consumer_timeout as compose's.
    let broker_config = kind_named("ConfigMap", "rabbitmq").expect("the broker's ConfigMap");
    let k8s_conf = broker_config["data"]
        .as_mapping()
        .unwrap()
        .values()
        .map(scalar)
        .find(|v| v.contains("consumer_timeout"))
        .expect("consumer_timeout in the broker's ConfigMap");
    assert_eq!(
        consumer_timeout_ms(&k8s_conf),
        consumer_timeout_ms(&read("broker/rabbitmq/rabbitmq.conf")),
        "Kubernetes and compose brokers agree on consumer_timeout"
    );
}
