//! Provider rate limits (CONTRACT §5a). Every delivery belongs to one or more **buckets** —
//! a Slack channel (bot token + channel), a Discord webhook, a PagerDuty integration key, an
//! email recipient, a webhook channel — and a request is made only when each of its buckets
//! has a turn: requests to a bucket never exceed its pace. A provider that answers "too many"
//! holds the bucket (or, for Discord's global limit and an SMTP server's 421/454, the whole
//! provider) for as long as it asked, and nothing else waits.
//!
//! Buckets are keyed by a hash of the credential: no token is kept in a key, a log or a metric.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::config::{Pace, Paces};
use crate::model::{Channel, ChannelKind, DeliveryRecord};

/// Whose limits a bucket keeps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    Slack,
    Discord,
    PagerDuty,
    Email,
    Webhook,
}

/// One place a provider limits: see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BucketKey {
    pub provider: Provider,
    id: String,
}

/// A bucket a delivery needs a turn in, and its pace (`None`: held only when the provider
/// says so, as a webhook without a `rate`).
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    pub key: BucketKey,
    pub pace: Option<Pace>,
}

/// The buckets `record` needs a turn in to be sent on `channel`.
pub fn needs(record: &DeliveryRecord, channel: &Channel, paces: &Paces) -> Vec<Need> {
    let need = |provider, parts: &[&str], pace| Need {
        key: BucketKey {
            provider,
            id: hashed(parts),
        },
        pace,
    };
    match &channel.kind {
        ChannelKind::Slack { bot_token, channel } => vec![need(
            Provider::Slack,
            &[bot_token.expose(), channel],
            Some(paces.slack),
        )],
        ChannelKind::Discord { webhook_url } => vec![need(
            Provider::Discord,
            &[webhook_url.expose()],
            Some(paces.discord),
        )],
        ChannelKind::PagerDuty { integration_key } => vec![need(
            Provider::PagerDuty,
            &[integration_key.expose()],
            Some(paces.pagerduty),
        )],
        ChannelKind::Email { recipients } => {
            let reached: Vec<&str> = record.reached_so_far().collect();
            recipients
                .iter()
                .filter(|r| r.verified && !reached.contains(&r.address.as_str()))
                .map(|r| {
                    let address = r.address.trim().to_lowercase();
                    need(Provider::Email, &[&address], Some(paces.email))
                })
                .collect()
        }
        ChannelKind::Webhook { rate, .. } => {
            let pace = rate.map(|rate| Pace {
                rate,
                burst: rate.count,
            });
            vec![need(
                Provider::Webhook,
                &[&record.account_id, &record.channel_id],
                pace,
            )]
        }
    }
}

/// A key for credentials and user URLs that keeps none of them (pacing buckets, circuits).
pub(crate) fn hashed(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(&hash.finalize()[..16])
}

struct Bucket {
    /// The time of the next turn at the bucket's pace (GCRA's theoretical arrival time):
    /// every turn, waited for in memory or by a parked delivery, is reserved on this one
    /// timeline in order, so no turn is promised twice and nobody is overtaken.
    next: Option<Instant>,
    held_until: Option<Instant>,
    /// How far holds have moved this bucket's reserved turns, in all: a delivery waiting in
    /// memory for its turn waits as much longer as this grew meanwhile.
    shifted: Duration,
    /// Deliveries waiting in memory for a turn reserved here.
    in_line: usize,
    /// Turns reserved by deliveries parked in a retry tier and not yet claimed.
    parked: usize,
    /// The assignment this process last took the bucket over at (`Pacer::take_over`).
    taken_over: Option<Instant>,
    last_used: Instant,
}

/// Every bucket's turns and holds. Idle buckets are forgotten: their keys come from users.
#[derive(Default)]
pub struct Pacer {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    buckets: HashMap<BucketKey, Bucket>,
    providers: HashMap<Provider, Instant>,
    sweep_at: usize,
}

/// Deliveries that may wait in memory in one bucket's line; more wait in the retry tiers.
pub const LINE: usize = 100;

/// Buckets are swept for idle ones when there are twice as many as after the last sweep,
/// and at least this many.
const MIN_SWEEP: usize = 4096;
/// A bucket unused this long has refilled and holds nothing: forgetting it loses nothing.
const IDLE: Duration = Duration::from_secs(3600);

