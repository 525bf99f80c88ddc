//! Delivery records travel `P.deliveries` → `P.retry.k` → `P.dlq`. They name the channel by
//! (account id, channel id) and carry no secret: the channel's settings are read at send time.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::event::{Event, Severity};
use super::settings::Channel;

/// One (event, channel) pair on its way to a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// Stable across retries and re-reads of the same event (see [`delivery_id`]); sent as
    /// `webhook-id`, so receivers can drop the rare duplicate.
    pub delivery_id: String,
    pub account_id: String,
    pub channel_id: String,
    /// The channel's type when the delivery was created (`webhook`, `slack`, ...).
    pub channel_type: String,
    pub event_type: String,
    pub event_id: String,
    pub severity: Severity,
    pub created_at: DateTime<Utc>,
    /// A retry tier does not attempt the delivery before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// Every attempt made so far, oldest first: requests (or SMTP transactions) made.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// Times the delivery was due but not let through to its destination (busy, open
    /// circuit). A skip is no attempt: it moves the delivery to a retry tier without using up
    /// a retry.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skips: u32,
    /// Since when the delivery has waited, held back by the service itself (its bucket's
    /// pace, a rate-limit answer, an open circuit, a busy or held host); ended by the next
    /// attempt, which adds it to `waited_ms`. Past `delivery.max_pending` of such waiting in
    /// all, it is dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<DateTime<Utc>>,
    /// Milliseconds waited so (held back by the service) before `waiting_since`, in all.
    #[serde(default, skip_serializing_if = "is_zero_ms")]
    pub waited_ms: u64,
    /// Waiting in a retry tier for the turn its bucket reserved for it (`not_before`), which
    /// it claims when back (`crate::pacing`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parked: bool,
    /// Email recipients reached before `attempts` began (kept when a dead letter is replayed
    /// with a fresh attempt count, so nobody gets the alert twice).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reached: Vec<String>,
    /// Set when `dlq replay` put the delivery back: a replay is a new run of the delivery,
    /// not a repeat of the first (see `crate::ledger`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_at: Option<DateTime<Utc>>,
    /// Set by `send-test`: every attempt's outcome is also written to `P.reports`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub report: bool,
    /// The event as received, unknown fields included.
    pub event: Event,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Delivered,
    /// A failure that may pass: the delivery goes to the next tier (or the DLQ after the last).
    Retryable,
    /// A failure that will not pass: the delivery goes to the DLQ at once.
    Permanent,
}

/// The outcome of one request to a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub duration_ms: u64,
    pub outcome: AttemptOutcome,
    /// HTTP status or SMTP reply code, when the provider answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Email: the recipients this attempt reached. A retry skips everyone reached before,
    /// so a partial failure never mails the same alert twice to the same address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reached: Vec<String>,
    /// No answer came after the request may have been sent (a timeout, a broken
    /// connection): the receiver may have acted on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_answer: bool,
}

/// What became of a delivery record read from a delivery topic: written to `P.handled` (see
/// `crate::ledger`) and counted in `sysmos_notify_deliveries_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    Delivered,
    /// Written to a retry tier: after a failure that may pass, or not let through to its
    /// destination (busy, open circuit).
    #[serde(rename = "retry")] // the name `P.handled` has always carried
    Retried,
    DeadLettered,
    /// The channel was removed, disabled or left without a verified recipient: nothing sent.
    Dropped,
    /// A problem whose recovery was delivered on the channel first: nothing sent.
    Superseded,
    /// Handled before (re-read after a crash or rebalance, or an event read twice): nothing
    /// sent, and nothing written to `P.handled`.
    Duplicate,
}

impl Fate {
    /// The `outcome` label of `sysmos_notify_deliveries_total`.
    pub fn label(self) -> &'static str {
        match self {
            Fate::Delivered => "delivered",
            Fate::Retried => "retried",
            Fate::DeadLettered => "dead_lettered",
            Fate::Dropped => "dropped",
            Fate::Superseded => "superseded",
            Fate::Duplicate => "duplicate",
        }
    }
}

/// What `P.reports` holds for a delivery with `report` set: one attempt and what follows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptReport {
    pub delivery_id: String,
    pub attempt: Attempt,
    /// `delivered`, `retry` (with `retry_tier` and `not_before`) or `dead_lettered` (with `reason`).
    pub next: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_tier: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What `P.dlq` holds: the delivery with every attempt, and why it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub reason: String,
    pub dead_lettered_at: DateTime<Utc>,
    /// An attempt of it got no answer after the request may have been sent (a timeout, a
    /// broken connection): the receiver may have it after all (deduplicate on `webhook-id`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub may_have_arrived: bool,
    pub delivery: DeliveryRecord,
}

