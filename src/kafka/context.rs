//! Where librdkafka meets telemetry: its logs go to `tracing`, its statistics become the
//! `sysmos_notify_consumer_lag` gauges, and rebalances update the consumer's assignment.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;

use super::offsets::Assignment;
use crate::metrics::Metrics;

/// The context of one of the service's consumers (`role` names it in logs).
pub struct ServiceContext {
    role: &'static str,
    metrics: Arc<Metrics>,
    pub assignment: Arc<Mutex<Assignment>>,
    /// Set on the first assignment: the consumer has joined its group.
    joined: Arc<AtomicBool>,
    reported_lag: Mutex<HashSet<(String, i32)>>,
}

impl ServiceContext {
    pub fn new(role: &'static str, metrics: Arc<Metrics>, joined: Arc<AtomicBool>) -> Self {
        Self {
            role,
            metrics,
            assignment: Arc::default(),
            joined,
            reported_lag: Mutex::default(),
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ClientContext for ServiceContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let role = self.role;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", role, facility, "{message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", role, facility, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", role, facility, "{message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", role, facility, "{message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) {
            // The subscription was resolved and matched no topic yet: the consumer is as
            // joined as it can be, and picks topics up when they appear (metadata refresh).
            if !self.joined.swap(true, Ordering::AcqRel) {
                tracing::info!(
                    role = self.role,
                    "no topic matches the subscription yet; waiting for one: {reason}"
                );
            }
            return;
        }
        tracing::warn!(target: "librdkafka", role = self.role, %error, "{reason}");
    }

    fn stats(&self, stats: Statistics) {
        let owned: HashSet<(String, i32)> = {
            let assignment = self.assignment.lock().expect("assignment lock");
            stats
                .topics
                .values()
                .flat_map(|t| {
                    t.partitions
                        .values()
                        .map(move |p| (t.topic.clone(), p.partition))
                })
                .filter(|(topic, partition)| assignment.owns(topic, *partition))
                .collect()
        };
        for topic in stats.topics.values() {
            for p in topic.partitions.values() {
                if !owned.contains(&(topic.topic.clone(), p.partition)) {
                    continue;
                }
                // Lag from the committed offset, as Kafka tools report it; before the first
                // commit everything the broker holds is still to be read.
                let lag = if p.consumer_lag >= 0 {
                    p.consumer_lag
                } else if p.hi_offset >= 0 && p.lo_offset >= 0 {
                    p.hi_offset - p.lo_offset
                } else {
                    continue;
                };
                self.metrics.consumer_lag(&topic.topic, p.partition, lag);
            }
        }
        let mut reported = self.reported_lag.lock().expect("lag lock");
        for (topic, partition) in reported.difference(&owned) {
            self.metrics.forget_lag(topic, *partition);
        }
        *reported = owned;
    }
}

impl ConsumerContext for ServiceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Hand back what we own with every finished offset committed; unfinished work is
            // repeated by the next owner (at-least-once).
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => {
                    tracing::warn!(role = self.role, error = %e, "commit before revoke failed")
                }
            }
            let revoked = partitions(tpl);
            tracing::info!(role = self.role, partitions = ?revoked, "partitions revoked");
            self.assignment
                .lock()
                .expect("assignment lock")
                .revoke(revoked);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let assigned = partitions(tpl);
                tracing::info!(role = self.role, partitions = ?assigned, "partitions assigned");
                self.assignment
                    .lock()
                    .expect("assignment lock")
                    .assign(assigned);
                self.joined.store(true, Ordering::Release);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                tracing::error!(role = self.role, error = %e, "rebalance failed")
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::trace!(role = self.role, ?offsets, "offsets committed"),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(role = self.role, error = %e, "offset commit failed; will retry")
            }
        }
    }
}

/// A group consumer of this service.
pub type GroupConsumer = rdkafka::consumer::StreamConsumer<ServiceContext>;

/// A consumer of `group` subscribed to `topics`; `joined` turns true on its first assignment.
pub fn subscribed(
    kafka: &crate::config::KafkaSettings,
    group: &str,
    role: &'static str,
    metrics: Arc<Metrics>,
    joined: Arc<AtomicBool>,
    topics: &[&str],
) -> anyhow::Result<Arc<GroupConsumer>> {
    use rdkafka::config::FromClientConfigAndContext;
    use rdkafka::consumer::Consumer;
    let consumer = GroupConsumer::from_config_and_context(
        &super::client::group_consumer(kafka, group),
        ServiceContext::new(role, metrics, joined),
    )?;
    consumer.subscribe(topics)?;
    Ok(Arc::new(consumer))
}

/// Registers work on a received message; `None` when it is not ours to do (revoked or re-fetched).
pub fn begin<M: rdkafka::Message>(
    consumer: &GroupConsumer,
    message: &M,
) -> Option<super::offsets::Position> {
    consumer
        .context()
        .assignment
        .lock()
        .expect("assignment lock")
        .begin(message.topic(), message.partition(), message.offset())
}

/// Marks the work on `pos` finished and stores the partition's new low-water offset, which the
/// background commit then makes durable.
pub fn finish(consumer: &GroupConsumer, pos: &super::offsets::Position) {
    let next = consumer
        .context()
        .assignment
        .lock()
        .expect("assignment lock")
        .finish(pos);
    if let Some(next) = next {
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(&pos.topic, pos.partition, rdkafka::Offset::Offset(next))
            .is_ok()
        {
            if let Err(error) = consumer.store_offsets(&tpl) {
                // The partition was revoked meanwhile; its next owner repeats the work.
                tracing::debug!(topic = %pos.topic, partition = pos.partition, %error, "offset not stored");
            }
        }
    }
}

/// Commits every stored offset synchronously (shutdown).
pub fn commit_stored(consumer: &GroupConsumer, role: &str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => {
            tracing::warn!(role, %error, "final commit failed; the uncommitted work will be repeated")
        }
    }
}
