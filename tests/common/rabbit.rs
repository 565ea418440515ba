//! A private RabbitMQ node for the tests that stop or restart the broker, so
//! they never disturb the tests sharing the node on 127.0.0.1:5672.
//!
//! Each node has its own name (`warren-<pid>-<n>@localhost`), AMQP,
//! management and distribution ports, Erlang cookie, config, data and log
//! dirs, all under a temp folder. The scripts in `/usr/lib/rabbitmq/bin` are
//! called directly (the `/usr/sbin` wrappers switch to the `rabbitmq` user,
//! which cannot read a root-only temp dir and has another cookie), with
//! `RABBITMQ_CONF_ENV_FILE` pointing at an empty file so the system's
//! `rabbitmq-env.conf` (which names the shared node) is not read.
//!
//! Stopping and starting again keeps the ports and the data dir, so durable
//! quorum queues and their messages survive like on a real broker restart.
//! The node is killed on drop, also when the test panics; its folder (with
//! the broker's log) is kept and named when the test failed. A node left
//! running by a test process that was itself killed (so no drop ran) is
//! killed by the next `start`.
//!
//! Measured on the 2-core test VM (Debian's 3.10.8, Erlang 25): a start
//! takes 6-10 s until AMQP and the management API answer (up to 16 s when
//! two nodes boot at once beside a build), about 4 s of it the boot's
//! Mnesia schema step; a graceful stop (`rabbitmqctl stop`) about 9 s, 5 s
//! of it the management plugin winding down; a restart on the same data
//! dir 7-15 s.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{free_port, wait_for, Namespace};

/// A namespace on a private node. Never dropped: its `Drop` deletes the
/// namespace on the shared broker, where it does not exist; the private node
/// and everything on it are thrown away instead.
pub fn private_namespace(test: &str) -> std::mem::ManuallyDrop<Namespace> {
    std::mem::ManuallyDrop::new(Namespace {
        name: format!("wt-{test}-{}", std::process::id()),
    })
}

/// A free port that none of a node's other uses may take (see
/// `CLI_DIST_PORTS`).
pub fn free_node_port() -> u16 {
    loop {
        let port = free_port();
        if !CLI_DIST_PORTS.contains(&port) {
            return port;
        }
    }
}

const SCRIPTS: &str = "/usr/lib/rabbitmq/bin";
/// Ports the CLI tools use for their own distribution (rabbitmq-env's
/// default); a node's ports must not take one of them.
const CLI_DIST_PORTS: std::ops::RangeInclusive<u16> = 35672..=35682;
/// How long a start or a stop may take before the test fails.
const NODE_DEADLINE: Duration = Duration::from_secs(90);

static NODES: AtomicU32 = AtomicU32::new(0);

/// A RabbitMQ node of the test's own. See the module documentation.
pub struct PrivateNode {
    /// The Erlang node name, `warren-<pid>-<n>@localhost`.
    pub node: String,
    pub amqp_port: u16,
    pub management_port: u16,
    pub dist_port: u16,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    running: bool,
}

impl PrivateNode {
    /// Starts a node whose `rabbitmq.conf` also holds `config_extra` (lines
    /// in the new-style format, e.g. `consumer_timeout = 5000`), and waits
    /// until its AMQP port and management API answer.
    pub fn start(config_extra: &str) -> PrivateNode {
        PrivateNode::start_with_advanced(config_extra, "[].")
    }

    /// Like [`start`](Self::start), with an `advanced.config` (Erlang terms)
    /// for settings `rabbitmq.conf` cannot express, e.g.
    /// `[{rabbit, [{channel_tick_interval, 500}]}].`
    pub fn start_with_advanced(config_extra: &str, advanced_config: &str) -> PrivateNode {
        PrivateNode::start_with_cookie(config_extra, advanced_config, None)
    }

