//! What became of recent delivery records, shared by every instance: repeats are not sent
//! twice, and a problem whose recovery was already delivered is not sent at all.
//!
//! Every delivery record a deliverer handles leaves a [`Handled`] entry in `P.handled`
//! (written in batches by the [`Journal`]), written after the record's outcome (next tier, DLQ) is acknowledged — never with it: a
//! kill between the two writes must not leave a handled mark without the next tier, or the
//! re-read record would be skipped and lost — and before its offset is stored. Every
//! instance reads `P.handled` from the beginning at start (readiness waits for it) and
//! follows it, keeping the last `delivery.dedup_window` of it, at most
//! `delivery.dedup_capacity` entries, in a [`Ledger`]. Before an attempt, [`Ledger::verdict`]
//! says:
//!
//! - **repeat**: this very record (same delivery, same replay, same number of attempts) was
//!   handled already — the offset was not committed before a crash or a rebalance, or the
//!   router read the event twice — or the delivery was delivered: nothing is sent;
//! - **superseded**: a problem whose incident's recovery (same channel, same
//!   [incident key](crate::model::incident_key), `occurred_at` not earlier) was
//!   already delivered: dropped, so nobody is told "down" after "recovered";
//! - otherwise the attempt is made.
//!
//! The windows left are documented in the README ("Duplicates and superseded alerts"): an
//! attempt whose outcome was not yet written when the process died, and two instances
//! handling the same record within the time `P.handled` takes to reach the other.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{DeliveryRecord, Fate};

mod in_flight;
mod journal;
pub use in_flight::{Claim, InFlight};
pub use journal::Journal;

/// The value of a `P.handled` record: what became of the delivery records handled together,
/// keyed by the first one's `delivery_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandledBatch {
    pub handled: Vec<Handled>,
}

/// The entries of a `P.handled` record's value.
pub fn entries_of(payload: &[u8]) -> Result<Vec<Handled>, serde_json::Error> {
    serde_json::from_slice::<HandledBatch>(payload).map(|batch| batch.handled)
}

/// What became of one delivery record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handled {
    pub delivery_id: String,
    pub account_id: String,
    pub channel_id: String,
    /// Set on a record put back by `dlq replay`: a replay is a new run of the delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_at: Option<DateTime<Utc>>,
    /// How many attempts the record carried when it was read (0 on `P.deliveries`).
    pub attempts_before: u32,
    /// How many skips (not let through to its destination) it carried when it was read.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skips_before: u32,
    pub next: Fate,
    /// The incident the event opens or resolves ([`crate::model::incident_key`], PagerDuty's `dedup_key`).
    pub incident: String,
    pub recovery: bool,
    pub occurred_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

/// Where a delivery record stood when it was read: with its `delivery_id` (and
/// `replayed_at`), it names that one record among the copies a delivery leaves in the tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    pub attempts: u32,
    pub skips: u32,
}

