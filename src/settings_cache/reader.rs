//! Reads the config topic from the beginning at every start and follows it; reports when
//! it has caught up with the end offsets seen at start (the `/readyz` condition).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Applied, SettingsCache};
use crate::kafka::context::ServiceContext;

/// Assigns every partition of `topic` from the beginning and returns the end offsets to reach.
pub fn assign_all(
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
    anyhow::ensure!(
        !partitions.is_empty(),
        "config topic {topic} has no partitions"
    );
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

/// Applies every record to `cache` until `shutdown`; `loaded` turns true once each partition
/// has been read up to its end offset at start.
pub async fn run(
    consumer: StreamConsumer<ServiceContext>,
    topic: String,
    mut targets: HashMap<i32, i64>,
    cache: Arc<SettingsCache>,
    loaded: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_loaded = false;
    loop {
        if !last_loaded && targets.is_empty() {
            tracing::info!(accounts = cache.len(), "settings cache loaded from {topic}");
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
                Err(error) => tracing::warn!(%error, "reading the config topic failed; retrying"),
                Ok(message) => {
                    if targets.get(&message.partition()).is_some_and(|end| message.offset() + 1 >= *end) {
                        targets.remove(&message.partition());
                    }
                    let key = message.key().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
                    match cache.apply(message.key(), message.payload()) {
                        Applied::Updated { skipped } => {
                            tracing::debug!(account = %key, "settings updated");
                            for reason in skipped {
                                tracing::warn!(account = %key, "channel skipped: {reason}");
                            }
                        }
                        Applied::Stale { cached, received } => {
                            tracing::info!(account = %key, cached, received, "older settings version ignored")
                        }
                        Applied::Removed => tracing::info!(account = %key, "settings removed (tombstone)"),
                        Applied::Invalid(reason) => tracing::error!(
                            account = %key, offset = message.offset(), partition = message.partition(),
                            "config record ignored: {reason}"
                        ),
                    }
                }
            }
        }
    }
}
