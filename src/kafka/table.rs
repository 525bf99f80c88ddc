//! Reads a topic into memory from the beginning at every start and follows it, handing each
//! record to the table it feeds: the config topic and the verification markers (compacted),
//! and what became of recent deliveries (`P.handled`, kept `delivery.dedup_window`). Reports
//! when it has caught up with the end offsets seen at start.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::context::ServiceContext;
use crate::config::KafkaConfig;
use crate::metrics::Metrics;

/// Starts following `topic` from the beginning with its own reader (group `{group_id}.{role}`,
/// used for nothing but client identity), handing each record to `apply`. The receiver turns
/// true once the topic has been read up to the end offsets seen now. Finding the partitions and
/// their end offsets waits on the broker, so it runs off the async workers.
pub async fn follow(
    kafka: &KafkaConfig,
    role: &'static str,
    metrics: std::sync::Arc<Metrics>,
    topic: &str,
    apply: impl FnMut(&BorrowedMessage<'_>) + Send + 'static,
    shutdown: CancellationToken,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, watch::Receiver<bool>)> {
    use rdkafka::config::FromClientConfigAndContext;
    let consumer = StreamConsumer::from_config_and_context(
        &super::client::reader(kafka, &format!("{}.{role}", kafka.group_id)),
        ServiceContext::new(role, metrics, Default::default()),
    )?;
    let owned_topic = topic.to_owned();
    let (consumer, targets) = tokio::task::spawn_blocking(move || {
        assign_all_when_led(&consumer, &owned_topic).map(|targets| (consumer, targets))
    })
    .await??;
    let (loaded_tx, loaded_rx) = watch::channel(false);
    let task = tokio::spawn(run(
        consumer,
        topic.to_owned(),
        targets,
        apply,
        loaded_tx,
        shutdown,
    ));
    Ok((task, loaded_rx))
}

/// How long a topic's partitions may go without a leader before following it fails.
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// [`assign_all`], tried again while it fails for up to [`LEADER_WAIT`]: Apache Kafka
/// answers CreateTopics, and even names a leader in metadata, before that leader serves the
/// new partitions, so a watermark query right after creation fails with NotLeaderForPartition.
fn assign_all_when_led(
    consumer: &StreamConsumer<ServiceContext>,
    topic: &str,
) -> anyhow::Result<HashMap<i32, i64>> {
    let deadline = std::time::Instant::now() + LEADER_WAIT;
    loop {
        match assign_all(consumer, topic) {
            Ok(targets) => return Ok(targets),
            Err(error) if std::time::Instant::now() < deadline => {
                tracing::debug!(topic, %error, "partitions not served yet; trying again");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(error) => {
                return Err(error.context(format!(
                    "the partitions of {topic} were not served within {LEADER_WAIT:?}; \
                     check the broker's log"
                )))
            }
        }
    }
}

/// Assigns every partition of `topic` from the beginning and returns the end offsets to reach.
fn assign_all(
    consumer: &StreamConsumer<ServiceContext>,
    topic: &str,
) -> anyhow::Result<HashMap<i32, i64>> {
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    let mut targets = HashMap::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        if high > low {
            targets.insert(p, high);
        }
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(targets)
}

/// Hands every record to `apply` until `shutdown`; `loaded` turns true once each partition
/// has been read up to its end offset at start.
async fn run(
    consumer: StreamConsumer<ServiceContext>,
    topic: String,
    mut targets: HashMap<i32, i64>,
    mut apply: impl FnMut(&BorrowedMessage<'_>),
    loaded: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_loaded = false;
    loop {
        if !last_loaded && targets.is_empty() {
            tracing::info!("{topic} read up to its end");
            let _ = loaded.send(true);
            last_loaded = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                // Gaps at the end (compaction) never yield a message; the position still moves.
                if let Ok(positions) = consumer.position() {
                    for e in positions.elements() {
                        if let Offset::Offset(pos) = e.offset() {
                            if targets.get(&e.partition()).is_some_and(|end| pos >= *end) {
                                targets.remove(&e.partition());
                            }
                        }
                    }
                }
            }
            received = consumer.recv() => match received {
                Err(error) => tracing::warn!(%error, "reading {topic} failed; retrying"),
                Ok(message) => {
                    if targets.get(&message.partition()).is_some_and(|end| message.offset() + 1 >= *end) {
                        targets.remove(&message.partition());
                    }
                    apply(&message);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::testing::{ticks_during, unreachable_kafka};

    #[tokio::test]
    async fn waiting_for_the_cluster_leaves_the_async_worker_free() {
        let kafka = unreachable_kafka();
        let metrics = std::sync::Arc::new(Metrics::new());
        let following = follow(
            &kafka,
            "settings",
            metrics,
            "t",
            |_| {},
            CancellationToken::new(),
        );
        let (followed, ticks) = ticks_during(following).await;
        assert!(followed.is_err(), "no cluster answers");
        assert!(
            ticks >= 100,
            "the runtime's only worker ticked {ticks} times in the 10 s metadata wait"
        );
    }
}
