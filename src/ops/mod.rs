//! Operator commands of the same binary and config file: `dlq list` / `dlq replay`,
//! `send-test` and `settings show`. They are short-lived clients of the service's topics;
//! what they print never holds a secret.

pub mod dlq;
pub mod send_test;
pub mod show;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::{Config, KafkaConfig};
use crate::kafka::client;
use crate::kafka::topics::Topics;
use crate::metrics::Metrics;
use crate::settings_cache::SettingsCache;

/// How long a command waits for the cluster before it gives up with a clear message.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// A command's connection to the cluster: the service's topic names and a producer.
pub struct Ops {
    pub config: Config,
    pub topics: Topics,
    pub producer: FutureProducer,
}

impl Ops {
    /// Connects and makes sure the service's topics exist (as the service would).
    pub async fn connect(config: Config) -> anyhow::Result<Self> {
        let topics = Topics::from_config(&config);
        let shutdown = crate::shutdown::on_signal();
        let ready = tokio::time::timeout(
            KAFKA_TIMEOUT,
            crate::kafka::topics::set_up(&config, &topics, &shutdown),
        )
        .await;
        match ready {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => anyhow::bail!("interrupted"),
            Ok(Err(error)) => return Err(error),
            Err(_) => anyhow::bail!(
                "Kafka at {} did not answer within {KAFKA_TIMEOUT:?}; check kafka.brokers",
                config.kafka.brokers
            ),
        }
        let producer = client::producer(&config.kafka).create()?;
        Ok(Self {
            config,
            topics,
            producer,
        })
    }

    /// Every record of `topic` from the beginning up to the end offsets seen now.
    pub fn read(&self, topic: &str) -> anyhow::Result<Vec<OwnedMessage>> {
        read_topic(&self.config.kafka, topic)
    }

    /// The settings cache as the service would hold it now.
    pub fn settings_cache(&self) -> anyhow::Result<SettingsCache> {
        let cache = SettingsCache::new(Arc::new(Metrics::new()));
        for message in self.read(&self.topics.config)? {
            cache.apply(message.key(), message.payload());
        }
        Ok(cache)
    }

    /// Produces one record and waits for the broker's acknowledgement.
    pub async fn produce(&self, topic: &str, key: &str, payload: &[u8]) -> anyhow::Result<()> {
        self.producer
            .send(
                FutureRecord::to(topic).key(key).payload(payload),
                KAFKA_TIMEOUT,
            )
            .await
            .map(drop)
            .map_err(|(error, _)| anyhow::anyhow!("writing to {topic} failed: {error}"))
    }
}

/// Reads every partition of `topic` from the beginning to its current end, oldest first.
pub fn read_topic(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<Vec<OwnedMessage>> {
    let consumer: BaseConsumer =
        client::reader(kafka, &format!("{}.ops", kafka.group_id)).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT)?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = std::collections::HashMap::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), KAFKA_TIMEOUT)?;
        if high > low {
            remaining.insert(p.id(), high);
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    let mut records = Vec::new();
    if remaining.is_empty() {
        return Ok(records);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + KAFKA_TIMEOUT;
    while !remaining.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "reading {topic} did not reach its end within {KAFKA_TIMEOUT:?}"
        );
        // Compaction leaves gaps at the end: the position moves past them without a message.
        if let Ok(positions) = consumer.position() {
            for e in positions.elements() {
                if let Offset::Offset(pos) = e.offset() {
                    if remaining.get(&e.partition()).is_some_and(|end| pos >= *end) {
                        remaining.remove(&e.partition());
                    }
                }
            }
        }
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message?;
            if remaining
                .get(&message.partition())
                .is_some_and(|end| message.offset() < *end)
            {
                if message.offset() + 1 >= remaining[&message.partition()] {
                    remaining.remove(&message.partition());
                }
                records.push(message.detach());
            }
        }
    }
    records.sort_by_key(|m| (m.timestamp().to_millis(), m.partition(), m.offset()));
    Ok(records)
}

/// A `--since` that is neither a time nor a duration.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is neither an RFC 3339 time nor a duration like 2h")]
pub struct InvalidSince(String);

/// `--since`: an RFC 3339 time, or a duration back from now (`90m`, `2h`).
pub fn parse_since(text: &str) -> Result<DateTime<Utc>, InvalidSince> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    crate::config::parse_duration(text)
        .ok()
        .and_then(|ago| chrono::Duration::from_std(ago).ok())
        .map(|ago| Utc::now() - ago)
        .ok_or_else(|| InvalidSince(text.to_owned()))
}

/// A user-supplied URL shown without what may be a token: scheme, host and port only.
pub fn mask_url(raw: &str) -> String {
    match reqwest::Url::parse(raw) {
        Ok(url) => {
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            let host = url.host_str().unwrap_or("?");
            format!("{}://{host}{port}/***", url.scheme())
        }
        Err(_) => "***".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_and_masking() {
        assert_eq!(
            parse_since("2025-01-15T10:30:00Z").unwrap().to_rfc3339(),
            "2025-01-15T10:30:00+00:00"
        );
        let two_hours = Utc::now() - parse_since("2h").unwrap();
        assert!((7199..=7201).contains(&two_hours.num_seconds()));
        assert!(parse_since("yesterday").is_err());
        assert_eq!(
            mask_url("https://discord.com/api/webhooks/1/tok3n?x=1"),
            "https://discord.com/***"
        );
        assert_eq!(
            mask_url("http://127.0.0.1:8080/h"),
            "http://127.0.0.1:8080/***"
        );
        assert_eq!(mask_url("not a url"), "***");
    }
}