    /// Like [`start_with_advanced`](Self::start_with_advanced), with the
    /// Erlang cookie `cookie` (the nodes of one cluster share theirs)
    /// instead of one of the node's own.
    fn start_with_cookie(
        config_extra: &str,
        advanced_config: &str,
        cookie: Option<&str>,
    ) -> PrivateNode {
        kill_orphans();
        let dir = tempfile::Builder::new()
            .prefix("warren-rabbit-")
            .tempdir()
            .expect("tempdir");
        let path = dir.path().to_path_buf();
        let node = format!(
            "warren-{}-{}@localhost",
            std::process::id(),
            NODES.fetch_add(1, Ordering::SeqCst)
        );
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 {
            let port = free_node_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let mut this = PrivateNode {
            node,
            amqp_port: ports[0],
            management_port: ports[1],
            dist_port: ports[2],
            dir: Some(dir),
            path,
            running: false,
        };
        this.write_files(config_extra, advanced_config, cookie);
        let clock = Instant::now();
        this.launch();
        eprintln!(
            "private RabbitMQ node {} (AMQP {}, management {}) started in {:.1} s",
            this.node,
            this.amqp_port,
            this.management_port,
            clock.elapsed().as_secs_f64()
        );
        this
    }

    fn write_files(&self, config_extra: &str, advanced_config: &str, cookie: Option<&str>) {
        for sub in ["home", "mnesia", "log"] {
            std::fs::create_dir_all(self.path.join(sub)).expect("mkdir");
        }
        let cookie_file = self.path.join("home/.erlang.cookie");
        let cookie = match cookie {
            Some(cookie) => cookie.to_string(),
            None => format!("WARRENTEST{}", self.node.replace(['-', '@'], "")),
        };
        std::fs::write(&cookie_file, cookie).expect("cookie");
        let cookie = cookie_file;
        set_mode(&cookie, 0o400);
        std::fs::write(self.path.join("rabbitmq-env.conf"), "").expect("env file");
        std::fs::write(
            self.path.join("enabled_plugins"),
            "[rabbitmq_management].\n",
        )
        .expect("plugins file");
        std::fs::write(
            self.path.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{}\n\
                 management.tcp.port = {}\n\
                 management.tcp.ip = 127.0.0.1\n\
                 {config_extra}\n",
                self.amqp_port, self.management_port
            ),
        )
        .expect("rabbitmq.conf");
        std::fs::write(self.path.join("advanced.config"), advanced_config)
            .expect("advanced.config");
    }

