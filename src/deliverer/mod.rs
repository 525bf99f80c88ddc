//! The deliverer: consumes `P.deliveries` and every `P.retry.k` in the group
//! `{group_id}.deliveries`, and drives each record through its stages ([`flow`]: due, turn,
//! wait, send, settle); [`pipeline`] makes the request and writes where each delivery goes
//! next ([`plan`]) before its offset is stored; [`waiting`] reserves and claims turns;
//! [`gather`] forms digests; [`dead_letters`] keeps a flood of them readable.
//!
//! This file is the consume-and-pause loop: a retry tier holds a delivery that is not yet due
//! by pausing only its partition, so other partitions and topics keep flowing while it waits.

pub(crate) mod dead_letters;
mod flow;
mod gather;
mod pipeline;
mod plan;
mod waiting;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::Consumer;
use rdkafka::{Message, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Paces;
use crate::delivery::Dispatcher;
use crate::kafka::context::{next_owned, owns, GroupConsumer};
use crate::kafka::offsets::Position;
use crate::kafka::producer::Output;
use crate::kafka::topics::Topics;
use crate::ledger::{InFlight, Journal, Ledger};
use crate::metrics::Metrics;
use crate::model::DeliveryRecord;
use crate::pacing::Pacer;
use crate::retry;
use crate::settings_cache::SettingsCache;
use flow::Delivery;

pub struct Deliverer {
    pub topics: Topics,
    pub delays: Vec<Duration>,
    pub cache: Arc<SettingsCache>,
    pub dispatcher: Arc<Dispatcher>,
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
    /// Each provider bucket's turns and holds.
    pub pacer: Pacer,
    pub paces: Paces,
    /// The longest hold (a rate-limit answer's wait) waited out in the waiting room; a
    /// delivery facing a longer one is parked in a retry tier.
    pub patience: Duration,
    /// The waiting room: at most [`WAITING_ROOM`] deliveries wait here at once, each with its
    /// offset unstored behind it.
    pub waiting: Arc<Semaphore>,
    /// `delivery.max_pending`.
    pub max_pending: chrono::Duration,
    /// The digests forming: deliveries of one channel waiting for its bucket together.
    pub gatherings: gather::Gatherings,
    /// How long deliveries in flight at shutdown may take to finish.
    pub drain: Duration,
    /// Every task of a delivery in flight, waited for (up to `drain`) at shutdown.
    pub tasks: TaskTracker,
    /// The dead letters logged one by one, and the summary of the rest.
    pub(crate) dead_letters: dead_letters::DeadLetters,
}

/// Deliveries that may wait in memory for their bucket at once; more wait in a retry tier.
pub const WAITING_ROOM: usize = 4096;

/// Deliveries read and not yet finished, per attempt slot. A delivery holds an attempt slot
/// only while its request is made; its outcome and `P.handled` are written and acknowledged
/// before its offset is stored, without the slot (BENCHMARKS.md, "The fetch back-off and the
/// attempt slot").
pub const UNFINISHED_PER_ATTEMPT: usize = 2;

impl Deliverer {
    /// Reads until `shutdown`, then gives the deliveries in flight up to `self.drain`.
    pub async fn run(self: Arc<Self>, consumer: Arc<GroupConsumer>, shutdown: CancellationToken) {
        let tracker = self.tasks.clone();
        let summaries = tokio::spawn(self.clone().summarise_dead_letters(shutdown.clone()));
        while let Some((message, pos)) = next_owned(&consumer, &shutdown).await {
            let record = match plan::decode(&message) {
                Ok(record) => record,
                Err(unreadable) => {
                    let (this, consumer) = (self.clone(), consumer.clone());
                    tracker.spawn(async move {
                        this.quarantine(message, unreadable, consumer, pos).await
                    });
                    continue;
                }
            };
            let tier = self.topics.tier_of(message.topic()).unwrap_or(0);
            let written = message.timestamp().to_millis();
            let now = Utc::now();
            if record.not_before.is_some_and(|due| due > now) {
                // Not due: wait until it is, or until the tier's own delay has passed (then
                // see below). Later records of this partition come due later still: hold it.
                let wait = self
                    .tier_due(&record, tier, written)
                    .and_then(|due| (due - now).to_std().ok())
                    .unwrap_or_default();
                if !wait.is_zero() {
                    set_paused(&consumer, &pos, true);
                }
                let (this, consumer, shutdown) = (self.clone(), consumer.clone(), shutdown.clone());
                tracker.spawn(async move {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    if !owns(&consumer, &pos) {
                        tracing::debug!(topic = %pos.topic, partition = pos.partition, offset = pos.offset,
                            "revoked while waiting; the next owner attempts it");
                        return;
                    }
                    set_paused(&consumer, &pos, false);
                    // Waited the tier's delay and still not due: the rest of a short wait here
                    // (behind nobody, the partition reads on), a long one in the tier that
                    // fits it, due at the same time.
                    let now = Utc::now();
                    if let Some(due) = record.not_before.filter(|due| *due > now) {
                        let left = (due - now).to_std().unwrap_or_default();
                        if left > this.patience {
                            let Some(unfinished) = this.unfinished_slot(&shutdown).await else {
                        return;
                    };
                            let step = retry::park(left, &this.delays, now);
                            this.finish_with(record, step, consumer, pos).await;
                            return drop(unfinished);
                        }
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(left) => {}
                        }
                        if !owns(&consumer, &pos) {
                            return; // revoked while waiting: the next owner attempts it
                        }
                    }
                    let Some(unfinished) = this.unfinished_slot(&shutdown).await else {
                        return;
                    };
                    let delivery = Delivery::new(record, consumer, pos, unfinished);
                    this.drive(delivery, None, shutdown).await
                });
                continue;
            }
            let Some(unfinished) = self.unfinished_slot(&shutdown).await else {
                break;
            };
            let delivery = Delivery::new(record, consumer.clone(), pos, unfinished);
            tracker.spawn(self.clone().drive(delivery, None, shutdown.clone()));
        }
        tracker.close();
        if tokio::time::timeout(self.drain, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("deliveries still in flight at the drain deadline; they will be repeated after restart");
        }
        summaries.abort();
        self.dead_letters
            .log_ended(std::time::Instant::now() + Duration::from_secs(60));
    }

    /// Logs the summary of each minute's dead letters not logged one by one, as it ends.
    async fn summarise_dead_letters(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        while !shutdown.is_cancelled() {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tick.tick() => self.dead_letters.log_ended(std::time::Instant::now()),
            }
        }
    }
}

impl Deliverer {
    /// A place among the deliveries read and not yet finished; `None` once stopping.
    async fn unfinished_slot(&self, shutdown: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            _ = shutdown.cancelled() => None,
            permit = self.unfinished.clone().acquire_owned() => Some(permit.expect("semaphore never closed")),
        }
    }

    /// When a record read from `tier` (written at `written_ms`) is to be looked at again:
    /// its `not_before`, but no later than the tier's own delay after it was written. Every
    /// record of a tier is then due in the order it was written, so pausing a partition until
    /// its head is due holds back nothing that is due sooner; a record that waits longer
    /// (a `Retry-After`, a bucket's turn) goes round the tier again.
    fn tier_due(
        &self,
        record: &DeliveryRecord,
        tier: usize,
        written_ms: Option<i64>,
    ) -> Option<DateTime<Utc>> {
        let due = record.not_before?;
        let delay = tier.checked_sub(1).and_then(|k| self.delays.get(k));
        let written = written_ms.and_then(DateTime::from_timestamp_millis);
        match (delay, written) {
            (Some(delay), Some(written)) => {
                let tier_due = written + chrono::Duration::from_std(*delay).ok()?;
                Some(due.min(tier_due))
            }
            _ => Some(due),
        }
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
