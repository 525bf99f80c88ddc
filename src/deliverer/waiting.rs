//! Where a delivery waits for its provider buckets' turn (CONTRACT §5a). Its turn is reserved
//! first (`pacing`), then it waits for it in memory, its offset unstored behind it and no slot
//! held; or, when its buckets' line or the waiting room is full or a bucket is held long,
//! parked in the retry tier that fits the wait (no retry used up), claiming its turn when it
//! is back; or, when the turn lies past `delivery.max_pending`, in the DLQ.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::plan::{self, Outputs};
use super::Deliverer;
use crate::kafka::context::{assigned_at, finish, owns, GroupConsumer};
use crate::kafka::offsets::Position;
use crate::ledger::{Handled, Read};
use crate::model::{DeliveryRecord, Fate};
use crate::pacing::Need;
use crate::retry::{self, Reason, Step};

/// A delivery's turn in its provider buckets, reserved or not.
pub(super) enum Turn {
    Now,
    /// Reserved this far away.
    In(Duration),
    /// Not reserved: it lies this far away, past `delivery.max_pending`.
    TooFar(Duration),
}

/// A delivery whose turn in its buckets (`needs`) is reserved `wait` from now.
pub(super) struct Waiting {
    pub record: DeliveryRecord,
    pub needs: Vec<Need>,
    pub wait: Duration,
}

impl Deliverer {
    /// Holds `needs`' buckets (or, `provider_wide`, their whole provider) for `wait`.
    pub(super) fn hold(&self, needs: &[Need], wait: Duration, provider_wide: bool) {
        let until = Instant::now() + wait;
        for need in needs {
            if provider_wide {
                self.pacer.hold_provider(need.key.provider, until);
            } else {
                self.pacer.hold(&need.key, until);
            }
        }
    }

    /// The turn of `record` in its buckets: the one it reserved before it was parked, if this
    /// process owes it that; else the next free one, reserved now, unless it lies past what
    /// `delivery.max_pending` leaves it. Buckets another instance was busy with before this
    /// one was assigned the partitions are taken over first ([`crate::pacing::Pacer::take_over`]).
    pub(super) fn take_turn(
        &self,
        record: &DeliveryRecord,
        needs: &[Need],
        consumer: &GroupConsumer,
    ) -> Turn {
        let now = Instant::now();
        let active = self
            .ledger
            .last_active(&record.account_id, &record.channel_id);
        if let Some(assigned) = assigned_at(consumer) {
            let active = active.map(|at| {
                let ago = (Utc::now() - at).to_std().unwrap_or_default();
                now.checked_sub(ago).unwrap_or(now)
            });
            self.pacer.take_over(needs, assigned, active);
        }
        if record.parked {
            let late = record
                .not_before
                .and_then(|turn| (Utc::now() - turn).to_std().ok())
                .unwrap_or_default();
            let claimed = self.pacer.claim(needs, now, late);
            tracing::debug!(account = %record.account_id, channel = %record.channel_id,
                delivery = %record.delivery_id, late_ms = late.as_millis() as u64, claimed,
                "back from waiting in a retry tier");
            if claimed {
                return Turn::Now;
            }
        }
        let waited = record.held_for(Utc::now());
        let max_pending = self.max_pending.to_std().unwrap_or(Duration::MAX);
        let allowed = max_pending.saturating_sub(waited);
        match self.pacer.turn(needs, now, allowed) {
            Ok(wait) if wait.is_zero() => Turn::Now,
            Ok(wait) => Turn::In(wait),
            Err(distance) => Turn::TooFar(distance),
        }
    }

    /// Takes a delivery to its turn: at once, after waiting for it here, parked in a retry
    /// tier until it, or (past `delivery.max_pending`) to the DLQ.
    pub(super) async fn to_turn(
        self: Arc<Self>,
        (record, needs, turn): (DeliveryRecord, Vec<Need>, Turn),
        consumer: Arc<GroupConsumer>,
        pos: Position,
        unfinished: OwnedSemaphorePermit,
        shutdown: CancellationToken,
    ) {
        match turn {
            Turn::Now => {
                let turn = Some(Vec::new());
                let handling = self.handle(record, consumer, pos, unfinished, shutdown, turn);
                Box::pin(handling).await
            }
            Turn::In(wait) => {
                let waiting = Waiting {
                    record,
                    needs,
                    wait,
                };
                self.wait(waiting, consumer, pos, unfinished, shutdown)
                    .await
            }
            Turn::TooFar(turn_in) => {
                let waited = record.held_for(Utc::now());
                let reason = Reason::TurnTooFar { waited, turn_in };
                self.finish_with(record, Step::DeadLetter(reason), consumer, pos)
                    .await
            }
        }
    }

