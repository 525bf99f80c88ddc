//! The verifier loop: reads `P.config` in the group `{group_id}.verifications`, sends each
//! waiting recipient its verification email, writes the marker, then stores the offset.
//!
//! Each settings record is handled in a task of its own, so the loop keeps polling (and so
//! keeps its place in the group) while a transient SMTP failure waits out `retry.delays`,
//! and one account's failing address holds back no other account's email. The stored offset
//! never passes a record still being handled (`crate::kafka::offsets`): a record waiting for
//! a retry when the process stops is read again after the restart.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{marker_key, wanted, Marker, Markers};
use crate::delivery::email::Mailer;
use crate::kafka::context::{finish, next_owned, owns, GroupConsumer};
use crate::kafka::offsets::Position;
use crate::kafka::producer::{OutRecord, Output};
use crate::metrics::{Metrics, VerificationOutcome};
use crate::model::{AccountSettings, Secret};
use crate::render;

/// SMTP transactions of verification emails at once; waiting for a retry holds none.
const SENDING_AT_ONCE: usize = 8;

/// Why a record's handling stopped before every waiting recipient had its marker; its offset
/// is not stored.
enum Unfinished {
    /// The partition went to another instance while an email waited for a retry.
    Revoked,
    /// Shutting down.
    Stopping,
}

pub struct Verifier {
    pub topic: String,
    pub markers: Arc<Markers>,
    pub mailer: Arc<Mailer>,
    pub output: Arc<Output>,
    pub metrics: Arc<Metrics>,
    pub delays: Vec<Duration>,
    pub in_progress: InProgress,
}

/// What the verifier's tasks are doing now.
pub struct InProgress {
    /// SMTP transactions under way, at most [`SENDING_AT_ONCE`].
    sending: Semaphore,
    /// Marker keys a task is handling: a newer settings record of the account leaves them to
    /// that task, which finishes first (its offset is lower).
    handling: Mutex<HashSet<String>>,
}

impl Default for InProgress {
    fn default() -> Self {
        Self {
            sending: Semaphore::new(SENDING_AT_ONCE),
            handling: Mutex::default(),
        }
    }
}

impl Verifier {
    pub async fn run(self: Arc<Self>, consumer: Arc<GroupConsumer>, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        while let Some((message, pos)) = next_owned(&consumer, &shutdown).await {
            let (this, consumer, shutdown) = (self.clone(), consumer.clone(), shutdown.clone());
            tracker.spawn(async move {
                if this
                    .handle(&message, &consumer, &pos, &shutdown)
                    .await
                    .is_ok()
                {
                    finish(&consumer, &pos);
                }
            });
        }
        tracker.close();
        tracker.wait().await; // every task ends at shutdown: they wait on nothing else
    }

    async fn handle(
        &self,
        message: &OwnedMessage,
        consumer: &GroupConsumer,
        pos: &Position,
        shutdown: &CancellationToken,
    ) -> Result<(), Unfinished> {
        // Tombstones and unreadable records: the settings reader logs them already.
        let Some(settings) = message
            .payload()
            .filter(|p| !p.is_empty())
            .and_then(|p| AccountSettings::decode(p).ok())
        else {
            return Ok(());
        };
        let ours = || owns(consumer, pos);
        for (address, url) in wanted(&settings) {
            let key = marker_key(&address, url.expose());
            if self.markers.contains(&key) || !self.take(&key) {
                continue;
            }
            let handled = self
                .verify(
                    &settings.account_id,
                    &address,
                    &url,
                    key.clone(),
                    &ours,
                    shutdown,
                )
                .await;
            self.in_progress
                .handling
                .lock()
                .expect("handling lock")
                .remove(&key);
            handled?;
        }
        Ok(())
    }

    /// Claims `key` for this task; false when another task is handling it.
    fn take(&self, key: &str) -> bool {
        self.in_progress
            .handling
            .lock()
            .expect("handling lock")
            .insert(key.to_owned())
    }

    /// Sends one recipient's email and writes its marker.
    async fn verify(
        &self,
        account_id: &str,
        address: &str,
        url: &Secret,
        key: String,
        ours: &impl Fn() -> bool,
        shutdown: &CancellationToken,
    ) -> Result<(), Unfinished> {
        let outcome = self.send(address, url, ours, shutdown).await?;
        let marker = Marker::new(account_id, address, outcome);
        let payload = serde_json::to_vec(&marker).expect("markers serialize");
        let record = OutRecord::new(&self.topic, key.clone(), payload);
        if self.output.write(vec![record]).await.is_err() {
            return Err(Unfinished::Stopping);
        }
        self.markers.insert(key);
        self.metrics.verification(outcome);
        Ok(())
    }

    /// Sends one verification email, retrying transient failures after each of
    /// `retry.delays` while the record is still this instance's to handle.
    async fn send(
        &self,
        address: &str,
        url: &Secret,
        ours: &impl Fn() -> bool,
        shutdown: &CancellationToken,
    ) -> Result<VerificationOutcome, Unfinished> {
        let email = render::email::verification(address, url.expose());
        let mut delays = self.delays.iter();
        loop {
            if !ours() {
                return Err(Unfinished::Revoked);
            }
            let sent = {
                let _sending = tokio::select! {
                    _ = shutdown.cancelled() => return Err(Unfinished::Stopping),
                    permit = self.in_progress.sending.acquire() => permit.expect("never closed"),
                };
                self.mailer.send(address, &email, None).await
            };
            let failure = match sent {
                Ok(()) => {
                    tracing::info!(address, "verification email sent");
                    return Ok(VerificationOutcome::Sent);
                }
                Err(failure) => failure,
            };
            if failure.permanent {
                tracing::warn!(address, reason = %failure.reason, "verification email refused");
                return Ok(VerificationOutcome::Refused);
            }
            let Some(delay) = delays.next() else {
                tracing::error!(address, reason = %failure.reason, "verification email failed; giving up");
                return Ok(VerificationOutcome::Failed);
            };
            tracing::warn!(address, reason = %failure.reason, ?delay, "verification email failed; retrying");
            tokio::select! {
                _ = shutdown.cancelled() => return Err(Unfinished::Stopping),
                _ = tokio::time::sleep(*delay) => {}
            }
        }
    }
}
