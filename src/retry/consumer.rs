//! The deliverer loop: consumes `P.deliveries` and every `P.retry.k` in one consumer group,
//! attempts deliveries concurrently, and writes each outcome (next tier or DLQ) before the
//! offset is stored. A retry tier holds a delivery that is not yet due by pausing only its
//! partition, so other partitions and topics keep flowing while it waits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{next_step, Step};
use crate::delivery::{pagerduty, Channels, Outcome, Sent};
use crate::kafka::context::{finish, next_owned, GroupConsumer};
use crate::kafka::offsets::Position;
use crate::kafka::producer::{OutRecord, Output};
use crate::kafka::topics::Topics;
use crate::ledger::{Handled, InFlight, Journal, Ledger, Next, Verdict};
use crate::metrics::{DeliveryOutcome, Metrics};
use crate::model::{
    Attempt, AttemptOutcome, AttemptReport, Channel, ChannelKind, DeadLetter, DeliveryRecord,
};
use crate::render::pagerduty::dedup_key as pagerduty_key;
use crate::settings_cache::SettingsCache;

pub struct Deliverer {
    pub topics: Topics,
    pub delays: Vec<Duration>,
    pub cache: Arc<SettingsCache>,
    pub channels: Arc<Channels>,
    /// What became of recent delivery records (`P.handled`): repeats and superseded problems.
    pub ledger: Arc<Ledger>,
    /// Writes `P.handled`, in batches, and remembers in the ledger what it wrote.
    pub journal: Journal,
    /// The records being attempted here, so two copies are not sent at once.
    pub in_flight: InFlight,
    pub output: Arc<Output>,
    pub metrics: Arc<Metrics>,
    /// `delivery.max_in_flight` attempts (requests, SMTP transactions) at once in this process.
    pub permits: Arc<Semaphore>,
    /// Deliveries read and not yet finished: attempting, or writing where they go next.
    /// [`UNFINISHED_PER_ATTEMPT`] times `permits`, so the writes, which wait on the broker,
    /// do not hold attempt slots.
    pub unfinished: Arc<Semaphore>,
}

/// Deliveries read and not yet finished, per attempt slot. A delivery holds an attempt slot
/// only while its request is made; then its outcome and `P.handled` are written and
/// acknowledged (tens of milliseconds on a busy broker) before its offset is stored. With the
/// slot held through the writes, a storm was capped at 512 slots over that round trip
/// (BENCHMARKS.md, "The fetch back-off and the attempt slot").
pub const UNFINISHED_PER_ATTEMPT: usize = 2;