impl Read {
    pub fn of(record: &DeliveryRecord) -> Self {
        Self {
            attempts: record.attempts.len() as u32,
            skips: record.skips,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Handled {
    /// What became (`next`) of `record`, which stood at `read` when it was read.
    pub fn of(record: &DeliveryRecord, read: Read, next: Fate) -> Self {
        Self {
            delivery_id: record.delivery_id.clone(),
            account_id: record.account_id.clone(),
            channel_id: record.channel_id.clone(),
            replayed_at: record.replayed_at,
            attempts_before: read.attempts,
            skips_before: read.skips,
            next,
            incident: crate::model::incident_key(&record.event),
            recovery: record.event.is_recovery(),
            occurred_at: record.event.occurred_at(),
            at: Utc::now(),
        }
    }
}

/// Whether to attempt a delivery record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Attempt,
    /// Handled before (or delivered): nothing to do.
    Repeat,
    /// A problem whose recovery was delivered on this channel: dropped.
    Superseded,
}

/// 128 bits of SHA-256 over length-prefixed parts: collisions (which would wrongly suppress
/// a delivery) are out of reach at any capacity.
pub(super) type Id = u128;

fn id(parts: &[&[u8]]) -> Id {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    let digest = hash.finalize();
    u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"))
}

pub(super) fn read_id(delivery_id: &str, replayed_at: Option<DateTime<Utc>>, read: Read) -> Id {
    let replay = replayed_at
        .map(|t| t.timestamp_micros())
        .unwrap_or(0)
        .to_be_bytes();
    let (attempts, skips) = (read.attempts.to_be_bytes(), read.skips.to_be_bytes());
    let identity: [&[u8]; 4] = [b"read", delivery_id.as_bytes(), &replay, &attempts];
    if read.skips == 0 {
        // The identity entries had before skips were recorded apart.
        id(&identity)
    } else {
        id(&[&identity[..], &[&skips[..]]].concat())
    }
}

fn delivered_id(delivery_id: &str) -> Id {
    id(&[b"delivered", delivery_id.as_bytes()])
}

fn incident_id(channel_id: &str, account_id: &str, incident: &str) -> Id {
    id(&[
        b"incident",
        account_id.as_bytes(),
        channel_id.as_bytes(),
        incident.as_bytes(),
    ])
}

struct Entries {
    seen: HashSet<Id>,
    /// Incident → `occurred_at` (µs) of its latest delivered recovery.
    recovered: HashMap<Id, i64>,
    /// Channel → when (µs) a record of it was last handled with a request possibly made.
    active: HashMap<Id, i64>,
    /// `active` is swept of channels quiet past the window when it grows this large.
    active_sweep_at: usize,
    /// Oldest first: what to forget when the window passes or the capacity is reached.
    order: VecDeque<Entry>,
}

/// One remembered fact, 32 bytes: `id` was seen, or (when `recovered_at` is set) the
/// incident `id` recovered at that time.
#[derive(Clone, Copy)]
struct Entry {
    id: Id,
    /// When it was handled, µs since the epoch.
    at: i64,
    /// `NOT_RECOVERY` for a seen record.
    recovered_at: i64,
}

const NOT_RECOVERY: i64 = i64::MIN;

/// The recent part of `P.handled`, in memory.
pub struct Ledger {
    window: chrono::Duration,
    capacity: usize,
    entries: Mutex<Entries>,
}

impl Ledger {
    pub fn new(window: Duration, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            window: chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX),
            capacity,
            entries: Mutex::new(Entries::with_capacity(capacity)),
        }
    }

    /// Applies one record of `P.handled` (a batch). Entries older than the window, or unreadable records, are skipped (an
    /// unreadable one only means a repeat may not be recognised).
    pub fn apply_bytes(&self, payload: Option<&[u8]>) {
        let Some(payload) = payload else { return };
        let now = Utc::now();
        match entries_of(payload) {
            Ok(entries) => entries.iter().for_each(|h| self.apply(h, now)),
            Err(error) => tracing::debug!(%error, "unreadable handled record skipped"),
        }
    }

    pub fn apply(&self, handled: &Handled, now: DateTime<Utc>) {
        let horizon = now - self.window;
        if handled.at < horizon {
            return;
        }
        // Hashed before the lock is taken: every attempt of every channel goes through here.
        let at = handled.at.timestamp_micros();
        let seen = |id| Entry {
            id,
            at,
            recovered_at: NOT_RECOVERY,
        };
        let read = seen(read_id(
            &handled.delivery_id,
            handled.replayed_at,
            Read {
                attempts: handled.attempts_before,
                skips: handled.skips_before,
            },
        ));
        let delivered = (handled.next == Fate::Delivered).then(|| {
            let recovery = handled.recovery.then(|| Entry {
                id: incident_id(&handled.channel_id, &handled.account_id, &handled.incident),
                at,
                recovered_at: handled.occurred_at.timestamp_micros(),
            });
            (seen(delivered_id(&handled.delivery_id)), recovery)
        });
        let requested = matches!(
            handled.next,
            Fate::Delivered | Fate::Retried | Fate::DeadLettered
        );
        let channel = requested.then(|| channel_id(&handled.account_id, &handled.channel_id));
        let mut entries = self.entries.lock().expect("ledger lock");
        if let Some(channel) = channel {
            entries.touch(channel, at, horizon.timestamp_micros());
        }
        entries.remember(read);
        if let Some((delivered, recovery)) = delivered {
            entries.remember(delivered);
            if let Some(recovery) = recovery {
                entries.remember(recovery);
            }
        }
        entries.forget(horizon.timestamp_micros(), self.capacity);
    }

