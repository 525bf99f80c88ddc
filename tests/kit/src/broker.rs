//! The Kafka-API broker the tests and runners use: Tansu 0.6.0 as a plain process
//! (shared/BROKER.md), installed by `scripts/install-broker`; free ports; topic creation.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// Waits until something accepts connections on `port`; panics after `timeout`.
pub fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listening on port {port} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The broker binary: `TANSU_BIN`, else where `scripts/install-broker` puts it.
pub fn tansu_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("TANSU_BIN") {
        return PathBuf::from(bin);
    }
    let cache = std::env::var("SYSMOS_NOTIFY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/sysmos-notify")
        });
    let bin = cache.join("tansu-0.6.0/bin/tansu");
    assert!(
        bin.exists(),
        "no broker at {}: run scripts/install-broker (or scripts/test)",
        bin.display()
    );
    bin
}

/// The broker on `127.0.0.1:port` with its sqlite store in `data` (a restart keeps what was
/// written), ready to be spawned.
pub fn command(port: u16, data: &Path) -> Command {
    std::fs::create_dir_all(data).expect("the broker's data folder");
    let listener = format!("tcp://127.0.0.1:{port}");
    let mut command = Command::new(tansu_binary());
    // The sqlite path is relative to the working directory (shared/BROKER.md).
    command
        .current_dir(data)
        .args(["broker", "--listener-url", &listener])
        .args(["--advertised-listener-url", &listener])
        .args(["--storage-engine", "sqlite://broker.db"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Starts the broker (see [`command`]) and waits until it listens.
pub fn start(port: u16, data: &Path) -> Child {
    let child = command(port, data).spawn().expect("start tansu");
    wait_for_port(port, Duration::from_secs(60));
    child
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
