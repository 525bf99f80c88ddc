//! Where librdkafka meets telemetry: its logs go to `tracing`, its statistics become the
//! lag gauges (messages, seconds, retry backlog), and rebalances update the consumer's
//! assignment.

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
    /// `P.retry.1..N` when this consumer reads the tiers: their lag is the retry backlog.
    tiers: Vec<String>,
}

impl ServiceContext {
    pub fn new(role: &'static str, metrics: Arc<Metrics>, joined: Arc<AtomicBool>) -> Self {
        Self {
            role,
            metrics,
            assignment: Arc::default(),
            joined,
            reported_lag: Mutex::default(),
            tiers: Vec::new(),
        }
    }

    /// Reports the lag of these retry-tier topics as `sysmos_notify_retry_backlog{tier}`.
    pub fn with_tiers(mut self, tiers: &[String]) -> Self {
        self.tiers = tiers.to_vec();
        self
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
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut owned = HashSet::new();
        let mut backlog = vec![0; self.tiers.len()];
        {
            let assignment = self.assignment.lock().expect("assignment lock");
            for topic in stats.topics.values() {
                for p in topic.partitions.values() {
                    let Some(age_ms) = assignment.oldest_age_ms(&topic.topic, p.partition, now_ms)
                    else {
                        continue; // not assigned to this consumer (or librdkafka's -1 partition)
                    };
                    // Lag from the committed offset, as Kafka tools report it; before the first
                    // commit everything the broker holds is still to be read.
                    let lag = if p.consumer_lag >= 0 {
                        p.consumer_lag
                    } else if p.hi_offset >= 0 && p.lo_offset >= 0 {
                        p.hi_offset - p.lo_offset
                    } else {
                        continue;
                    };
                    self.metrics.consumer_lag(
                        &topic.topic,
                        p.partition,
                        lag,
                        age_ms as f64 / 1000.0,
                    );
                    if let Some(tier) = self.tiers.iter().position(|t| *t == topic.topic) {
                        backlog[tier] += lag;
                    }
                    owned.insert((topic.topic.clone(), p.partition));
                }
            }
        }
        for (tier, waiting) in backlog.into_iter().enumerate() {
            self.metrics.retry_backlog(tier + 1, waiting);
        }
        let mut reported = self.reported_lag.lock().expect("lag lock");
        for (topic, partition) in reported.difference(&owned) {
            self.metrics.forget_lag(topic, *partition);
        }
        *reported = owned;
    }
}

impl ConsumerContext for ServiceContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // No offset is stored after this. librdkafka itself commits the stored offsets of
            // the partitions it then unassigns, and waits for that commit before the group
            // moves on (`enable.auto.commit`), so the next owner starts where this one
            // finished; unfinished work is repeated (at-least-once). A commit made here would
            // block the async worker that polls the consumer.
            let revoked = partitions(tpl);
            tracing::info!(role = self.role, partitions = ?revoked, "partitions revoked");
            self.assignment
                .lock()
                .expect("assignment lock")
                .revoke(revoked);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // A retry tier pauses a partition while its head waits; the task that would
                // resume it gives up when the partition is revoked. A new assignment starts
                // unpaused, so a partition assigned back to this consumer is read again.
                if let Err(error) = consumer.resume(tpl) {
                    tracing::warn!(role = self.role, %error, "resuming assigned partitions failed");
                }
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

/// A consumer built from `config` with `context`, subscribed to `topics`.
pub fn subscribed(
    config: &rdkafka::ClientConfig,
    context: ServiceContext,
    topics: &[&str],
) -> anyhow::Result<Arc<GroupConsumer>> {
    use rdkafka::config::FromClientConfigAndContext;
    use rdkafka::consumer::Consumer;
    let consumer = GroupConsumer::from_config_and_context(config, context)?;
    consumer.subscribe(topics)?;
    Ok(Arc::new(consumer))
}

/// The next message that is this consumer's to work on, detached and begun; `None` once
/// `shutdown` is cancelled. Consumer errors are logged and reading goes on; messages of
/// partitions not assigned here, or begun already (re-fetched), are skipped.
pub async fn next_owned(
    consumer: &GroupConsumer,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<(rdkafka::message::OwnedMessage, super::offsets::Position)> {
    use rdkafka::Message;
    loop {
        let received = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            received = consumer.recv() => received,
        };
        let message = match received {
            Ok(message) => message.detach(),
            Err(error) => {
                tracing::warn!(role = consumer.context().role, %error, "consumer error");
                continue;
            }
        };
        match begin(consumer, &message) {
            Some(pos) => return Some((message, pos)),
            None => tracing::debug!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                "record not begun: not assigned here, or begun already"
            ),
        }
    }
}

/// Whether the work begun at `pos` is still this consumer's to finish (not revoked since).
pub fn owns(consumer: &GroupConsumer, pos: &super::offsets::Position) -> bool {
    consumer
        .context()
        .assignment
        .lock()
        .expect("assignment lock")
        .is_current(pos)
}

/// When `consumer` was last assigned partitions.
pub fn assigned_at(consumer: &GroupConsumer) -> Option<std::time::Instant> {
    consumer
        .context()
        .assignment
        .lock()
        .expect("assignment lock")
        .assigned_at()
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
        .begin(
            message.topic(),
            message.partition(),
            message.offset(),
            message.timestamp().to_millis(),
        )
}

/// Marks the work on `pos` finished and stores the partition's new low-water offset, which the
/// background commit then makes durable.
pub fn finish(consumer: &GroupConsumer, pos: &super::offsets::Position) {
    // librdkafka keeps the last offset stored, not the highest: computing the offset and
    // storing it under one lock keeps a slower task from storing an older offset last.
    let mut assignment = consumer
        .context()
        .assignment
        .lock()
        .expect("assignment lock");
    let Some(next) = assignment.finish(pos) else {
        return;
    };
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
    drop(assignment);
}

/// Commits every stored offset (shutdown) and logs where each partition stands. The commit
/// and the query wait on the broker, so they run off the async workers.
pub async fn commit_stored(consumer: &Arc<GroupConsumer>, role: &'static str) {
    let consumer = consumer.clone();
    let committing = tokio::task::spawn_blocking(move || {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                tracing::warn!(role, %error, "final commit failed; the uncommitted work will be repeated");
                return; // the broker did not answer the commit: do not wait on it again
            }
        }
        // One short round trip: what the group now holds, for an operator reading the log.
        if let Ok(committed) = consumer.committed(std::time::Duration::from_secs(1)) {
            let offsets: Vec<String> = committed
                .elements()
                .iter()
                .map(|e| format!("{}[{}]={:?}", e.topic(), e.partition(), e.offset()))
                .collect();
            tracing::info!(role, offsets = ?offsets, "committed at shutdown");
        }
    });
    if let Err(error) = committing.await {
        tracing::warn!(role, %error, "final commit did not complete");
    }
}