    /// Whether to attempt `record`.
    pub fn verdict(&self, record: &DeliveryRecord) -> Verdict {
        let read = read_id(&record.delivery_id, record.replayed_at, Read::of(record));
        let delivered = delivered_id(&record.delivery_id);
        let seen = {
            let entries = self.entries.lock().expect("ledger lock");
            entries.seen.contains(&read) || entries.seen.contains(&delivered)
        };
        if seen {
            Verdict::Repeat
        } else if self.overtaken(record) {
            Verdict::Superseded
        } else {
            Verdict::Attempt
        }
    }

    /// Whether `record` is a problem whose incident's recovery, occurred no earlier, has been
    /// delivered on the same channel: not to be sent, or, if it was sent meanwhile, to be
    /// resolved again.
    pub fn overtaken(&self, record: &DeliveryRecord) -> bool {
        if record.event.is_recovery() {
            return false;
        }
        let incident = crate::model::incident_key(&record.event);
        let key = incident_id(&record.channel_id, &record.account_id, &incident);
        let occurred_at = record.event.occurred_at().timestamp_micros();
        let entries = self.entries.lock().expect("ledger lock");
        entries
            .recovered
            .get(&key)
            .is_some_and(|recovered| *recovered >= occurred_at)
    }

    /// When a record of the channel was last handled, by any instance, in a way that may
    /// have made a request (delivered, retried, dead-lettered): whoever paces its buckets
    /// next must count on the provider having seen that request (`Pacer::take_over`).
    pub fn last_active(&self, account_id: &str, channel: &str) -> Option<DateTime<Utc>> {
        let key = channel_id(account_id, channel);
        let entries = self.entries.lock().expect("ledger lock");
        entries
            .active
            .get(&key)
            .and_then(|at| DateTime::from_timestamp_micros(*at))
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("ledger lock").order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The fewest channels `Entries::active` holds before it is swept.
const MIN_ACTIVE_SWEEP: usize = 1024;

fn channel_id(account_id: &str, channel_id: &str) -> Id {
    id(&[b"channel", account_id.as_bytes(), channel_id.as_bytes()])
}

/// Entries are allocated for up to this many at start; beyond, they grow as needed.
const PREALLOCATED_MAX: usize = 1 << 20;

impl Entries {
    /// Room for `capacity` entries (and the up to 3 one handled record adds before the oldest
    /// are forgotten), so a storm does not double the tables mid-way: the copy of the old
    /// next to the new was the ledger's peak (BENCHMARKS.md, "Memory").
    fn with_capacity(capacity: usize) -> Self {
        let room = capacity.saturating_add(3).min(PREALLOCATED_MAX);
        Self {
            seen: HashSet::with_capacity(room),
            recovered: HashMap::new(),
            active: HashMap::new(),
            active_sweep_at: MIN_ACTIVE_SWEEP,
            order: VecDeque::with_capacity(room),
        }
    }

    fn remember(&mut self, entry: Entry) {
        if entry.recovered_at == NOT_RECOVERY {
            if !self.seen.insert(entry.id) {
                return;
            }
        } else {
            let latest = self.recovered.entry(entry.id).or_insert(entry.recovered_at);
            if *latest > entry.recovered_at {
                return;
            }
            *latest = entry.recovered_at;
        }
        self.order.push_back(entry);
    }

    fn touch(&mut self, channel: Id, at: i64, horizon: i64) {
        let latest = self.active.entry(channel).or_insert(at);
        *latest = (*latest).max(at);
        if self.active.len() >= self.active_sweep_at {
            self.active.retain(|_, at| *at >= horizon);
            self.active_sweep_at = (self.active.len() * 2).max(MIN_ACTIVE_SWEEP);
        }
    }

    fn forget(&mut self, horizon: i64, capacity: usize) {
        while let Some(oldest) = self.order.front().copied() {
            if oldest.at >= horizon && self.order.len() <= capacity {
                break;
            }
            self.order.pop_front();
            if oldest.recovered_at == NOT_RECOVERY {
                self.seen.remove(&oldest.id);
            } else if self.recovered.get(&oldest.id) == Some(&oldest.recovered_at) {
                // A later recovery of the same incident has its own, later entry.
                self.recovered.remove(&oldest.id);
            }
        }
    }
}

#[cfg(test)]
mod tests;