impl Pacer {
    /// Reserves the next turn in every bucket of `needs`: after the turns reserved before it
    /// (first come, first served), the buckets' holds, and within each bucket's pace and burst.
    /// Returns how long until the turn (zero: now). A turn further away than `within` is not
    /// reserved, and its distance is the error.
    pub fn turn(
        &self,
        needs: &[Need],
        now: Instant,
        within: Duration,
    ) -> Result<Duration, Duration> {
        let mut state = self.state.lock().expect("pacer lock");
        let at = needs
            .iter()
            .map(|need| state.earliest(need, now))
            .max()
            .unwrap_or(now);
        let distance = at.saturating_duration_since(now);
        if distance > within {
            return Err(distance);
        }
        for need in needs {
            if let Some(pace) = need.pace {
                let bucket = state.bucket(need, now);
                bucket.next = Some(bucket.next.map_or(at, |next| next.max(at)) + interval(pace));
            }
        }
        Ok(distance)
    }

    /// This process was assigned the partitions of `needs`' deliveries at `assigned`, and a
    /// request of theirs was last possibly made, by any instance, at `active`. The previous
    /// owner may have emptied the provider's buckets right up to the handover, so a bucket
    /// busy within a burst's span of it counts as drained at `assigned` the first time it is
    /// asked after that assignment: its turns resume one interval after, at its pace, and no
    /// full burst meets a provider's empty one. A quiet bucket keeps its burst.
    pub fn take_over(&self, needs: &[Need], assigned: Instant, active: Option<Instant>) {
        let mut state = self.state.lock().expect("pacer lock");
        let now = Instant::now();
        for need in needs {
            let Some(pace) = need.pace else { continue };
            let span = interval(pace) * pace.burst.get();
            let bucket = state.bucket(need, now);
            if bucket.taken_over.is_some_and(|at| at >= assigned) {
                continue;
            }
            bucket.taken_over = Some(assigned);
            if active.is_some_and(|active| active + span > assigned) {
                let drained = assigned + span;
                bucket.next = Some(bucket.next.map_or(drained, |next| next.max(drained)));
            }
        }
    }

    /// A delivery parked in a retry tier until its reserved turn: counted, so that when it is
    /// back it can [`claim`](Self::claim) that turn.
    pub fn park(&self, needs: &[Need]) {
        let mut state = self.state.lock().expect("pacer lock");
        for need in needs {
            state.bucket(need, Instant::now()).parked += 1;
        }
    }

    /// A parked delivery back `late` after its turn takes it, if this process reserved such a
    /// turn and still owes it, no bucket is held, and it is not late by more than a turn: a
    /// turn long past is gone (parked deliveries coming back late together must not make a
    /// burst). Otherwise (reserved by another process or before a restart, void since a
    /// hold, or missed) it reserves a turn anew.
    pub fn claim(&self, needs: &[Need], now: Instant, late: Duration) -> bool {
        let mut state = self.state.lock().expect("pacer lock");
        let owed = needs
            .iter()
            .all(|need| state.buckets.get(&need.key).is_some_and(|b| b.parked > 0));
        if !owed {
            return false;
        }
        for need in needs {
            state.bucket(need, now).parked -= 1;
        }
        needs.iter().all(|need| {
            state.held(need, now).is_zero() && need.pace.is_none_or(|pace| late <= interval(pace))
        })
    }

    /// A place in memory among the deliveries waiting for `needs`' turn, unless a bucket
    /// already has [`LINE`] waiting, or is held longer than `patience`: the delivery then
    /// waits in a retry tier instead. The place is left when the guard is dropped.
    pub fn line(&self, needs: &[Need], patience: Duration) -> Option<InLine<'_>> {
        let mut state = self.state.lock().expect("pacer lock");
        let now = Instant::now();
        let refused = needs.iter().any(|need| {
            state.held(need, now) > patience
                || state
                    .buckets
                    .get(&need.key)
                    .is_some_and(|b| b.in_line >= LINE)
        });
        if refused {
            return None;
        }
        for need in needs {
            state.bucket(need, now).in_line += 1;
        }
        let keys = needs.iter().map(|n| n.key.clone()).collect();
        Some(InLine { pacer: self, keys })
    }

    /// How far holds have moved the turns of `needs`' buckets so far: see [`Pacer::hold`].
    pub fn shifted(&self, needs: &[Need]) -> Duration {
        let state = self.state.lock().expect("pacer lock");
        needs
            .iter()
            .filter_map(|need| state.buckets.get(&need.key))
            .map(|bucket| bucket.shifted)
            .sum()
    }

    /// Holds one bucket until `until` (a rate-limit answer, or a provider saying its next
    /// request must wait). The turns reserved in it move back by as much as the hold grew, so
    /// the deliveries waiting for them keep their order and spacing after it.
    pub fn hold(&self, key: &BucketKey, until: Instant) {
        let mut state = self.state.lock().expect("pacer lock");
        let provider = state.providers.get(&key.provider).copied();
        if let Some(bucket) = state.buckets.get_mut(key) {
            bucket.hold(until, provider, Instant::now());
        }
    }

    /// Holds every bucket of `provider` until `until` (Discord's global limit, an SMTP
    /// server's 421 or 454).
    pub fn hold_provider(&self, provider: Provider, until: Instant) {
        let mut state = self.state.lock().expect("pacer lock");
        let before = state.providers.get(&provider).copied();
        let now = Instant::now();
        for (key, bucket) in &mut state.buckets {
            if key.provider == provider {
                bucket.hold(until, before, now);
            }
        }
        let held = state.providers.entry(provider).or_insert(until);
        *held = (*held).max(until);
    }
}

