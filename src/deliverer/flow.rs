//! One delivery's flow in one place: the stages a delivery read from a delivery topic can be
//! in, a step for each that returns the next stage, and [`Deliverer::drive`], the one loop
//! that runs them.
//!
//! ```text
//! Due ──repeat, superseded, channel gone──▶ Done   (P.handled, offset)
//!  │ to attempt
//!  ├──joins a digest forming──────────────▶ Done   (it rides with the digest's leader)
//!  ├──its turn now──────────────────────────▶ Send ──delivered, failed, skipped──▶ Done
//!  │                                          │ rate limited: a new turn
//!  ├──its turn reserved, `wait` away──▶ Wait ◀┘──▶ Due (its turn, with its riders)
//!  │                                     └──parked in a retry tier──▶ Done
//!  └──its turn past delivery.max_pending──▶ TooFar ──▶ Done (DLQ)
//! ```
//!
//! What the first step does is decided by [`handling`], a pure function with a table test;
//! the turn by `Deliverer::take_turn` (`crate::pacing`); the steps do the I/O.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::gather::Rider;
use super::waiting::Turn;
use super::Deliverer;
use crate::kafka::context::{finish, owns, GroupConsumer};
use crate::kafka::offsets::Position;
use crate::ledger::{Claim, Handled, Read, Verdict};
use crate::model::{Channel, DeliveryRecord, Fate};

use crate::pacing::{self, Need, Pacer};
use crate::retry::{self, Reason, Step};

/// A delivery record read from a delivery topic, with what it holds until it is finished.
pub(crate) struct Delivery {
    pub record: DeliveryRecord,
    pub consumer: Arc<GroupConsumer>,
    pub pos: Position,
    /// Its place among the deliveries read and not yet finished (`Deliverer::unfinished`);
    /// given up while it waits in memory for its turn.
    pub unfinished: OwnedSemaphorePermit,
}

impl Delivery {
    pub fn new(
        record: DeliveryRecord,
        consumer: Arc<GroupConsumer>,
        pos: Position,
        unfinished: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            record,
            consumer,
            pos,
            unfinished,
        }
    }
}

/// Where a delivery is.
pub(super) enum Stage<'d> {
    /// Due: the ledger says what it is. `riders`: its turn has come, and these deliveries of
    /// its channel, which waited with it, go in its message.
    Due(Delivery, Option<Vec<Rider>>),
    /// Its turn in its buckets (`needs`) is reserved `wait` from now.
    Wait(Delivery, Vec<Need>, Duration),
    /// Its turn lies this far away, past `delivery.max_pending`.
    TooFar(Delivery, Duration),
    /// Its turn: the request for it (and `riders`) on `channel` (boxed: it is the one large
    /// stage, and one allocation is nothing beside the request).
    Send(Box<Sending<'d>>),
    /// Finished here: its outcome written and its offset stored, or left for the next reader.
    Done,
}

/// A delivery at its turn, with the attempt slot and the claim on its identity it took
/// before the ledger was asked.
pub(super) struct Sending<'d> {
    pub delivery: Delivery,
    pub riders: Vec<Rider>,
    pub channel: Channel,
    pub needs: Vec<Need>,
    pub slot: OwnedSemaphorePermit,
    pub claim: Claim<'d>,
}

impl Deliverer {
    /// Takes one delivery through its stages, from [`Stage::Due`] (with `riders` when its turn
    /// has come) to [`Stage::Done`].
    pub(super) async fn drive(
        self: Arc<Self>,
        delivery: Delivery,
        riders: Option<Vec<Rider>>,
        shutdown: CancellationToken,
    ) {
        let this = &self;
        let mut stage = Stage::Due(delivery, riders);
        loop {
            stage = match stage {
                Stage::Due(delivery, riders) => this.due(delivery, riders, &shutdown).await,
                Stage::Wait(delivery, needs, wait) => {
                    this.wait(delivery, needs, wait, &shutdown).await
                }
                Stage::TooFar(delivery, turn_in) => this.too_far(delivery, turn_in).await,
                Stage::Send(sending) => this.at_turn(*sending, &shutdown).await,
                Stage::Done => return,
            }
        }
    }

