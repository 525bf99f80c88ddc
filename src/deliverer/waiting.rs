//! Where a delivery waits for its provider buckets' turn (CONTRACT §5a): in its buckets' line
//! in memory, its offset unstored behind it and no slot held; or, when a line or the waiting
//! room is full or a bucket is held long, parked in the retry tier that fits the wait with its
//! turn booked (no retry used up); or, past `delivery.max_pending`, in the DLQ.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::plan::{self, Outputs};
use super::Deliverer;
use crate::kafka::context::{finish, owns, GroupConsumer};
use crate::kafka::offsets::Position;
use crate::ledger::{Handled, Read};
use crate::model::DeliveryRecord;
use crate::pacing::Need;
use crate::retry::{self, Step};

/// A delivery waiting for a turn in its buckets (`needs`), for about how long.
pub(super) type Waiting = (DeliveryRecord, Vec<Need>, std::time::Duration);

impl Deliverer {
    /// Holds `needs`' buckets (or, `provider_wide`, their whole provider) for `wait`.
    pub(super) fn hold(&self, needs: &[Need], wait: std::time::Duration, provider_wide: bool) {
        let until = Instant::now() + wait;
        for need in needs {
            if provider_wide {
                self.pacer.hold_provider(need.key.provider, until);
            } else {
                self.pacer.hold(&need.key, until);
            }
        }
    }

    /// A delivery that must wait about `wait` for a turn in its buckets (`needs`). It waits
    /// here, in the waiting room, in line for the buckets (first come, first served), with its
    /// offset unstored behind it and no slot held; when the room or a line is full, or a bucket
    /// is held longer than the patience, it is parked in a retry tier (no retry used up). Past
    /// `delivery.max_pending` of waiting it is dead-lettered.
    pub(super) async fn wait(
        self: Arc<Self>,
        (mut record, needs, wait): Waiting,
        consumer: Arc<GroupConsumer>,
        pos: Position,
        unfinished: OwnedSemaphorePermit,
        shutdown: CancellationToken,
    ) {
        let now = Utc::now();
        let since = *record.waiting_since.get_or_insert(now);
        if now - since >= self.max_pending {
            let waited = (now - since).to_std().unwrap_or_default();
            let reason = format!(
                "waited {} for its provider's rate limit (delivery.max_pending)",
                humantime::format_duration(std::time::Duration::from_secs(waited.as_secs()))
            );
            return self
                .finish_with(record, Step::DeadLetter { reason }, consumer, pos)
                .await;
        }
        let room = self.waiting.clone().try_acquire_owned().ok();
        let Some(room) = room else {
            return self
                .park((record, needs, wait), since, consumer, pos, unfinished)
                .await;
        };
        drop(unfinished);
        let kind = record.channel_type.clone();
        self.metrics.waiting(&kind, 1);
        let turn = tokio::select! {
            _ = shutdown.cancelled() => None,
            turn = self.pacer.turn(&needs, self.patience) => Some(turn),
        };
        self.metrics.waiting(&kind, -1);
        drop(room);
        let ours = owns(&consumer, &pos);
        let (Some(turn), true) = (turn, ours) else {
            return; // not finished: read again after the restart, or by the partition's new owner
        };
        let Some(unfinished) = self.unfinished_slot(&shutdown).await else {
            return;
        };
        match turn {
            Ok(()) => {
                let handling = self.handle(record, consumer, pos, unfinished, shutdown, true);
                Box::pin(handling).await
            }
            // Its bucket is held long, or its line is full: a tier, then.
            Err(wait) => {
                let waiting = (record, needs, wait);
                self.park(waiting, since, consumer, pos, unfinished).await
            }
        }
    }

    /// Parks a waiting delivery in the retry tier that fits its wait, with its turn booked;
    /// dead-letters it if that turn lies past `delivery.max_pending`.
    async fn park(
        &self,
        (record, needs, wait): Waiting,
        since: chrono::DateTime<Utc>,
        consumer: Arc<GroupConsumer>,
        pos: Position,
        unfinished: OwnedSemaphorePermit,
    ) {
        let now = Utc::now();
        let allowed = (self.max_pending - (now - since))
            .to_std()
            .unwrap_or_default();
        let booked = self.pacer.book(&needs, Instant::now(), allowed);
        let wait = booked.map_or_else(|too_far| too_far, |turn| turn.max(wait));
        if wait > allowed {
            let reason = format!(
                "its provider's rate limit would keep it waiting past delivery.max_pending \
                 (its turn is {} away)",
                humantime::format_duration(std::time::Duration::from_secs(wait.as_secs()))
            );
            return self
                .finish_with(record, Step::DeadLetter { reason }, consumer, pos)
                .await;
        }
        let step = retry::park(wait, &self.delays, now).unwrap_or_else(|| Step::DeadLetter {
            reason: "waiting for its provider's rate limit, with no retry tier to wait in \
                     (retry.delays is empty)"
                .to_owned(),
        });
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
        self.metrics.delivery(&record.channel_type, fate);
        if let Step::Retry { tier, not_before } = &step {
            tracing::debug!(account = %record.account_id, channel = %record.channel_id,
                delivery = %record.delivery_id, tier, %not_before, "waits in a retry tier");
        }
        if let Step::DeadLetter { reason } = &step {
            tracing::error!(account = %record.account_id, channel = %record.channel_id,
                delivery = %record.delivery_id, %reason, "delivery dead-lettered");
        }
        finish(&consumer, &pos);
    }
}
