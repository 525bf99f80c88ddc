//! The request of a delivery at its turn (`super::flow`), and what follows it: the attempt
//! (or the skip) recorded, the retry plan's decision, the outputs written, then `P.handled`,
//! then the offset stored. Every write is acknowledged before the next step; a stop in
//! between leaves the offset unstored, so the record is read again after a restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::flow::{Delivery, Sending};
use super::gather::Rider;
use super::plan::{self, Outputs, Unreadable};
use super::Deliverer;
use crate::delivery::{pagerduty, Attempted, Opened, Outcome};
use crate::kafka::context::{finish, owns, GroupConsumer};
use crate::kafka::offsets::Position;
use crate::kafka::producer::OutRecord;
use crate::ledger::{Handled, Read};
use crate::model::{incident_key, Channel, ChannelKind, DeliveryRecord};
use crate::pacing::Need;
use crate::retry::{after_skip, next_step, spread, Answer, RateLimit, Step};

impl Deliverer {
    /// The request at a delivery's turn ([`super::flow`]), then the writes of where it and
    /// its riders go next; a rate-limit answer gives the delivery back, with its buckets, to
    /// wait for a new turn (its riders wait again too).
    pub(super) async fn attempt(
        self: &Arc<Self>,
        sending: Sending<'_>,
        shutdown: &CancellationToken,
    ) -> Option<(Delivery, Vec<Need>)> {
        let Sending {
            delivery,
            riders,
            channel,
            needs,
            slot,
            claim,
        } = sending;
        let Delivery {
            record,
            consumer,
            pos,
            unfinished,
        } = delivery;
        let to = (channel, needs);
        let sent = self
            .send(
                record,
                riders,
                to,
                (&consumer, &pos),
                (slot, unfinished),
                shutdown,
            )
            .await;
        drop(claim); // a rate-limited delivery is claimed again at its new turn
        let (record, needs, unfinished) = sent?;
        Some((Delivery::new(record, consumer, pos, unfinished), needs))
    }

