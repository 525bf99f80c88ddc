//! The broker the tests and runners use: Apache Kafka in KRaft mode as a plain process
//! (`scripts/broker`, shared/BROKER.md); free ports; topic creation.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// `scripts/broker`, which installs the broker (`scripts/install-broker`) when it is missing.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/broker")
}

/// The broker on `127.0.0.1:port` with its data in `data` (a restart keeps what was
/// written), ready to be spawned. Its controller port is a free one the first time, then
/// the one `data` was formatted with; the process exec's into the JVM, so killing the child
/// kills the broker.
pub fn command(port: u16, data: &Path) -> Command {
    std::fs::create_dir_all(data).expect("the broker's data folder");
    let mut command = Command::new(script());
    command.arg(port.to_string()).arg(data);
    if !data.join("server.properties").exists() {
        command.arg(free_port().to_string());
    }
    command.stdout(Stdio::null()).stderr(Stdio::null());
    command
}

/// Starts the broker (see [`command`]) and waits until it is ready.
pub fn start(port: u16, data: &Path) -> Child {
    let child = command(port, data).spawn().expect("start scripts/broker");
    wait_ready(port, data, Duration::from_secs(120));
    child
}

/// Waits until a metadata request on `port` names the broker; panics with the broker's log
/// after `timeout`. The first start of a machine also installs the broker.
pub fn wait_ready(port: u16, data: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    // Kafka 4 opens its listener once the broker is unfenced; waiting for the port first
    // keeps librdkafka from logging a refused connection per try.
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the broker on port {port} did not start within {timeout:?}; its log:\n{}",
            log_tail(data, 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{port}"))
        .create()
        .expect("a metadata client");
    loop {
        let named = consumer
            .fetch_metadata(None, Duration::from_secs(2))
            .map(|m| m.brokers().iter().any(|b| b.port() == i32::from(port)))
            .unwrap_or(false);
        if named {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the broker on port {port} names no broker in its metadata after {timeout:?}; its log:\n{}",
            log_tail(data, 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last `lines` lines of the broker's log (`data/logs/server.log`), for a failure report.
pub fn log_tail(data: &Path, lines: usize) -> String {
    let mut text = String::new();
    for name in ["server.log", "console.log"] {
        let path = data.join("logs").join(name);
        let Ok(log) = std::fs::read_to_string(&path) else {
            continue;
        };
        let all: Vec<&str> = log.lines().collect();
        text.push_str(&format!("--- {} (last {lines} lines)\n", path.display()));
        for line in &all[all.len().saturating_sub(lines)..] {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// Creates `topics` (name, compacted) with `partitions` each; a topic that exists is fine.
pub async fn create_topics(brokers: &str, partitions: i32, topics: &[(&str, bool)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("an admin client");
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
    let created = admin
        .create_topics(topics.iter(), &AdminOptions::new())
        .await
        .expect("the broker answers CreateTopics");
    for result in created {
        if let Err((name, code)) = result {
            assert_eq!(code, RDKafkaErrorCode::TopicAlreadyExists, "create {name}");
        }
    }
}

/// Produces `value` as JSON to `topic` with `key`; panics if the local broker does not take it.
pub async fn produce(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    key: &str,
    value: &serde_json::Value,
) {
    let payload = value.to_string();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(topic)
                .key(key)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce to the local broker");
}
