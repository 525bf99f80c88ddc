//! A delivery's turn in its provider buckets (CONTRACT §5a): reserved (`pacing`), or claimed
//! when it comes back from waiting for it in a retry tier; the holds a provider asks for; and
//! the write of a record that waits without an attempt. Where it waits (in memory, or parked)
//! is `super::flow`'s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::plan::{self, Outputs};
use super::Deliverer;
use crate::kafka::context::{assigned_at, finish, GroupConsumer};
use crate::kafka::offsets::Position;
use crate::ledger::{Handled, Read};
use crate::model::{DeliveryRecord, Fate};
use crate::pacing::Need;
use crate::retry::Step;

/// A delivery's turn in its provider buckets, reserved or not.
pub(super) enum Turn {
    Now,
    /// Reserved this far away.
    In(Duration),
    /// Not reserved: it lies this far away, past `delivery.max_pending`.
    TooFar(Duration),
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