impl Deliverer {
    pub async fn run(
        self: Arc<Self>,
        consumer: Arc<GroupConsumer>,
        shutdown: CancellationToken,
        drain: Duration,
    ) {
        let tracker = TaskTracker::new();
        while let Some((message, pos)) = next_owned(&consumer, &shutdown).await {
            let tier = self.topics.tier_of(message.topic()).unwrap_or(0);
            let record = match decode(&message) {
                Ok(record) => record,
                Err(reason) => {
                    let (this, consumer) = (self.clone(), consumer.clone());
                    tracker.spawn(
                        async move { this.quarantine(message, reason, consumer, pos).await },
                    );
                    continue;
                }
            };
            let wait = record
                .not_before
                .and_then(|due| (due - Utc::now()).to_std().ok())
                .filter(|wait| !wait.is_zero());
            if let Some(wait) = wait {
                // Later records of this partition are due later still: hold the partition.
                set_paused(&consumer, &pos, true);
                let (this, consumer, shutdown) = (self.clone(), consumer.clone(), shutdown.clone());
                tracker.spawn(async move {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    if !consumer.context().assignment.lock().expect("assignment lock").is_current(&pos) {
                        tracing::debug!(topic = %pos.topic, partition = pos.partition, offset = pos.offset,
                            "revoked while waiting; the next owner attempts it");
                        return; // revoked while waiting: the next owner attempts it
                    }
                    set_paused(&consumer, &pos, false);
                    let permit = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        permit = this.unfinished.clone().acquire_owned() => permit.expect("semaphore never closed"),
                    };
                    this.attempt(record, tier, consumer, pos, permit, shutdown).await;
                });
                continue;
            }
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = self.unfinished.clone().acquire_owned() => permit.expect("semaphore never closed"),
            };
            tracker.spawn(self.clone().attempt(
                record,
                tier,
                consumer.clone(),
                pos,
                permit,
                shutdown.clone(),
            ));
        }
        tracker.close();
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            tracing::warn!("deliveries still in flight at the drain deadline; they will be repeated after restart");
        }
    }

    /// One attempt of one delivery, and the write of where it goes next.
    async fn attempt(
        self: Arc<Self>,
        record: DeliveryRecord,
        tier: usize,
        consumer: Arc<GroupConsumer>,
        pos: Position,
        _unfinished: OwnedSemaphorePermit,
        shutdown: CancellationToken,
    ) {
        // Taken before the ledger is asked, so its verdict is fresh when the request is made.
        let slot = tokio::select! {
            // Not attempted: its offset is not stored, and the partition's next owner reads it.
            _ = shutdown.cancelled() => return,
            slot = self.permits.clone().acquire_owned() => slot.expect("semaphore never closed"),
        };
        // A copy of this record in flight here goes first; this one then asks the ledger.
        let _claim = self.in_flight.claim(&record).await;
        let attempts_before = record.attempts.len() as u32;
        let (account, channel_id, id) =
            (&record.account_id, &record.channel_id, &record.delivery_id);
        let channel = self
            .cache
            .channel(&record.account_id, &record.channel_id)
            .filter(|c| c.deliverable());
        let (next, counted) = match (self.ledger.verdict(&record), channel) {
            (Verdict::Repeat, _) => {
                tracing::info!(account = %account, channel = %channel_id, delivery = %id, attempts_before,
                    "handled before (re-read after a restart or rebalance, or a repeated event); not sent again");
                self.metrics
                    .delivery(&record.channel_type, DeliveryOutcome::Duplicate);
                finish(&consumer, &pos);
                return;
            }
            (Verdict::Attempt, Some(channel)) => {
                self.send(record, tier, channel, consumer, pos, slot).await;
                return;
            }
            (Verdict::Superseded, channel) => {
                tracing::info!(account = %account, channel = %channel_id, delivery = %id, event = %record.event_type,
                    "its incident's recovery was delivered on this channel already; problem dropped");
                // An earlier attempt that got no answer may have opened the incident anyway.
                let unanswered = record.attempts.iter().any(|a| a.status.is_none());
                if let (Some(channel), true) = (channel, unanswered) {
                    self.resolve_again(&channel, &record).await;
                }
                drop(slot);
                (Next::Superseded, DeliveryOutcome::Superseded)
            }
            (_, None) => {
                tracing::info!(account = %account, channel = %channel_id, delivery = %id,
                    "channel removed, disabled or without a verified recipient; delivery dropped");
                drop(slot);
                (Next::Dropped, DeliveryOutcome::Dropped)
            }
        };
        if self.record_handled(&record, attempts_before, next).await {
            self.metrics.delivery(&record.channel_type, counted);
            finish(&consumer, &pos);
        }
    }

    /// The attempt itself, and the write of where the delivery goes next.
    async fn send(
        &self,
        mut record: DeliveryRecord,
        tier: usize,
        channel: Channel,
        consumer: Arc<GroupConsumer>,
        pos: Position,
        slot: OwnedSemaphorePermit,
    ) {
        let attempts_before = record.attempts.len() as u32;
        let kind = channel.kind.name();
        let at = Utc::now();
        let started = Instant::now();
        let Sent {
            outcome,
            reached,
            skipped,
            opened_circuit,
        } = self.channels.send(&channel, &record).await;
        let elapsed = started.elapsed();
        match skipped {
            Some(reason) => self.metrics.not_attempted(kind, reason),
            None => self.metrics.request_duration(kind, elapsed.as_secs_f64()),
        }
        if opened_circuit {
            self.metrics.circuit_opened(kind);
            tracing::warn!(account = %record.account_id, channel = %record.channel_id, channel_type = kind,
                "circuit opened: this destination's deliveries skip to the next tier until a probe succeeds");
        }
        record.attempts.push(attempt_of(
            &outcome,
            record.next_attempt(),
            at,
            elapsed,
            reached,
        ));
        let pagerduty = matches!(channel.kind, ChannelKind::PagerDuty { .. });
        if pagerduty
            && matches!(outcome, Outcome::Delivered { .. })
            && self.ledger.overtaken(&record)
        {
            self.resolve_again(&channel, &record).await;
        }
        // The requests are over: the writes below wait on the broker, not on the provider.
        drop(slot);
        let attempt = record.attempts.len();
        let deferred = skipped == Some("busy");
        let step = next_step(&outcome, tier, &self.delays, Utc::now(), deferred);
        let (mut out, counted, next) = match &step {
            Step::Done => (Vec::new(), DeliveryOutcome::Delivered, Next::Delivered),
            Step::Retry { tier, not_before } => {
                record.not_before = Some(*not_before);
                let payload = serde_json::to_vec(&record).expect("delivery records serialize");
                let out = OutRecord::new(self.topics.tier_topic(*tier), record.key(), payload);
                (vec![out], DeliveryOutcome::Retried, Next::Retry)
            }
            Step::DeadLetter { reason } => {
                let letter = DeadLetter {
                    reason: reason.clone(),
                    dead_lettered_at: Utc::now(),
                    delivery: record.clone(),
                };
                let payload = serde_json::to_vec(&letter).expect("dead letters serialize");
                let out = OutRecord::new(&self.topics.dlq, record.key(), payload);
                (vec![out], DeliveryOutcome::DeadLettered, Next::DeadLettered)
            }
        };
        if record.report {
            out.push(self.report(&record, &step));
        }
        // The outcome first, then the record that it was handled: were `P.handled` taken and
        // the next tier not (a kill between the two), the re-read record would be skipped and
        // the delivery lost. The other way round, the worst is a repeat.
        if !out.is_empty() && self.output.write(out).await.is_err() {
            return; // stopping and the broker did not take it: not finished, repeated after restart
        }
        if !self.record_handled(&record, attempts_before, next).await {
            return;
        }
        self.metrics.delivery(kind, counted);
        let status = outcome.status();
        let ms = elapsed.as_millis() as u64;
        let (account, channel_id, id) =
            (&record.account_id, &record.channel_id, &record.delivery_id);
        match (&step, &outcome) {
            (Step::Done, _) => {
                tracing::info!(account = %account, channel = %channel_id, channel_type = kind, delivery = %id,
                attempt, status, ms, "delivered")
            }
            (Step::Retry { tier, not_before }, Outcome::Retry { error, .. }) => {
                tracing::warn!(account = %account, channel = %channel_id, channel_type = kind,
                delivery = %id, attempt, status, ms, tier, %not_before, %error, "attempt failed; retry scheduled")
            }
            (Step::DeadLetter { reason }, _) => {
                tracing::error!(account = %account, channel = %channel_id, channel_type = kind,
                delivery = %id, attempt, status, ms, %reason, "delivery dead-lettered")
            }
            (Step::Retry { .. }, _) => {}
        }
        finish(&consumer, &pos);
    }

    /// Writes to `P.handled` what became of `record` (read with `attempts_before` attempts),
    /// and remembers it here; `false` when stopping kept the broker from taking it.
    async fn record_handled(
        &self,
        record: &DeliveryRecord,
        attempts_before: u32,
        next: Next,
    ) -> bool {
        self.journal
            .record(Handled::of(record, attempts_before, next))
            .await
    }

    /// Resolves a PagerDuty problem's incident again: its recovery was delivered while the
    /// problem was in flight (on this instance or another), or before an unanswered attempt.
    async fn resolve_again(&self, channel: &Channel, record: &DeliveryRecord) {
        let ChannelKind::PagerDuty { integration_key } = &channel.kind else {
            return;
        };
        let incident = pagerduty_key(&record.event);
        let (account, channel_id) = (&record.account_id, &record.channel_id);
        match pagerduty::resolve(&self.channels, &incident, integration_key).await {
            Outcome::Delivered { .. } => tracing::info!(account = %account, channel = %channel_id,
                dedup_key = %incident, "the recovery overtook this alert; incident resolved again"),
            failed => {
                tracing::error!(account = %account, channel = %channel_id, dedup_key = %incident,
                error = ?failed, "the recovery overtook this alert and resolving the incident again failed; resolve it in PagerDuty")
            }
        }
    }

    /// The `P.reports` record of the attempt just made (for `send-test`).
    fn report(&self, record: &DeliveryRecord, step: &Step) -> OutRecord {
        let attempt = record
            .attempts
            .last()
            .expect("an attempt was just made")
            .clone();
        let mut report = AttemptReport {
            delivery_id: record.delivery_id.clone(),
            attempt,
            next: String::new(),
            retry_tier: None,
            not_before: None,
            reason: None,
        };
        match step {
            Step::Done => report.next = "delivered".into(),
            Step::Retry { tier, not_before } => {
                report.next = "retry".into();
                report.retry_tier = Some(*tier);
                report.not_before = Some(*not_before);
            }
            Step::DeadLetter { reason } => {
                report.next = "dead_lettered".into();
                report.reason = Some(reason.clone());
            }
        }
        let payload = serde_json::to_vec(&report).expect("reports serialize");
        OutRecord::new(&self.topics.reports, record.delivery_id.clone(), payload)
    }

    /// A record of a delivery topic that cannot be read goes to the DLQ as it is, with the reason.
    async fn quarantine(
        self: Arc<Self>,
        message: OwnedMessage,
        reason: String,
        consumer: Arc<GroupConsumer>,
        pos: Position,
    ) {
        tracing::error!(topic = message.topic(), offset = message.offset(), %reason, "unreadable delivery record");
        let out = OutRecord {
            topic: self.topics.dlq.clone(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: vec![
                ("reason", reason),
                ("source-topic", message.topic().to_owned()),
            ],
        };
        if self.output.write(vec![out]).await.is_ok() {
            finish(&consumer, &pos);
        }
    }
}

