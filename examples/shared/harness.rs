//! Processes the runners in `examples/` drive: the broker (`scripts/broker`) and service
//! instances, each a child process; ports; topic creation. Included by `chaos.rs` and
//! `bench.rs` with `#[path]`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

/// Wall-clock milliseconds since the epoch, as events carry in `produced_at_ms`.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A run's surroundings: the service binary (`SYSMOS_BIN`), the broker script
/// (`SYSMOS_BROKER_SCRIPT`), a work folder kept for the logs, and the broker started there.
pub struct Setting {
    pub bin: PathBuf,
    pub script: PathBuf,
    pub work: PathBuf,
    /// The broker's data folder (in `work`): a restart keeps what was written.
    pub data: PathBuf,
    pub port: u16,
    pub brokers: String,
    pub broker: Child,
}

impl Setting {
    /// Starts the broker; blocking, so call it off the async workers.
    pub fn start() -> Self {
        let bin =
            PathBuf::from(std::env::var("SYSMOS_BIN").expect("SYSMOS_BIN: the service binary"));
        let script = PathBuf::from(
            std::env::var("SYSMOS_BROKER_SCRIPT").unwrap_or_else(|_| "scripts/broker".into()),
        );
        let work = tempfile::tempdir().unwrap().keep();
        let data = work.join("broker");
        let port = free_port();
        let broker = start_broker(&script, port, &data);
        Self {
            bin,
            script,
            work,
            data,
            port,
            brokers: format!("127.0.0.1:{port}"),
            broker,
        }
    }

    /// Kills the broker (SIGKILL) and waits for it.
    pub fn stop_broker(&mut self) {
        let _ = self.broker.kill();
        let _ = self.broker.wait();
    }
}

/// Starts `scripts/broker PORT DATA` and waits until it listens.
pub fn start_broker(script: &Path, port: u16, data: &Path) -> Child {
    let child = Command::new(script)
        .arg(port.to_string())
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the broker");
    wait_for_port(port);
    child
}

/// Creates `topics` (name, compacted) with `partitions` each.
pub async fn create_topics(brokers: &str, partitions: i32, topics: &[(&str, bool)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let topics: Vec<NewTopic> = topics
        .iter()
        .map(|(name, compacted)| {
            let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(-1));
            if *compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    admin
        .create_topics(topics.iter(), &AdminOptions::new())
        .await
        .unwrap();
}

/// One service instance: the binary with a config, its own metrics port, its log file.
pub struct Instance {
    pub name: &'static str,
    pub child: Option<Child>,
    /// The metrics port of the running process.
    pub port: u16,
    /// More environment for the process (`SYSMOS_NOTIFY__...` overrides).
    pub env: Vec<(String, String)>,
}

impl Instance {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            child: None,
            port: 0,
            env: Vec::new(),
        }
    }

    /// Starts the service; `log_filter` is its `RUST_LOG`.
    pub fn start(&mut self, bin: &Path, config: &Path, logs: &Path, log_filter: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("{}.log", self.name)))
            .unwrap();
        self.port = free_port();
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .env(
                "SYSMOS_NOTIFY__HTTP__LISTEN",
                format!("127.0.0.1:{}", self.port),
            )
            .env("RUST_LOG", log_filter)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sysmos-notify");
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}