    /// A delivery whose turn is reserved `wait` from now waits for it here, in memory, with
    /// its offset unstored behind it and no slot held; when the waiting room or its buckets'
    /// line is full, or a bucket is held longer than the patience, it is parked in a retry
    /// tier until the turn (no retry used up).
    async fn wait(
        self: Arc<Self>,
        mut waiting: Waiting,
        consumer: Arc<GroupConsumer>,
        pos: Position,
        unfinished: OwnedSemaphorePermit,
        shutdown: CancellationToken,
    ) {
        waiting.record.hold_back(Utc::now());
        let Some(room) = self.waiting.clone().try_acquire_owned().ok() else {
            return self.park(waiting, consumer, pos, unfinished).await;
        };
        let digest;
        let waited = {
            let Some(_line) = self.pacer.line(&waiting.needs, self.patience) else {
                return self.park(waiting, consumer, pos, unfinished).await;
            };
            drop(unfinished);
            // Deliveries of its channel that come while it waits go with it.
            digest = self.open(&waiting.record, &waiting.needs);
            let kind = &waiting.record.channel_type;
            self.metrics.waiting(kind, 1);
            // A hold since the turn was reserved moves it back: wait that too.
            let mut shifted = self.pacer.shifted(&waiting.needs);
            let mut wait = waiting.wait;
            let waited = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break false,
                    _ = tokio::time::sleep(wait) => {}
                }
                let now_shifted = self.pacer.shifted(&waiting.needs);
                wait = now_shifted.saturating_sub(shifted);
                if wait.is_zero() {
                    break true;
                }
                shifted = now_shifted;
            };
            self.metrics.waiting(kind, -1);
            waited
        };
        drop(room);
        let riders = self.close(digest);
        if !waited || !owns(&consumer, &pos) {
            // Not finished: read again after the restart, or by the partition's new owner.
            return self.release(riders, &shutdown);
        }
        let Some(unfinished) = self.unfinished_slot(&shutdown).await else {
            return;
        };
        let turn = Some(riders);
        let onward = self.handle(waiting.record, consumer, pos, unfinished, shutdown, turn);
        Box::pin(onward).await
    }

    /// Parks a waiting delivery in the retry tier that fits its wait, until its reserved turn.
    async fn park(
        &self,
        Waiting {
            mut record,
            needs,
            wait,
        }: Waiting,
        consumer: Arc<GroupConsumer>,
        pos: Position,
        unfinished: OwnedSemaphorePermit,
    ) {
        let step = retry::park(wait, &self.delays, Utc::now());
        if matches!(step, Step::Retry { .. }) {
            self.pacer.park(&needs);
            record.parked = true;
        }
        self.finish_with(record, step, consumer, pos).await;
        drop(unfinished);
    }

    /// Writes a record that made no attempt (parked, cycled, expired) where `step` says:
    /// as a copy with one more skip, so the copy is a new read for the ledger.
    pub(super) async fn finish_with(
        &self,
        mut record: DeliveryRecord,
        step: Step,
        consumer: Arc<GroupConsumer>,
        pos: Position,
    ) {
        let read = Read::of(&record);
        record.skips += 1;
        let Outputs { records, fate } =
            plan::outputs(&mut record, &step, false, &self.topics, Utc::now());
        if !records.is_empty() && self.output.write(records).await.is_err() {
            return;
        }
        if !self.journal.record(Handled::of(&record, read, fate)).await {
            return;
        }
        // Parked or cycled, it was not retried: it shows in the retry tiers' gauges instead.
        if fate != Fate::Retried {
            self.metrics.delivery(&record.channel_type, fate);
        }
        if let Step::Retry { tier, not_before } = &step {
            tracing::debug!(account = %record.account_id, channel = %record.channel_id,
                delivery = %record.delivery_id, tier, %not_before, "waits in a retry tier");
        }
        if let Step::DeadLetter(reason) = &step {
            let (account, channel) = (&record.account_id, &record.channel_id);
            if self
                .dead_letters
                .note(account, channel, reason, Instant::now())
            {
                tracing::warn!(account = %account, channel = %channel,
                    delivery = %record.delivery_id, %reason, "delivery dead-lettered");
            }
        }
        finish(&consumer, &pos);
    }
}