    /// The attempt itself for `record` and the `riders` it takes along (one message for
    /// all: a digest), unless the destination does not let it through; then the writes of
    /// where each delivery goes next. A rate-limit answer gives the leader back, to wait for
    /// a new turn; its riders wait again too.
    async fn send(
        self: &Arc<Self>,
        record: DeliveryRecord,
        riders: Vec<Rider>,
        (channel, needs): (Channel, Vec<Need>),
        (consumer, pos): (&Arc<GroupConsumer>, &Position),
        (slot, unfinished): (OwnedSemaphorePermit, OwnedSemaphorePermit),
        shutdown: &CancellationToken,
    ) -> Option<(DeliveryRecord, Vec<Need>, OwnedSemaphorePermit)> {
        let kind = channel.kind.name();
        let mut records = vec![record];
        let mut places = Vec::with_capacity(riders.len());
        for rider in riders {
            records.push(rider.record);
            places.push((rider.consumer, rider.pos, rider._room));
        }
        let at = Utc::now();
        let started = Instant::now();
        let sent = self.dispatcher.send(&channel, &records).await;
        let elapsed = started.elapsed();
        if let Ok(attempted) = &sent {
            self.metrics.request_duration(kind, elapsed.as_secs_f64());
            if let Some(wait) = attempted.hold {
                self.hold(&needs, wait, false);
            }
            let (account, channel_id) = (&records[0].account_id, &records[0].channel_id);
            match attempted.opened {
                Some(Opened::Endpoint) => {
                    tracing::warn!(account = %account, channel = %channel_id, channel_type = kind,
                    "circuit opened: this channel's endpoint does not answer; its deliveries wait in the retry tiers until a probe is answered (no retry used up)")
                }
                Some(Opened::Host) => {
                    tracing::warn!(account = %account, channel = %channel_id, channel_type = kind,
                    host = %crate::delivery::destination(&channel.kind),
                    "host held: it cannot be reached (connection refused, DNS or TLS failure); every delivery to it waits in the retry tiers until a probe is answered (no retry used up)")
                }
                None => {}
            }
            if attempted.opened.is_some() {
                self.metrics.circuit_opened(kind);
            }
        }
        // A rate-limit answer is no attempt: the delivery and its riders wait for new turns.
        let answered = match &sent {
            Err(skipped) => Err(skipped),
            Ok(attempted) => match Answer::of(&attempted.outcome) {
                Ok(answer) => Ok((attempted, answer)),
                Err(RateLimit {
                    wait,
                    provider_wide,
                    error,
                }) => {
                    self.metrics.rate_limited(kind);
                    self.hold(&needs, wait, provider_wide);
                    tracing::warn!(account = %records[0].account_id, channel = %records[0].channel_id, channel_type = kind,
                        delivery = %records[0].delivery_id, covering = records.len(), ?wait, provider_wide, %error,
                        "rate limited by the provider: its bucket waits (no retry used up)");
                    drop(slot);
                    let reached = &attempted.reached;
                    let mut records = records.into_iter();
                    let mut leader = records.next().expect("the leader");
                    // Recipients an email reached before the server said 421 keep their copy.
                    leader.reached.extend(reached.iter().cloned());
                    for (mut record, (consumer, pos, _room)) in records.zip(places) {
                        record.reached.extend(reached.iter().cloned());
                        self.requeue(record, consumer, pos, shutdown);
                    }
                    return Some((leader, needs, unfinished));
                }
            },
        };
        if records.len() > 1 && matches!(answered, Ok((_, Answer::Delivered))) {
            self.metrics.digest(kind, records.len());
        }
        // The requests are over: the writes below wait on the broker, not on the provider.
        drop(slot);
        let mut records = records.into_iter();
        let leader = records.next().expect("the leader");
        // A digest is retried as one message: its alerts come back together, unspread.
        let spread = match places.is_empty() {
            true => spread(&[&leader.delivery_id, &leader.next_attempt().to_string()]),
            false => 0.0,
        };
        let attempt = (&answered, &channel, at, elapsed, spread);
        // The riders' writes go together, not one broker round trip after another; each
        // delivery's own writes keep their order (outcome, then `P.handled`, then offset).
        let riders = records
            .zip(places)
            .map(|(record, (consumer, pos, room))| async move {
                if owns(&consumer, &pos) {
                    self.settle(record, attempt, &consumer, &pos).await;
                }
                drop(room);
            });
        futures::future::join(
            self.settle(leader, attempt, consumer, pos),
            futures::future::join_all(riders),
        )
        .await;
        drop(unfinished);
        None
    }

    /// Records what `attempt` means for one delivery it covered: its attempt (or skip), where
    /// it goes next, `P.handled`, then its offset. When the broker does not take the writes
    /// (stopping), its offset is not stored: it is repeated after the restart.
    async fn settle(
        &self,
        mut record: DeliveryRecord,
        (sent, channel, at, elapsed, spread): Attempt<'_>,
        consumer: &GroupConsumer,
        pos: &Position,
    ) {
        let read = Read::of(&record);
        let kind = channel.kind.name();
        record.parked = false; // its turn came, or it was let through without one
        let step = match sent {
            Err(skipped) => {
                self.metrics.not_attempted(kind, skipped.label());
                record.skips += 1;
                let (attempts, now) = (record.attempts.len() as u32, Utc::now());
                // Held back by the service, not failed: its waiting clock runs.
                let waited = record.hold_back(now);
                let max_pending = self.max_pending.to_std().unwrap_or(Duration::MAX);
                after_skip(skipped, attempts, waited, max_pending, &self.delays, now)
            }
            Ok((
                Attempted {
                    outcome, reached, ..
                },
                answer,
            )) => {
                record.end_wait(at);
                let number = record.next_attempt();
                let attempt = plan::attempt_of(outcome, number, at, elapsed, reached.clone());
                record.attempts.push(attempt);
                let pagerduty = matches!(channel.kind, ChannelKind::PagerDuty { .. });
                if pagerduty
                    && matches!(answer, Answer::Delivered)
                    && self.ledger.overtaken(&record)
                {
                    self.resolve_again(channel, &record).await;
                }
                next_step(*answer, number, &self.delays, spread, Utc::now())
            }
        };
        let Outputs { records, fate } =
            plan::outputs(&mut record, &step, sent.is_ok(), &self.topics, Utc::now());
        // The outcome first, then the record that it was handled: were `P.handled` taken and
        // the next tier not (a kill between the two), the re-read record would be skipped and
        // the delivery lost. The other way round, the worst is a repeat.
        if !records.is_empty() && self.output.write(records).await.is_err() {
            return;
        }
        if !self.journal.record(Handled::of(&record, read, fate)).await {
            return;
        }
        self.metrics.delivery(kind, fate);
        self.log(&record, kind, sent, &step, elapsed.as_millis() as u64);
        finish(consumer, pos);
    }