    /// The environment every script is run with: it names this node and
    /// its files, whatever the calling environment says.
    fn command(&self, script: &str) -> Command {
        let p = |sub: &str| self.path.join(sub);
        let mut command = Command::new(Path::new(SCRIPTS).join(script));
        command
            .env("HOME", p("home"))
            .env("RABBITMQ_CONF_ENV_FILE", p("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", p("mnesia"))
            .env("RABBITMQ_LOG_BASE", p("log"))
            .env("RABBITMQ_CONFIG_FILE", p("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", p("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", p("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", p("rabbitmq.pid"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .stdin(Stdio::null());
        command
    }

    /// Runs `rabbitmqctl -n NODE args...` against this node.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut command = self.command("rabbitmqctl");
        command.arg("-n").arg(&self.node).args(args);
        run_with_deadline(command, NODE_DEADLINE)
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// `http://guest:guest@127.0.0.1:<port>`
    pub fn management_url(&self) -> String {
        format!("http://guest:guest@127.0.0.1:{}", self.management_port)
    }

    /// The node's own log file.
    pub fn log_path(&self) -> PathBuf {
        self.path.join("log").join(format!("{}.log", self.node))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops the whole node gracefully (`rabbitmqctl stop`, which waits
    /// until the Erlang VM has exited), as an operator or a service
    /// manager does; the data dir stays.
    pub fn stop(&mut self) {
        let clock = Instant::now();
        let pid = self.pid();
        let out = self.ctl(&[
            "stop",
            self.path.join("rabbitmq.pid").to_str().expect("utf8"),
        ]);
        if !out.status.success() {
            eprintln!(
                "rabbitmqctl stop failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Some(pid) = pid {
            wait_for(
                &format!("node {} (pid {pid}) to exit", self.node),
                NODE_DEADLINE,
                || (!alive(pid)).then_some(()),
            );
        }
        wait_for(
            &format!("node {}'s AMQP port to close", self.node),
            NODE_DEADLINE,
            || (!self.port_answers(self.amqp_port)).then_some(()),
        );
        self.running = false;
        eprintln!(
            "private RabbitMQ node {} stopped in {:.1} s",
            self.node,
            clock.elapsed().as_secs_f64()
        );
    }

    /// Starts the stopped node again with the same name, ports, config and
    /// data, and waits until it answers.
    pub fn restart(&mut self) {
        assert!(!self.running, "restart() needs a stopped node");
        let clock = Instant::now();
        self.launch();
        eprintln!(
            "private RabbitMQ node {} restarted in {:.1} s",
            self.node,
            clock.elapsed().as_secs_f64()
        );
    }

    /// `rabbitmq-server -detached`, then waits until the AMQP port accepts
    /// connections and the management API answers (the listeners open at
    /// the very end of the boot), failing early if the VM dies.
    fn launch(&mut self) {
        let _ = std::fs::remove_file(self.path.join("rabbitmq.pid"));
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path.join("server.out"))
            .expect("server.out");
        let mut command = self.command("rabbitmq-server");
        command
            .arg("-detached")
            .stdout(output.try_clone().expect("clone"))
            .stderr(output);
        let status = run_with_deadline(command, NODE_DEADLINE).status;
        assert!(
            status.success(),
            "rabbitmq-server -detached failed ({status}): {}",
            self.diagnostics()
        );
        self.running = true;
        self.wait_answering();
    }

    /// Waits until the AMQP port accepts connections and the management
    /// API answers, failing early if the VM dies.
    fn wait_answering(&self) {
        let management = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let overview = format!("http://127.0.0.1:{}/api/overview", self.management_port);
        let started = Instant::now();
        let deadline = started + NODE_DEADLINE;
        loop {
            if self.port_answers(self.amqp_port)
                && management
                    .get(&overview)
                    .basic_auth("guest", Some("guest"))
                    .send()
                    .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            match self.pid() {
                Some(pid) => assert!(
                    alive(pid),
                    "RabbitMQ node {} died while starting: {}",
                    self.node,
                    self.diagnostics()
                ),
                None => assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "RabbitMQ node {} has no Erlang VM 20 s after launch: {}",
                    self.node,
                    self.diagnostics()
                ),
            }
            assert!(
                Instant::now() < deadline,
                "RabbitMQ node {} did not answer within {NODE_DEADLINE:?}: {}",
                self.node,
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn port_answers(&self, port: u16) -> bool {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(1),
        )
        .is_ok()
    }

    /// The Erlang VM's pid, from the pid file or from /proc.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.path.join("rabbitmq.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .or_else(|| self.beam_pids().first().copied())
    }

    /// Erlang VMs running this node: 3.10 keeps the node name out of the
    /// command line, but `-home <dir>/home` names this node's folder.
    fn beam_pids(&self) -> Vec<i32> {
        let home = self.path.join("home");
        let home = home.to_str().expect("utf8");
        beams_where(|args| args.windows(2).any(|w| w[0] == "-home" && w[1] == home))
    }

    fn diagnostics(&self) -> String {
        let out = std::fs::read_to_string(self.path.join("server.out")).unwrap_or_default();
        let log = self.log_text();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "\n--- server.out ---\n{out}\n--- last lines of {} ---\n{}",
            self.log_path().display(),
            tail.join("\n")
        )
    }

    /// Kills the node's VM (SIGKILL), as a crash or a power cut does, and
    /// waits until it is gone and its AMQP port closed; its data stays, so
    /// [`restart`](Self::restart) brings it back into its cluster.
    pub fn kill_hard(&mut self) {
        let clock = Instant::now();
        self.kill();
        wait_for(
            &format!("node {}'s AMQP port to close", self.node),
            NODE_DEADLINE,
            || (!self.port_answers(self.amqp_port)).then_some(()),
        );
        eprintln!(
            "private RabbitMQ node {} killed (SIGKILL) in {:.1} s",
            self.node,
            clock.elapsed().as_secs_f64()
        );
    }

    /// Kills the node's VM (SIGKILL) and waits until it is gone.
    fn kill(&mut self) {
        let mut pids = self.beam_pids();
        if let Some(pid) = self.pid().filter(|p| !pids.contains(p)) {
            pids.push(pid);
        }
        for &pid in &pids {
            if alive(pid) {
                // SAFETY: kill(2); the pid is this node's VM.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while pids.iter().any(|&pid| alive(pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.running = false;
    }
}

impl Drop for PrivateNode {
    /// Kills the VM outright: its data is thrown away, so a graceful stop
    /// (9 s) would buy nothing. Runs on panic too; the folder is then kept,
    /// for its logs, but not the node's data.
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let _ = std::fs::remove_dir_all(self.path.join("mnesia"));
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "private RabbitMQ node {} files (log: {}) kept in {}",
                    self.node,
                    self.log_path().display(),
                    dir.keep().display()
                );
            }
        }
    }
}

/// Private nodes clustered together (`rabbitmqctl join_cluster`), all on
/// this machine: each its own name, ports, data and log folders, one
/// cookie for all. Dropping it kills every node and deletes their data.
pub struct PrivateCluster {
    pub nodes: Vec<PrivateNode>,
}

impl PrivateCluster {
    /// Starts `size` nodes, every one after the first joining the first's
    /// cluster, and waits until each answers and the management API lists
    /// all of them running.
    pub fn start(size: usize) -> PrivateCluster {
        let clock = Instant::now();
        let cookie = format!("WARRENCLUSTER{}", std::process::id());
        // The first node alone, then the others at once, each joining the
        // first as it boots (peer discovery from a list): quicker than
        // booting all and then `stop_app`, `join_cluster`, `start_app`.
        let seed = PrivateNode::start_with_cookie("", "[].", Some(&cookie));
        let joining = format!(
            "cluster_formation.peer_discovery_backend = classic_config\n\
             cluster_formation.classic_config.nodes.1 = {}\n",
            seed.node
        );
        let mut nodes = vec![seed];
        std::thread::scope(|scope| {
            let starting: Vec<_> = (1..size)
                .map(|_| {
                    scope.spawn(|| PrivateNode::start_with_cookie(&joining, "[].", Some(&cookie)))
                })
                .collect();
            for node in starting {
                nodes.push(node.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
            }
        });
        let cluster = PrivateCluster { nodes };
        wait_for(
            &format!("{size} nodes running in the cluster"),
            NODE_DEADLINE,
            || {
                let nodes = cluster.management_get(0, "/api/nodes")?;
                let running = nodes
                    .as_array()?
                    .iter()
                    .filter(|n| n["running"] == true)
                    .count();
                (running == size).then_some(())
            },
        );
        eprintln!(
            "private RabbitMQ cluster of {size} nodes formed in {:.1} s",
            clock.elapsed().as_secs_f64()
        );
        cluster
    }

    /// Every node's AMQP URL.
    pub fn amqp_urls(&self) -> Vec<String> {
        self.nodes.iter().map(PrivateNode::amqp_url).collect()
    }

    /// The index of the node named `node` (`warren-…@localhost`).
    pub fn index_of(&self, node: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.node == node)
            .unwrap_or_else(|| panic!("no node {node} in the cluster"))
    }

    /// GET `path` of the management API of node `via` (a running one),
    /// as JSON; `None` when it does not answer.
    pub fn management_get(&self, via: usize, path: &str) -> Option<serde_json::Value> {
        let node = &self.nodes[via];
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .ok()?
            .get(format!("http://127.0.0.1:{}{path}", node.management_port))
            .basic_auth("guest", Some("guest"))
            .send()
            .ok()
            .filter(|r| r.status().is_success())?
            .text()
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
    }

    /// The first running node's index.
    fn running(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| n.running)
            .expect("a running node")
    }

    /// The node that leads the quorum queue `queue` (of the default
    /// virtual host), asked of a running node.
    pub fn queue_leader(&self, queue: &str) -> Option<String> {
        let path = format!("/api/queues/%2f/{queue}");
        let queue = self.management_get(self.running(), &path)?;
        queue["leader"].as_str().map(str::to_string)
    }

    /// The members of the quorum queue `queue`, asked of a running node.
    pub fn queue_members(&self, queue: &str) -> Vec<String> {
        let path = format!("/api/queues/%2f/{queue}");
        let queue = self
            .management_get(self.running(), &path)
            .unwrap_or_default();
        queue["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The node that a connection whose client-provided name starts with
    /// `prefix` is open on, asked of a running node.
    pub fn connection_node(&self, prefix: &str) -> Option<String> {
        let connections = self.management_get(self.running(), "/api/connections")?;
        connections.as_array()?.iter().find_map(|c| {
            let name = c["client_properties"]["connection_name"].as_str()?;
            name.starts_with(prefix)
                .then(|| c["node"].as_str().map(str::to_string))?
        })
    }
}

/// Pids of Erlang VMs whose arguments pass `test`.
fn beams_where(test: impl Fn(&[&str]) -> bool) -> Vec<i32> {
    super::processes_where(|cmdline| {
        let args: Vec<&str> = cmdline.split(' ').collect();
        args.first().is_some_and(|a| a.ends_with("beam.smp")) && test(&args)
    })
    .iter()
    .filter_map(|line| line.split(':').next()?.parse().ok())
    .collect()
}

/// Kills private nodes left running by test processes that no longer exist
/// (killed before their `Drop` ran): their folder is `warren-rabbit-*` and
/// their node name `warren-<pid of the test>-<n>`. Their folders stay.
fn kill_orphans() {
    let orphans = beams_where(|args| {
        args.windows(2)
            .any(|w| w[0] == "-home" && w[1].contains("/warren-rabbit-"))
    });
    for pid in orphans {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let owner = String::from_utf8_lossy(&environ)
            .split('\0')
            .find_map(|var| var.strip_prefix("RABBITMQ_NODENAME=warren-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|owner| owner.parse::<i32>().ok());
        if let Some(owner) = owner.filter(|&owner| !alive(owner)) {
            eprintln!("killing private RabbitMQ node (pid {pid}) left by test process {owner}");
            // SAFETY: kill(2) on a VM of a test process that is gone.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Runs `rabbitmqctl ARGS...` against the shared node on 127.0.0.1:5672,
/// for what only the broker's own tool can do (e.g. delete an exclusive
/// queue of another connection).
pub fn shared_ctl(args: &[&str]) -> Output {
    let mut command = Command::new("rabbitmqctl");
    command.args(args).stdin(Stdio::null());
    run_with_deadline(command, NODE_DEADLINE)
}

/// Runs a command to completion, killing it after `within`.
fn run_with_deadline(mut command: Command, within: Duration) -> Output {
    if command
        .get_program()
        .to_string_lossy()
        .ends_with("rabbitmqctl")
    {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let mut child = command.spawn().expect("run a RabbitMQ script");
    let deadline = Instant::now() + within;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "{:?} did not finish within {within:?}: {}",
                command.get_program(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