    /// Asks the ledger what the delivery is, holding an attempt slot and a claim on its
    /// identity (a copy of it in flight here goes first) so the verdict is fresh when the
    /// request is made.
    async fn due<'d>(
        self: &'d Arc<Self>,
        delivery: Delivery,
        riders: Option<Vec<Rider>>,
        shutdown: &CancellationToken,
    ) -> Stage<'d> {
        let slot = tokio::select! {
            // Not attempted: its offset is not stored, and the partition's next owner reads it.
            _ = shutdown.cancelled() => return Stage::Done,
            slot = self.permits.clone().acquire_owned() => slot.expect("semaphore never closed"),
        };
        let claim = self.in_flight.claim(&delivery.record).await;
        let record = &delivery.record;
        let channel = self
            .cache
            .channel(&record.account_id, &record.channel_id)
            .filter(|c| c.deliverable());
        let verdict = self.ledger.verdict(record);
        let (account, channel_id, id) =
            (&record.account_id, &record.channel_id, &record.delivery_id);
        let fate = match handling(verdict, channel) {
            Handling::Repeat => {
                tracing::info!(account = %account, channel = %channel_id, delivery = %id,
                    attempts_before = record.attempts.len(),
                    "handled before (re-read after a restart or rebalance, or a repeated event); not sent again");
                self.metrics.delivery(&record.channel_type, Fate::Duplicate);
                finish(&delivery.consumer, &delivery.pos);
                self.release(riders.unwrap_or_default(), shutdown);
                return Stage::Done;
            }
            Handling::Attempt(channel) => {
                let needs = pacing::needs(record, &channel, &self.paces);
                if let Some(riders) = riders {
                    return Stage::Send(Box::new(Sending {
                        delivery,
                        riders,
                        channel,
                        needs,
                        slot,
                        claim,
                    }));
                }
                // A digest forming for this channel's bucket takes it along.
                let Some(delivery) = self.join(delivery, &needs) else {
                    return Stage::Done;
                };
                let turn = self.take_turn(&delivery.record, &needs, &delivery.consumer);
                return match turn {
                    Turn::Now => Stage::Send(Box::new(Sending {
                        delivery,
                        riders: Vec::new(),
                        channel,
                        needs,
                        slot,
                        claim,
                    })),
                    // It waits with no slot held.
                    Turn::In(wait) => Stage::Wait(delivery, needs, wait),
                    Turn::TooFar(turn_in) => Stage::TooFar(delivery, turn_in),
                };
            }
            Handling::Superseded(channel) => {
                tracing::info!(account = %account, channel = %channel_id, delivery = %id, event = %record.event_type,
                    "its incident's recovery was delivered on this channel already; problem dropped");
                // An earlier attempt that got no answer may have opened the incident anyway.
                if let (Some(channel), true) = (channel, record.had_unanswered_attempt()) {
                    self.resolve_again(&channel, record).await;
                }
                Fate::Superseded
            }
            Handling::Dropped => {
                tracing::info!(account = %account, channel = %channel_id, delivery = %id,
                    "channel removed, disabled or without a verified recipient; delivery dropped");
                Fate::Dropped
            }
        };
        drop((slot, claim));
        self.release(riders.unwrap_or_default(), shutdown);
        let record = &delivery.record;
        if self
            .journal
            .record(Handled::of(record, Read::of(record), fate))
            .await
        {
            self.metrics.delivery(&record.channel_type, fate);
            finish(&delivery.consumer, &delivery.pos);
        }
        Stage::Done
    }

    /// The request at the delivery's turn; a rate-limit answer sends it to a new turn.
    async fn at_turn<'d>(
        self: &'d Arc<Self>,
        sending: Sending<'d>,
        shutdown: &CancellationToken,
    ) -> Stage<'d> {
        let Some((delivery, needs)) = self.attempt(sending, shutdown).await else {
            return Stage::Done;
        };
        match self.take_turn(&delivery.record, &needs, &delivery.consumer) {
            // Asked again: its channel may have changed meanwhile.
            Turn::Now => Stage::Due(delivery, Some(Vec::new())),
            Turn::In(wait) => Stage::Wait(delivery, needs, wait),
            Turn::TooFar(turn_in) => Stage::TooFar(delivery, turn_in),
        }
    }

    /// Its turn lies past `delivery.max_pending`: the DLQ, with how long it waited.
    async fn too_far<'d>(self: &'d Arc<Self>, delivery: Delivery, turn_in: Duration) -> Stage<'d> {
        let waited = delivery.record.held_for(Utc::now());
        let reason = Reason::TurnTooFar { waited, turn_in };
        let Delivery {
            record,
            consumer,
            pos,
            unfinished,
        } = delivery;
        self.finish_with(record, Step::DeadLetter(reason), consumer, pos)
            .await;
        drop(unfinished);
        Stage::Done
    }

    /// Waits for a turn reserved `wait` from now here, in memory, with its offset unstored
    /// behind it and no slot held; when the waiting room or its buckets' line is full, or a
    /// bucket is held longer than the patience, it is parked in a retry tier until the turn
    /// (no retry used up). At its turn, the deliveries of its channel that came meanwhile go
    /// with it (a digest).
    async fn wait<'d>(
        self: &'d Arc<Self>,
        mut delivery: Delivery,
        needs: Vec<Need>,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> Stage<'d> {
        delivery.record.hold_back(Utc::now());
        let Some(room) = self.waiting.clone().try_acquire_owned().ok() else {
            return self.park(delivery, &needs, wait).await;
        };
        let Some(line) = self.pacer.line(&needs, self.patience) else {
            return self.park(delivery, &needs, wait).await;
        };
        let Delivery {
            record,
            consumer,
            pos,
            unfinished,
        } = delivery;
        drop(unfinished);
        // Deliveries of its channel that come while it waits go with it.
        let digest = self.open(&record, &needs);
        let kind = record.channel_type.clone();
        self.metrics.waiting(&kind, 1);
        let waited = until_turn(&self.pacer, &needs, wait, shutdown).await;
        self.metrics.waiting(&kind, -1);
        drop((line, room));
        let riders = self.close(digest);
        if !waited || !owns(&consumer, &pos) {
            // Not finished: read again after the restart, or by the partition's new owner.
            self.release(riders, shutdown);
            return Stage::Done;
        }
        let Some(unfinished) = self.unfinished_slot(shutdown).await else {
            return Stage::Done;
        };
        let delivery = Delivery::new(record, consumer, pos, unfinished);
        Stage::Due(delivery, Some(riders))
    }

    /// Parks a waiting delivery in the retry tier that fits its wait, until its reserved turn.
    async fn park<'d>(
        self: &'d Arc<Self>,
        delivery: Delivery,
        needs: &[Need],
        wait: Duration,
    ) -> Stage<'d> {
        let Delivery {
            mut record,
            consumer,
            pos,
            unfinished,
        } = delivery;
        let step = retry::park(wait, &self.delays, Utc::now());
        if matches!(step, Step::Retry { .. }) {
            self.pacer.park(needs);
            record.parked = true;
        }
        self.finish_with(record, step, consumer, pos).await;
        drop(unfinished);
        Stage::Done
    }
}