impl Bucket {
    /// Holds until `until` (`provider_held`: the provider's own hold so far), moving the
    /// reserved turns back by what the hold adds.
    fn hold(&mut self, until: Instant, provider_held: Option<Instant>, now: Instant) {
        let from = self
            .held_until
            .max(provider_held)
            .map_or(now, |h| h.max(now));
        let added = until.saturating_duration_since(from);
        self.held_until = self.held_until.max(Some(until));
        if !added.is_zero() {
            self.shifted += added;
            self.next = self.next.map(|next| next.max(now) + added);
            // The parked deliveries' turns are written in their records and cannot move:
            // void, or they would meet the moved line. They reserve anew when back.
            self.parked = 0;
        }
    }
}

/// A place in memory in some buckets' lines; see [`Pacer::line`].
pub struct InLine<'a> {
    pacer: &'a Pacer,
    keys: Vec<BucketKey>,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        let mut state = self.pacer.state.lock().expect("pacer lock");
        for key in &self.keys {
            if let Some(bucket) = state.buckets.get_mut(key) {
                bucket.in_line = bucket.in_line.saturating_sub(1);
            }
        }
    }
}

/// The time between two turns at `pace`, 1% longer than the pace itself: requests are timed
/// where they leave, limits are counted where they arrive, and a request sent exactly on the
/// pace that meets a millisecond less latency than the one before is one too many there
/// (BENCHMARKS.md, "Membership and pacing across instances").
fn interval(pace: Pace) -> Duration {
    let exact = pace.rate.per / pace.rate.count.get();
    (exact + exact / 100).max(Duration::from_nanos(1))
}

impl State {
    /// The earliest turn `need`'s bucket can give from `now`: after its hold and, at its
    /// pace, no sooner than the burst allows (GCRA: the next turn less the burst's tolerance).
    fn earliest(&mut self, need: &Need, now: Instant) -> Instant {
        let free = now + self.held(need, now);
        let bucket = self.bucket(need, now);
        match (need.pace, bucket.next) {
            (Some(pace), Some(next)) => {
                let tolerance = interval(pace) * (pace.burst.get() - 1);
                free.max(next.checked_sub(tolerance).unwrap_or(now))
            }
            _ => free,
        }
    }

    /// How long `need`'s bucket (or its provider) is held from `now`.
    fn held(&self, need: &Need, now: Instant) -> Duration {
        self.providers
            .get(&need.key.provider)
            .copied()
            .max(self.buckets.get(&need.key).and_then(|b| b.held_until))
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now))
    }

    fn bucket(&mut self, need: &Need, now: Instant) -> &mut Bucket {
        if !self.buckets.contains_key(&need.key)
            && self.buckets.len() >= self.sweep_at.max(MIN_SWEEP)
        {
            self.buckets.retain(|_, b| {
                b.in_line > 0
                    || b.parked > 0
                    || now.saturating_duration_since(b.last_used) < IDLE
                    || b.held_until.max(b.next).is_some_and(|until| until > now)
            });
            self.sweep_at = self.buckets.len() * 2;
        }
        let bucket = self
            .buckets
            .entry(need.key.clone())
            .or_insert_with(|| Bucket {
                next: None,
                held_until: None,
                shifted: Duration::ZERO,
                in_line: 0,
                parked: 0,
                taken_over: None,
                last_used: now,
            });
        bucket.last_used = bucket.last_used.max(now);
        bucket
    }
}

#[cfg(test)]
mod tests;
