//! Test harness: a real Apache Kafka broker process, the service binary as a child process,
//! HTTP receivers that record requests, and polling helpers (no fixed sleeps).

#![allow(dead_code)]

pub mod fuzz_checks;
pub mod limits;
pub mod scenario;

pub use testkit::broker::free_port;
pub use testkit::{receiver, smtp, tls};

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// The broker every test of this process shares: `SYSMOS_TEST_BROKERS` when set, else an
/// Apache Kafka process started here on a free port (killed when the test process exits).
pub fn brokers() -> &'static str {
    static BROKERS: OnceLock<String> = OnceLock::new();
    BROKERS.get_or_init(|| match std::env::var("SYSMOS_TEST_BROKERS") {
        Ok(b) if !b.is_empty() => b,
        _ => start_broker(),
    })
}

/// The data folder of the broker started here, whose log a failing test prints.
static BROKER_DATA: OnceLock<PathBuf> = OnceLock::new();

/// A broker for this test process, killed with it: SIGKILL when the thread that started it
/// ends (PR_SET_PDEATHSIG), so that thread lives as long as the process.
fn start_broker() -> String {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap().keep();
    BROKER_DATA.set(dir.clone()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let data = dir.clone();
    std::thread::spawn(move || {
        use std::os::unix::process::CommandExt;
        let mut command = testkit::broker::command(port, &data);
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().expect("start scripts/broker");
        tx.send(()).unwrap();
        let _keep = child;
        loop {
            std::thread::park();
        }
    });
    rx.recv().unwrap();
    testkit::broker::wait_ready(port, &dir, Duration::from_secs(120));
    format!("127.0.0.1:{port}")
}

/// The tail of the shared broker's log, when this process started it.
pub fn broker_log_tail() -> String {
    BROKER_DATA
        .get()
        .map(|data| testkit::broker::log_tail(data, 30))
        .unwrap_or_default()
}

/// A name no other test of any run uses: topics, groups and prefixes derive from it.
pub fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("t{}x{n}x{nanos}{name}", std::process::id())
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The offsets `group` has committed on `topic`, summed over partitions (-1 = none).
pub fn committed(group: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = client_config().set("group.id", group).create().unwrap();
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return -1;
    };
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition(topic, p.id());
    }
    let Ok(offsets) = consumer.committed_offsets(tpl, Duration::from_secs(5)) else {
        return -1;
    };
    offsets
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

fn client_config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers());
    c
}

pub async fn create_topic(name: &str, partitions: i32) {
    testkit::broker::create_topics(brokers(), partitions, &[(name, false)]).await;
}

pub fn producer() -> FutureProducer {
    client_config().set("linger.ms", "0").create().unwrap()
}

pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    payload: Option<&[u8]>,
) {
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(p) = payload {
        record = record.payload(p);
    }
    record = record.headers(OwnedHeaders::new().insert(Header {
        key: "test",
        value: Some("1"),
    }));
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// Every message of `topic` so far, read from the beginning of each partition.
pub fn read_all(topic: &str) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = client_config()
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return Vec::new();
    };
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(5))
            .unwrap();
        if high > low {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
            ends.push((p.id(), high));
        }
    }
    if ends.is_empty() {
        return Vec::new();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ends.is_empty() && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            if let Some(i) = ends
                .iter()
                .position(|(p, end)| *p == m.partition() && m.offset() + 1 >= *end)
            {
                ends.remove(i);
            }
            out.push(m.detach());
        }
    }
    out
}

pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
}

/// One isolated deployment of the service: its own topic prefix, group and event topic.
pub struct Setup {
    pub name: String,
    pub prefix: String,
    pub events_topic: String,
    pub delays: Vec<&'static str>,
    pub extra: String,
    /// `delivery.allow_private_targets`: true so the local receivers are reachable.
    pub private_targets: bool,
    /// More `[delivery]` keys, one per line.
    pub delivery: String,
    /// More `[kafka.client]` properties, one per line.
    pub client: String,
    /// `kafka.partitions` of the service's topics.
    pub partitions: i32,
    pub http_port: u16,
    pub producer: FutureProducer,
    pub config: tempfile::NamedTempFile,
}