    /// Resolves a PagerDuty problem's incident again: its recovery was delivered while the
    /// problem was in flight (on this instance or another), or before an unanswered attempt.
    pub(super) async fn resolve_again(&self, channel: &Channel, record: &DeliveryRecord) {
        let ChannelKind::PagerDuty { integration_key } = &channel.kind else {
            return;
        };
        let incident = incident_key(&record.event);
        let (account, channel_id) = (&record.account_id, &record.channel_id);
        match pagerduty::resolve(&self.dispatcher, &incident, integration_key).await {
            Outcome::Delivered { .. } => tracing::info!(account = %account, channel = %channel_id,
                dedup_key = %incident, "the recovery overtook this alert; incident resolved again"),
            failed => {
                tracing::error!(account = %account, channel = %channel_id, dedup_key = %incident,
                error = ?failed, "the recovery overtook this alert and resolving the incident again failed; resolve it in PagerDuty")
            }
        }
    }

    /// A record of a delivery topic that cannot be read goes to the DLQ as it is, with the reason.
    pub(super) async fn quarantine(
        self: Arc<Self>,
        message: OwnedMessage,
        unreadable: Unreadable,
        consumer: Arc<GroupConsumer>,
        pos: Position,
    ) {
        let reason = unreadable.to_string();
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

/// A request's result as settling takes it: the attempt and its answer, or why it was not
/// let through.
type Answered<'a> = Result<(&'a Attempted, Answer<'a>), &'a crate::delivery::Skipped>;

/// One attempt as every delivery it covered sees it: what was sent, on which channel, when,
/// how long it took, and where in its tier's jitter a retry of it falls.
type Attempt<'a> = (
    &'a Answered<'a>,
    &'a Channel,
    chrono::DateTime<Utc>,
    std::time::Duration,
    f64,
);

impl Deliverer {
    /// One line per handled attempt or skip, at the level an operator needs; dead letters
    /// through [`Deliverer::dead_lettered`], so a flood of them stays readable.
    fn log(&self, record: &DeliveryRecord, kind: &str, sent: &Answered<'_>, step: &Step, ms: u64) {
        let (account, channel, id) = (&record.account_id, &record.channel_id, &record.delivery_id);
        let attempt = record.attempts.len();
        let status = sent.as_ref().ok().and_then(|(a, _)| a.outcome.status());
        match (step, sent) {
            (Step::Done, _) => {
                tracing::info!(account = %account, channel = %channel, channel_type = kind, delivery = %id,
                attempt, status, ms, "delivered")
            }
            (Step::Retry { tier, not_before }, Err(skipped)) => {
                tracing::info!(account = %account, channel = %channel, channel_type = kind, delivery = %id,
                attempt, tier, %not_before, reason = %skipped, "not let through; waits in a retry tier (no retry used up)")
            }
            (Step::Retry { tier, not_before }, Ok((attempted, _))) => {
                let error = attempted.outcome.error().unwrap_or_default();
                tracing::warn!(account = %account, channel = %channel, channel_type = kind, delivery = %id,
                attempt, status, ms, tier, %not_before, %error, "attempt failed; retry scheduled")
            }
            (Step::DeadLetter(reason), _) => {
                if self
                    .dead_letters
                    .note(account, channel, reason, std::time::Instant::now())
                {
                    tracing::warn!(account = %account, channel = %channel, channel_type = kind, delivery = %id,
                    attempt, status, ms, %reason, "delivery dead-lettered")
                }
            }
        }
    }
}