impl DeliveryRecord {
    pub fn new(event: &Event, channel: &Channel, now: DateTime<Utc>) -> Self {
        Self {
            delivery_id: delivery_id(event.account_id(), event.event_id(), &channel.id),
            account_id: event.account_id().to_owned(),
            channel_id: channel.id.clone(),
            channel_type: channel.kind.name().to_owned(),
            event_type: event.kind().to_owned(),
            event_id: event.event_id().to_owned(),
            severity: event.severity(),
            created_at: now,
            not_before: None,
            attempts: Vec::new(),
            skips: 0,
            waiting_since: None,
            waited_ms: 0,
            parked: false,
            reached: Vec::new(),
            replayed_at: None,
            report: false,
            event: event.clone(),
        }
    }

    /// Every email recipient some earlier attempt reached.
    pub fn reached_so_far(&self) -> impl Iterator<Item = &str> {
        self.reached
            .iter()
            .chain(self.attempts.iter().flat_map(|a| a.reached.iter()))
            .map(String::as_str)
    }

    /// The delivery as a replay puts it back on `P.deliveries`: a fresh attempt count, due
    /// now, marked as replayed now, with the recipients already reached remembered.
    pub fn replayed(&self) -> Self {
        let mut fresh = self.clone();
        fresh.reached = self.reached_so_far().map(str::to_owned).collect();
        fresh.attempts.clear();
        fresh.skips = 0;
        fresh.waiting_since = None;
        fresh.waited_ms = 0;
        fresh.parked = false;
        fresh.not_before = None;
        fresh.replayed_at = Some(Utc::now());
        fresh
    }

    /// The Kafka key of delivery, retry and DLQ records: all deliveries of one channel share
    /// a partition, so one account's channel sees its alerts in order.
    pub fn key(&self) -> String {
        delivery_key(&self.account_id, &self.channel_id)
    }

    /// Starts (or goes on with) a wait the service holds it in: the time it has waited so,
    /// in all, this one included.
    pub fn hold_back(&mut self, now: DateTime<Utc>) -> std::time::Duration {
        self.waiting_since.get_or_insert(now);
        self.held_for(now)
    }

    /// The time it has waited, held back by the service, in all.
    pub fn held_for(&self, now: DateTime<Utc>) -> std::time::Duration {
        let current = self
            .waiting_since
            .and_then(|since| (now - since).to_std().ok())
            .unwrap_or_default();
        std::time::Duration::from_millis(self.waited_ms) + current
    }

    /// An attempt is made: the current wait, if any, ends (and counts in `waited_ms`).
    pub fn end_wait(&mut self, now: DateTime<Utc>) {
        if let Some(since) = self.waiting_since.take() {
            let waited = (now - since).to_std().unwrap_or_default();
            self.waited_ms += waited.as_millis() as u64;
        }
    }

    /// Whether a request was made and never answered: the provider may have acted on it.
    pub fn had_unanswered_attempt(&self) -> bool {
        self.attempts.iter().any(|a| a.status.is_none())
    }

    /// The number the next attempt will carry (1 for the first).
    pub fn next_attempt(&self) -> u32 {
        self.attempts.len() as u32 + 1
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_ms(n: &u64) -> bool {
    *n == 0
}

pub fn delivery_key(account_id: &str, channel_id: &str) -> String {
    format!("{account_id}:{channel_id}")
}

/// Derived from the event id (unique upstream) and the channel, not random: if the router
/// re-reads an event after a crash, the repeated delivery carries the same id.
pub fn delivery_id(account_id: &str, event_id: &str, channel_id: &str) -> String {
    let mut hash = Sha256::new();
    for part in [account_id, event_id, channel_id] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    format!("msg_{}", hex::encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = delivery_id("acc", "evt_1", "hook");
        assert_eq!(a, delivery_id("acc", "evt_1", "hook"));
        assert_ne!(a, delivery_id("acc", "evt_1", "hook2"));
        assert_ne!(
            delivery_id("ac", "cevt_1", "hook"),
            delivery_id("acc", "evt_1", "hook")
        );
        assert!(a.starts_with("msg_") && a.len() == 36);
    }
}