/// Sleeps until a turn reserved `wait` from now in `needs`' buckets: a hold since it was
/// reserved moves it back, and is waited too. False when stopping.
async fn until_turn(
    pacer: &Pacer,
    needs: &[Need],
    mut wait: Duration,
    shutdown: &CancellationToken,
) -> bool {
    let mut shifted = pacer.shifted(needs);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
        let now_shifted = pacer.shifted(needs);
        wait = now_shifted.saturating_sub(shifted);
        if wait.is_zero() {
            return true;
        }
        shifted = now_shifted;
    }
}

/// What the ledger's verdict and the channel (when it can still be delivered to) make of a
/// delivery that is due.
#[derive(Debug, PartialEq)]
enum Handling<C> {
    /// Handled before: not sent again.
    Repeat,
    Attempt(C),
    /// Its incident's recovery was delivered on the channel first: dropped.
    Superseded(Option<C>),
    /// Its channel was removed, disabled or left without a verified recipient: dropped.
    Dropped,
}

fn handling<C>(verdict: Verdict, channel: Option<C>) -> Handling<C> {
    match (verdict, channel) {
        (Verdict::Repeat, _) => Handling::Repeat,
        (Verdict::Superseded, channel) => Handling::Superseded(channel),
        (Verdict::Attempt, Some(channel)) => Handling::Attempt(channel),
        (Verdict::Attempt, None) => Handling::Dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Pace;
    use crate::model::Rate;
    use std::time::Instant;

    fn bucket(pacer: &Pacer) -> Vec<Need> {
        let record: DeliveryRecord = serde_json::from_value(serde_json::json!({
            "delivery_id": "msg_1", "account_id": "acc", "channel_id": "hook",
            "channel_type": "webhook", "event_type": "monitor.down", "event_id": "e1",
            "severity": "critical", "created_at": "2025-01-15T10:30:00Z",
            "event": {"event": "monitor.down", "event_id": "e1", "account_id": "acc",
                "occurred_at": "2025-01-15T10:30:00Z", "monitor": {"id": "m", "name": "API"},
                "alert": {}}}))
        .unwrap();
        let channel: Channel = serde_json::from_value(serde_json::json!(
            {"id": "hook", "type": "webhook", "url": "https://hooks.example.com/x", "rate": "1/1s"}))
        .unwrap();
        let pace = Pace {
            rate: "1/1s".parse::<Rate>().unwrap(),
            burst: std::num::NonZeroU32::new(1).unwrap(),
        };
        let paces = crate::config::Paces {
            slack: pace,
            discord: pace,
            pagerduty: pace,
            email: pace,
        };
        let needs = pacing::needs(&record, &channel, &paces);
        pacer
            .turn(&needs, Instant::now(), Duration::from_secs(60))
            .unwrap();
        needs
    }

    #[tokio::test]
    async fn a_wait_for_a_turn_lasts_as_long_as_the_holds_that_come_meanwhile() {
        let pacer = Pacer::default();
        let needs = bucket(&pacer);
        let shutdown = CancellationToken::new();
        let started = Instant::now();
        let (waited, ()) = tokio::join!(
            until_turn(&pacer, &needs, Duration::from_millis(100), &shutdown),
            async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                // A rate-limit answer meanwhile holds the bucket 200 ms more.
                pacer.hold(&needs[0].key, Instant::now() + Duration::from_millis(200));
            }
        );
        assert!(waited, "its turn came");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250),
            "the hold was waited too: {took:?}"
        );
        let stopping = CancellationToken::new();
        stopping.cancel();
        assert!(
            !until_turn(&pacer, &needs, Duration::from_secs(60), &stopping).await,
            "stopping ends the wait, not its turn"
        );
    }

    #[test]
    fn the_verdict_and_the_channel_decide_what_is_sent() {
        let table = [
            (Verdict::Repeat, Some(()), Handling::Repeat),
            (Verdict::Repeat, None, Handling::Repeat),
            (
                Verdict::Superseded,
                Some(()),
                Handling::Superseded(Some(())),
            ),
            (Verdict::Superseded, None, Handling::Superseded(None)),
            (Verdict::Attempt, Some(()), Handling::Attempt(())),
            (Verdict::Attempt, None, Handling::Dropped),
        ];
        for (verdict, channel, expected) in table {
            assert_eq!(
                handling(verdict, channel),
                expected,
                "{verdict:?}, {channel:?}"
            );
        }
    }
}
