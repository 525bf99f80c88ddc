//! The topics this service owns (CONTRACT §2), and their creation once the cluster answers.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Dead letters and rejected events wait for an operator: keep them 30 days.
const LONG_RETENTION_MS: &str = "2592000000";
/// `send-test` reads its report within minutes.
const ONE_DAY_MS: &str = "86400000";

#[derive(Debug, Clone)]
pub struct Topics {
    pub config: String,
    pub deliveries: String,
    /// `retry[k - 1]` is `P.retry.k`.
    pub retry: Vec<String>,
    pub dlq: String,
    pub rejected: String,
    /// Compacted: the verification emails already sent, keyed by (address, URL) hash.
    pub verifications: String,
    /// Compacted: dead letters already replayed by `dlq replay`.
    pub replayed: String,
    /// Attempt reports of `send-test` deliveries; kept one day.
    pub reports: String,
    /// What became of each delivery record handled (`crate::ledger`), kept
    /// `delivery.dedup_window`.
    pub handled: String,
}

impl Topics {
    pub fn new(prefix: &str, tiers: usize) -> Self {
        Self {
            config: format!("{prefix}.config"),
            deliveries: format!("{prefix}.deliveries"),
            retry: (1..=tiers).map(|k| format!("{prefix}.retry.{k}")).collect(),
            dlq: format!("{prefix}.dlq"),
            rejected: format!("{prefix}.rejected"),
            verifications: format!("{prefix}.verifications"),
            replayed: format!("{prefix}.replayed"),
            reports: format!("{prefix}.reports"),
            handled: format!("{prefix}.handled"),
        }
    }

    pub fn from_config(settings: &Config) -> Self {
        Self::new(&settings.kafka.topic_prefix, settings.retry.delays.len())
    }

    /// The tier a delivery topic holds: 0 for `P.deliveries`, k for `P.retry.k`.
    pub fn tier_of(&self, topic: &str) -> Option<usize> {
        if topic == self.deliveries {
            return Some(0);
        }
        self.retry.iter().position(|t| t == topic).map(|i| i + 1)
    }

    /// The topic of tier `k` (0 = first attempt).
    pub fn tier_topic(&self, tier: usize) -> &str {
        if tier == 0 {
            &self.deliveries
        } else {
            &self.retry[tier - 1]
        }
    }

    /// Every topic a deliverer consumes.
    pub fn delivery_topics(&self) -> Vec<&str> {
        std::iter::once(self.deliveries.as_str())
            .chain(self.retry.iter().map(String::as_str))
            .collect()
    }
}

/// Waits for the cluster and creates the missing topics, retrying with back-off; `false`
/// when `shutdown` came first.
pub async fn set_up(
    settings: &Config,
    topics: &Topics,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let kafka = &settings.kafka;
    let handled_retention = settings.delivery.dedup_window;
    let admin: Arc<AdminClient<DefaultClientContext>> =
        Arc::new(super::client::admin(kafka).create()?);
    let mut backoff = Duration::from_millis(500);
    loop {
        // Probe with a bounded, blocking metadata request first: an admin request against an
        // unreachable cluster does not give way to shutdown, a 5s metadata probe does.
        let probe = admin.clone();
        let reachable = tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            r = tokio::task::spawn_blocking(move || probe.inner().fetch_metadata(None, Duration::from_secs(5))) => r,
        };
        let attempt = match reachable {
            Ok(Ok(_)) => ensure(&admin, topics, kafka.partitions, handled_retention).await,
            Ok(Err(error)) => Err(anyhow::anyhow!(
                "Kafka at {} not reachable: {error}",
                kafka.brokers
            )),
            Err(error) => Err(anyhow::anyhow!("metadata probe failed: {error}")),
        };
        match attempt {
            Ok(()) => return Ok(true),
            Err(error) => {
                tracing::warn!("cannot set up topics yet: {error:#}; retrying in {backoff:?}")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(Duration::from_secs(10)),
        }
    }
}

/// Creates the service's topics that do not exist yet; existing ones are left as they are.
pub async fn ensure(
    admin: &AdminClient<DefaultClientContext>,
    topics: &Topics,
    partitions: i32,
    handled_retention: Duration,
) -> anyhow::Result<()> {
    let handled_retention_ms = handled_retention.as_millis().to_string();
    let mut wanted = vec![
        NewTopic::new(&topics.config, partitions, TopicReplication::Fixed(-1))
            .set("cleanup.policy", "compact"),
        NewTopic::new(
            &topics.verifications,
            partitions,
            TopicReplication::Fixed(-1),
        )
        .set("cleanup.policy", "compact"),
        NewTopic::new(&topics.replayed, partitions, TopicReplication::Fixed(-1))
            .set("cleanup.policy", "compact"),
        NewTopic::new(&topics.reports, partitions, TopicReplication::Fixed(-1))
            .set("retention.ms", ONE_DAY_MS),
        NewTopic::new(&topics.handled, partitions, TopicReplication::Fixed(-1))
            .set("retention.ms", &handled_retention_ms),
        NewTopic::new(&topics.deliveries, partitions, TopicReplication::Fixed(-1)),
        NewTopic::new(&topics.dlq, partitions, TopicReplication::Fixed(-1))
            .set("retention.ms", LONG_RETENTION_MS),
        NewTopic::new(&topics.rejected, partitions, TopicReplication::Fixed(-1))
            .set("retention.ms", LONG_RETENTION_MS),
    ];
    for name in &topics.retry {
        wanted.push(NewTopic::new(name, partitions, TopicReplication::Fixed(-1)));
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(wanted.iter(), &options).await?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tiers() {
        let t = Topics::new("sysmos.notify", 3);
        assert_eq!(t.config, "sysmos.notify.config");
        assert_eq!(t.verifications, "sysmos.notify.verifications");
        assert_eq!(
            t.retry,
            [
                "sysmos.notify.retry.1",
                "sysmos.notify.retry.2",
                "sysmos.notify.retry.3"
            ]
        );
        assert_eq!(t.tier_of("sysmos.notify.deliveries"), Some(0));
        assert_eq!(t.tier_of("sysmos.notify.retry.3"), Some(3));
        assert_eq!(t.tier_of("sysmos.notify.dlq"), None);
        assert_eq!(t.tier_topic(2), "sysmos.notify.retry.2");
        assert_eq!(t.delivery_topics().len(), 4);
    }
}
