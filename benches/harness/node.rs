//! A private RabbitMQ node for the broker-restart scenario.
//!
//! Restarting the shared broker on 5672 would break whatever else runs
//! against it (other test suites run concurrently), so the harness starts
//! its own node of the same installed RabbitMQ — own node name, ports,
//! data and log folders in a temp dir, management plugin on — and restarts
//! that one. The node runs as a child of the harness (the Erlang VM
//! replaces the start script, so the child *is* the broker) and gets
//! SIGKILL if the harness dies; `Drop` stops it and the temp dir goes.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::common::free_port;

/// The start script of Debian's rabbitmq-server package (it runs the node
/// as the calling user, unlike the /usr/sbin wrapper).
pub const SERVER_SCRIPT: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

static NODES: AtomicU32 = AtomicU32::new(0);

pub struct Node {
    dir: tempfile::TempDir,
    name: String,
    pub amqp_port: u16,
    pub management_port: u16,
    dist_port: u16,
    child: Option<Child>,
}

impl Node {
    /// Can this machine run a private node?
    pub fn available() -> bool {
        Path::new(SERVER_SCRIPT).exists()
    }

    /// Prepares (does not start) a node.
    pub fn new() -> Node {
        let dir = tempfile::Builder::new()
            .prefix("warren-bench-node-")
            .tempdir()
            .expect("tempdir");
        for sub in ["home", "log", "mnesia"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        // Three distinct ports, none of them one the RabbitMQ CLI tools use
        // for their own distribution (35672-35682) if someone runs them.
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 {
            let port = free_port();
            if !(35672..=35682).contains(&port) && !ports.contains(&port) {
                ports.push(port);
            }
        }
        let (amqp_port, management_port, dist_port) = (ports[0], ports[1], ports[2]);
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{amqp_port}\n\
                 management.tcp.ip = 127.0.0.1\n\
                 management.tcp.port = {management_port}\n"
            ),
        )
        .expect("rabbitmq.conf");
        std::fs::write(
            dir.path().join("enabled_plugins"),
            "[rabbitmq_management].\n",
        )
        .expect("enabled_plugins");
        std::fs::write(dir.path().join("rabbitmq-env.conf"), "").expect("env file");
        let name = format!(
            "warren-bench-{}-{}@localhost",
            std::process::id(),
            NODES.fetch_add(1, Ordering::SeqCst)
        );
        Node {
            dir,
            name,
            amqp_port,
            management_port,
            dist_port,
            child: None,
        }
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    pub fn management_url(&self) -> String {
        format!("http://guest:guest@127.0.0.1:{}", self.management_port)
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// Is the AMQP port accepting connections?
    pub fn answers(&self) -> bool {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], self.amqp_port)),
            Duration::from_millis(200),
        )
        .is_ok()
    }

    /// Starts the node and returns when its AMQP port accepts connections
    /// (RabbitMQ opens its listeners last, after recovering its queues):
    /// the epoch milliseconds at which the first successful probe began.
    pub fn start(&mut self, within: Duration) -> f64 {
        self.launch();
        self.wait_ready(within)
    }

    /// Starts the node without waiting for it. (The node gets SIGKILL when
    /// the *thread* that launched it ends, so launch from a thread that
    /// outlives it.)
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "node already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("server.out"))
            .expect("node output file");
        let mut command = Command::new(SERVER_SCRIPT);
        command
            .current_dir(self.dir.path())
            .env("HOME", self.path("home"))
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", self.path("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", self.path("rabbitmq-env.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.path("enabled_plugins"),
            )
            .env("RABBITMQ_MNESIA_BASE", self.path("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.path("log"))
            .env("RABBITMQ_PID_FILE", self.path("pid"))
            // Exec the VM in place of the script (so our child is the
            // broker and SIGTERM stops it gracefully), without a shell.
            .env("RABBITMQ_ALLOW_INPUT", "1")
            .env("RABBITMQ_SERVER_START_ARGS", "-noinput")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; the node dies with us.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(command.spawn().expect("start rabbitmq-server"));
    }

    /// Waits until the launched node's AMQP port accepts connections;
    /// returns when the successful probe began (epoch ms; probes are 20 ms
    /// apart).
    pub fn wait_ready(&mut self, within: Duration) -> f64 {
        let deadline = Instant::now() + within;
        loop {
            let probe = crate::harness::repos::now_ms();
            if self.answers() {
                return probe;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "the private RabbitMQ node exited ({status}) while starting; see {}",
                    self.path("server.out").display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the private RabbitMQ node did not answer within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the node gracefully (SIGTERM), as `systemctl stop` would;
    /// SIGKILL if it takes longer than `within`.
    pub fn stop(&mut self, within: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(15));
    }
}