fn decode(message: &OwnedMessage) -> Result<DeliveryRecord, String> {
    let payload = message.payload().ok_or("delivery record has no value")?;
    serde_json::from_slice(payload).map_err(|e| format!("delivery record is not readable: {e}"))
}

fn attempt_of(
    outcome: &Outcome,
    number: u32,
    at: chrono::DateTime<Utc>,
    elapsed: Duration,
    reached: Vec<String>,
) -> Attempt {
    let (kind, error) = match outcome {
        Outcome::Delivered { .. } => (AttemptOutcome::Delivered, None),
        Outcome::Retry { error, .. } => (AttemptOutcome::Retryable, Some(error.clone())),
        Outcome::Permanent { error, .. } => (AttemptOutcome::Permanent, Some(error.clone())),
    };
    Attempt {
        attempt: number,
        at,
        duration_ms: elapsed.as_millis() as u64,
        outcome: kind,
        status: outcome.status(),
        error,
        reached,
    }
}

fn set_paused(consumer: &GroupConsumer, pos: &Position, paused: bool) {
    tracing::debug!(topic = %pos.topic, partition = pos.partition, offset = pos.offset, paused, "pause/resume");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&pos.topic, pos.partition);
    let result = if paused {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    if let Err(error) = result {
        tracing::debug!(topic = %pos.topic, partition = pos.partition, %error, paused, "pause/resume not applied");
    }
}
