//! The router loop: consumes the event topics in the service's consumer group, writes the
//! decision's records, and stores an event's offset only after all of them are acknowledged.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdkafka::Message;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{decide, Decision};
use crate::kafka::context::{begin, finish, GroupConsumer};
use crate::kafka::producer::{OutRecord, Output};
use crate::kafka::topics::Topics;
use crate::metrics::{EventOutcome, Metrics};
use crate::settings_cache::SettingsCache;

/// Records (deliveries, rejected copies) that may be awaiting acknowledgement at once: bounds
/// memory in a storm whatever the fan-out. Counted per record, not per event: an event with
/// ten channels holds ten delivery records (BENCHMARKS.md, "Cost growth").
const MAX_PENDING_RECORDS: u32 = 2048;

pub struct Router {
    pub topics: Topics,
    pub cache: Arc<SettingsCache>,
    pub output: Arc<Output>,
    pub metrics: Arc<Metrics>,
}

impl Router {
    pub async fn run(
        self: Arc<Self>,
        consumer: Arc<GroupConsumer>,
        shutdown: CancellationToken,
        drain: Duration,
    ) {
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(MAX_PENDING_RECORDS as usize));
        loop {
            let received = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                received = consumer.recv() => received,
            };
            let message = match received {
                Ok(message) => message,
                Err(error)
                    if error.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition) =>
                {
                    continue; // no event topic matches yet; reported by the consumer context
                }
                Err(error) => {
                    tracing::warn!(%error, "event consumer error");
                    continue;
                }
            };
            let Some(pos) = begin(&consumer, &message) else {
                continue;
            };
            let (records, outcome) = match decide(message.payload(), &self.cache, Utc::now()) {
                Decision::Reject(reason) => {
                    tracing::warn!(topic = message.topic(), partition = message.partition(),
                        offset = message.offset(), %reason, "event rejected");
                    let record = OutRecord {
                        topic: self.topics.rejected.clone(),
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message.payload().map(<[u8]>::to_vec),
                        headers: vec![
                            ("reason", reason.to_string()),
                            ("source-topic", message.topic().to_owned()),
                            ("source-partition", message.partition().to_string()),
                            ("source-offset", message.offset().to_string()),
                            ("rejected-at", Utc::now().to_rfc3339()),
                        ],
                    };
                    (vec![record], EventOutcome::Rejected)
                }
                Decision::NoRoute(why) => {
                    tracing::debug!(
                        topic = message.topic(),
                        offset = message.offset(),
                        "event not routed: {why}"
                    );
                    (Vec::new(), EventOutcome::NoRoute)
                }
                Decision::Deliver(deliveries) => {
                    let records = deliveries
                        .iter()
                        .map(|d| {
                            let payload =
                                serde_json::to_vec(d).expect("delivery records serialize");
                            OutRecord::new(&self.topics.deliveries, d.key(), payload)
                        })
                        .collect();
                    (records, EventOutcome::Routed)
                }
            };
            if records.is_empty() {
                self.metrics.event(outcome);
                finish(&consumer, &pos);
                continue;
            }
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = permits.clone().acquire_many_owned(
                    (records.len() as u32).min(MAX_PENDING_RECORDS)
                ) => permit.expect("semaphore never closed"),
            };
            // Enqueued here, in consumption order, so one channel's deliveries keep their order.
            let pending = self.output.enqueue(records).await;
            let (this, consumer) = (self.clone(), consumer.clone());
            tracker.spawn(async move {
                if this.output.confirm(pending).await.is_ok() {
                    this.metrics.event(outcome);
                    finish(&consumer, &pos);
                }
                drop(permit);
            });
        }
        tracker.close();
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            tracing::warn!("router writes still unacknowledged at the drain deadline; those events will be re-read");
        }
    }
}
