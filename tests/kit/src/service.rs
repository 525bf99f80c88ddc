//! What the runners in `examples/` drive: the broker and service instances, each a child
//! process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::broker::{self, free_port};

/// Wall-clock milliseconds since the epoch, as events carry in `produced_at_ms`.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A run's surroundings: the service binary (`SYSMOS_BIN`), a work folder kept for the logs,
/// and the broker started there.
pub struct Setting {
    pub bin: PathBuf,
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
        let work = tempfile::tempdir().unwrap().keep();
        let data = work.join("broker");
        let port = free_port();
        let broker = broker::start(port, &data);
        Self {
            bin,
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

    /// Starts the broker again on the same port and data.
    pub fn restart_broker(&mut self) {
        self.broker = broker::start(self.port, &self.data);
    }
}

/// A runner that panics leaves no broker behind to skew the next measurement.
impl Drop for Setting {
    fn drop(&mut self) {
        self.stop_broker();
    }
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

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}
