//! The verifier loop: reads `P.config` in the group `{group_id}.verifications`, sends each
//! waiting recipient its verification email, writes the marker, then stores the offset.
//! It is a low-volume path, so records are handled one at a time, in order; a transient SMTP
//! failure is retried after each of `retry.delays`, then given up with a `failed` marker so
//! one bad address cannot hold the others back.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use super::{marker_key, wanted, Marker, Sent};
use crate::delivery::email::Mailer;
use crate::kafka::context::{finish, next_owned, GroupConsumer};
use crate::kafka::offsets::Position;
use crate::kafka::producer::{OutRecord, Output};
use crate::metrics::{Metrics, VerificationOutcome};
use crate::model::{AccountSettings, Secret};
use crate::render;

/// How handling one settings record ended.
enum Handled {
    /// Every waiting recipient has its marker: the offset may be stored.
    Done,
    /// The partition went to another instance while an email waited for a retry.
    Revoked,
    /// Shutting down before it was done.
    Stopping,
}

pub struct Verifier {
    pub topic: String,
    pub sent: Arc<Sent>,
    pub mailer: Arc<Mailer>,
    pub output: Arc<Output>,
    pub metrics: Arc<Metrics>,
    pub delays: Vec<Duration>,
}

impl Verifier {
    pub async fn run(self, consumer: Arc<GroupConsumer>, shutdown: CancellationToken) {
        while let Some((message, pos)) = next_owned(&consumer, &shutdown).await {
            match self.handle(&message, &consumer, &pos, &shutdown).await {
                Handled::Done => finish(&consumer, &pos),
                Handled::Revoked => {} // the partition's new owner handles the record
                Handled::Stopping => return, // handled again after restart
            }
        }
    }

    async fn handle(
        &self,
        message: &OwnedMessage,
        consumer: &GroupConsumer,
        pos: &Position,
        shutdown: &CancellationToken,
    ) -> Handled {
        let ours = || {
            consumer
                .context()
                .assignment
                .lock()
                .expect("assignment lock")
                .is_current(pos)
        };
        // Tombstones and unreadable records: the settings reader logs them already.
        let Some(settings) = message
            .payload()
            .filter(|p| !p.is_empty())
            .and_then(|p| AccountSettings::decode(p).ok())
        else {
            return Handled::Done;
        };
        for (address, url) in wanted(&settings) {
            let key = marker_key(&address, url.expose());
            if self.sent.contains(&key) {
                continue;
            }
            let outcome = match self.send(&address, &url, &ours, shutdown).await {
                Ok(outcome) => outcome,
                Err(handled) => return handled,
            };
            let marker = Marker::new(&settings.account_id, &address, outcome);
            let payload = serde_json::to_vec(&marker).expect("markers serialize");
            let record = OutRecord::new(&self.topic, key.clone(), payload);
            if self.output.write(vec![record]).await.is_err() {
                return Handled::Stopping;
            }
            self.sent.insert(key);
            self.metrics.verification(outcome);
        }
        Handled::Done
    }

    /// Sends one verification email, retrying transient failures while the record is still
    /// this instance's to handle.
    async fn send(
        &self,
        address: &str,
        url: &Secret,
        ours: &impl Fn() -> bool,
        shutdown: &CancellationToken,
    ) -> Result<VerificationOutcome, Handled> {
        let email = render::email::verification(address, url.expose());
        let mut delays = self.delays.iter();
        loop {
            if !ours() {
                return Err(Handled::Revoked);
            }
            let failure = match self.mailer.send(address, &email, None).await {
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
                _ = shutdown.cancelled() => return Err(Handled::Stopping),
                _ = tokio::time::sleep(*delay) => {}
            }
        }
    }
}