impl Setup {
    pub async fn new(name: &str, delays: &[&'static str]) -> Self {
        let name = unique(name);
        let events_topic = format!("{name}.monitor.alerts");
        create_topic(&events_topic, 2).await;
        let setup = Self {
            prefix: format!("{name}.notify"),
            events_topic,
            delays: delays.to_vec(),
            extra: String::new(),
            private_targets: true,
            delivery: String::new(),
            client: String::new(),
            partitions: 2,
            http_port: free_port(),
            producer: producer(),
            config: tempfile::Builder::new().suffix(".toml").tempfile().unwrap(),
            name,
        };
        setup.write_config();
        setup
    }

    pub fn write_config(&self) {
        std::fs::write(self.config.path(), self.config_text(self.http_port)).unwrap();
    }

    /// The settings file of one more instance of this deployment, serving on `port`.
    pub fn instance_config(&self, port: u16) -> tempfile::NamedTempFile {
        write_file(&self.config_text(port))
    }

    fn config_text(&self, port: u16) -> String {
        let delays: Vec<String> = self.delays.iter().map(|d| format!("\"{d}\"")).collect();
        format!(
            r#"[kafka]
brokers = "{brokers}"
group_id = "{name}-group"
event_topics = ["^{name}\\.monitor\\..*", "^{name}\\.server\\..*"]
topic_prefix = "{prefix}"
partitions = {partitions}
[kafka.client]
"topic.metadata.refresh.interval.ms" = "1000"
{client}
[retry]
delays = [{delays}]
[delivery]
timeout = "3s"
allow_private_targets = {private}
{delivery}
[http]
listen = "127.0.0.1:{port}"
[dashboard]
base_url = "https://app.example.test"
{extra}"#,
            brokers = brokers(),
            name = self.name,
            prefix = self.prefix,
            delays = delays.join(", "),
            partitions = self.partitions,
            extra = self.extra,
            private = self.private_targets,
            delivery = self.delivery,
            client = self.client,
        )
    }

    pub fn topic(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix)
    }

    pub async fn put_settings(&self, account: &str, settings: &serde_json::Value) {
        let bytes = settings.to_string();
        produce(
            &self.producer,
            &self.topic("config"),
            Some(account),
            Some(bytes.as_bytes()),
        )
        .await;
    }

    pub async fn tombstone(&self, account: &str) {
        produce(&self.producer, &self.topic("config"), Some(account), None).await;
    }

    pub async fn send_event(&self, event: &serde_json::Value) {
        let key = event["monitor"]["id"]
            .as_str()
            .or(event["server"]["id"].as_str())
            .unwrap_or("k")
            .to_owned();
        produce(
            &self.producer,
            &self.events_topic,
            Some(&key),
            Some(event.to_string().as_bytes()),
        )
        .await;
    }

    pub async fn send_raw(&self, payload: Option<&[u8]>) {
        produce(&self.producer, &self.events_topic, Some("raw"), payload).await;
    }

    /// Creates the service's topics (so settings can be written before the first start).
    pub async fn create_service_topics(&self) {
        create_topic(&self.topic("config"), 2).await;
    }

    pub fn start(&self) -> Service {
        Service::start(self.config.path().to_path_buf(), self.http_port)
    }
}

/// The service binary running as a child process.
pub struct Service {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Service {
    pub fn start(config: PathBuf, port: u16) -> Self {
        let filter = std::env::var("SYSMOS_TEST_SERVICE_LOG")
            .unwrap_or_else(|_| "info,librdkafka=warn".into());
        Self::start_logged(config, port, &filter)
    }

    /// As [`Service::start`], logging with `filter` (`RUST_LOG` syntax).
    pub fn start_logged(config: PathBuf, port: u16, filter: &str) -> Self {
        let log = tempfile::Builder::new()
            .suffix(".log")
            .tempfile()
            .unwrap()
            .keep()
            .unwrap()
            .1;
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sysmos-notify"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Self { child, port, log }
    }

    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let resp = reqwest::get(url).await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    }

    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((200, _)) = self.get("/readyz").await {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "service exited with {status} before ready; log:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "service not ready after 60s; log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of one metric series (exact name with labels), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let Some((_, text)) = self.get("/metrics").await else {
            return f64::NAN;
        };
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit; its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Service {
    /// A failing test shows what the service and the broker said last.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.logs();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- the service's log {} (last 60 lines)\n{}\n{}",
                self.log.display(),
                lines[lines.len().saturating_sub(60)..].join("\n"),
                broker_log_tail()
            );
        }
    }
}

pub fn write_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}
