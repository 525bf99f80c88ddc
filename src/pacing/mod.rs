//! Provider rate limits (CONTRACT §5a). Every delivery belongs to one or more **buckets** —
//! a Slack channel (bot token + channel), a Discord webhook, a PagerDuty integration key, an
//! email recipient, a webhook channel — and a request is made only when each of its buckets
//! has a turn: requests to a bucket never exceed its pace. A provider that answers "too many"
//! holds the bucket (or, for Discord's global limit and an SMTP server's 421/454, the whole
//! provider) for as long as it asked, and nothing else waits.
//!
//! Buckets are keyed by a hash of the credential: no token is kept in a key, a log or a metric.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, RateLimiter};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

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

fn hashed(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(&hash.finalize()[..16])
}

struct Bucket {
    /// Deliveries waiting for a turn line up here, first come first served.
    line: Arc<Semaphore>,
    /// How many are in line.
    queued: usize,
    limiter: Option<DefaultDirectRateLimiter>,
    /// What the limiter was built for: a changed webhook `rate` builds it again.
    pace: Option<Pace>,
    held_until: Option<Instant>,
    /// Turns booked by deliveries parked in the retry tiers run to here.
    booked_until: Option<Instant>,
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
    /// Takes a turn in every bucket of `needs`, or says how long to wait before asking again.
    /// A held bucket or provider costs no turn; a turn taken in one bucket while another has
    /// none is not given back (the pace is never exceeded, at worst slowed).
    pub fn take(&self, needs: &[Need], now: Instant) -> Result<(), Duration> {
        self.state.lock().expect("pacer lock").take(needs, now)
    }

    /// A turn now, if nobody is in line for these buckets and each has one; else how long a
    /// newcomer would wait.
    pub fn try_take(&self, needs: &[Need], now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().expect("pacer lock");
        if needs.iter().any(|n| state.bucket(n, now).queued > 0) {
            return Err(state.estimate_all(needs, now));
        }
        match state.take(needs, now) {
            Ok(()) => Ok(()),
            Err(wait) => Err(wait.max(state.estimate_all(needs, now))),
        }
    }

    /// Waits in line (first come, first served in each bucket) for a turn in every bucket of
    /// `needs`. It does not wait, and returns how long it estimates, when a bucket is held
    /// longer than `patience` or already has [`LINE`] deliveries in line: the caller then
    /// parks the delivery in a retry tier.
    pub async fn turn(&self, needs: &[Need], patience: Duration) -> Result<(), Duration> {
        let now = Instant::now();
        let Err(wait) = self.try_take(needs, now) else {
            return Ok(());
        };
        let lines = {
            let mut state = self.state.lock().expect("pacer lock");
            let refused = needs.iter().any(|n| {
                state.held(n, now) > patience
                    || state.buckets.get(&n.key).is_some_and(|b| b.queued >= LINE)
            });
            if refused {
                return Err(wait);
            }
            let mut keys: Vec<&BucketKey> = needs.iter().map(|n| &n.key).collect();
            keys.sort_by(|a, b| a.id.cmp(&b.id));
            keys.dedup();
            keys.into_iter()
                .map(|key| {
                    let bucket = state.buckets.get_mut(key).expect("created by try_take");
                    bucket.queued += 1;
                    (key.clone(), bucket.line.clone())
                })
                .collect::<Vec<_>>()
        };
        let _in_line = InLine {
            pacer: self,
            keys: lines.iter().map(|(k, _)| k.clone()).collect(),
        };
        // Acquired in key order, so two deliveries needing the same buckets cannot deadlock.
        let mut permits = Vec::with_capacity(lines.len());
        for (_, line) in &lines {
            permits.push(line.clone().acquire_owned().await.expect("never closed"));
        }
        loop {
            match self.take(needs, Instant::now()) {
                Ok(()) => return Ok(()),
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Books a turn for a delivery that will wait in a retry tier, after every turn booked
    /// before and after the line and the hold now: parked deliveries then come back one by
    /// one, each near its turn, instead of all at once. Returns how long until the turn; a
    /// turn further away than `within` is not booked, and its distance is the error.
    pub fn book(
        &self,
        needs: &[Need],
        now: Instant,
        within: Duration,
    ) -> Result<Duration, Duration> {
        let mut state = self.state.lock().expect("pacer lock");
        let mut turns = Vec::with_capacity(needs.len());
        for need in needs {
            let start = now + state.estimate(need, now);
            let bucket = state.bucket(need, now);
            let turn = match need.pace {
                None => start,
                Some(pace) => {
                    let interval = pace.rate.per / pace.rate.count.get();
                    bucket
                        .booked_until
                        .map_or(start, |booked| booked.max(start))
                        + interval
                }
            };
            turns.push(turn);
        }
        let latest = turns.iter().copied().max().unwrap_or(now) - now;
        if latest > within {
            return Err(latest);
        }
        for (need, turn) in needs.iter().zip(turns) {
            if need.pace.is_some() {
                state.bucket(need, now).booked_until = Some(turn);
            }
        }
        Ok(latest)
    }

    /// Holds one bucket until `until` (a rate-limit answer, or a provider saying its next
    /// request must wait).
    pub fn hold(&self, key: &BucketKey, until: Instant) {
        let mut state = self.state.lock().expect("pacer lock");
        if let Some(bucket) = state.buckets.get_mut(key) {
            bucket.held_until = bucket.held_until.max(Some(until));
        }
    }

    /// Holds every bucket of `provider` until `until` (Discord's global limit, an SMTP
    /// server's 421 or 454).
    pub fn hold_provider(&self, provider: Provider, until: Instant) {
        let mut state = self.state.lock().expect("pacer lock");
        let held = state.providers.entry(provider).or_insert(until);
        *held = (*held).max(until);
    }
}

/// Leaves the lines when the turn is taken, or the wait abandoned (shutdown, revocation).
struct InLine<'a> {
    pacer: &'a Pacer,
    keys: Vec<BucketKey>,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        let mut state = self.pacer.state.lock().expect("pacer lock");
        for key in &self.keys {
            if let Some(bucket) = state.buckets.get_mut(key) {
                bucket.queued = bucket.queued.saturating_sub(1);
            }
        }
    }
}

impl State {
    fn take(&mut self, needs: &[Need], now: Instant) -> Result<(), Duration> {
        let held = needs
            .iter()
            .map(|n| self.held(n, now))
            .max()
            .unwrap_or_default();
        if !held.is_zero() {
            return Err(held);
        }
        let mut wait = Duration::ZERO;
        for need in needs {
            if let Some(limiter) = &self.bucket(need, now).limiter {
                if let Err(not_until) = limiter.check() {
                    wait = wait.max(not_until.wait_time_from(now));
                }
            }
        }
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait)
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

    fn estimate_all(&mut self, needs: &[Need], now: Instant) -> Duration {
        needs
            .iter()
            .map(|n| self.estimate(n, now))
            .max()
            .unwrap_or_default()
    }

    /// How long a newcomer would wait for a turn in `need`'s bucket at least: the hold, then
    /// the line ahead of it at the bucket's pace.
    fn estimate(&mut self, need: &Need, now: Instant) -> Duration {
        let held = self.held(need, now);
        let bucket = self.bucket(need, now);
        let paced = need.pace.map_or(Duration::ZERO, |pace| {
            let interval = pace.rate.per / pace.rate.count.get();
            interval * bucket.queued as u32
        });
        held + paced
    }

    fn bucket(&mut self, need: &Need, now: Instant) -> &mut Bucket {
        if !self.buckets.contains_key(&need.key)
            && self.buckets.len() >= self.sweep_at.max(MIN_SWEEP)
        {
            self.buckets.retain(|_, b| {
                b.queued > 0
                    || now.saturating_duration_since(b.last_used) < IDLE
                    || b.held_until
                        .max(b.booked_until)
                        .is_some_and(|until| until > now)
            });
            self.sweep_at = self.buckets.len() * 2;
        }
        let bucket = self
            .buckets
            .entry(need.key.clone())
            .or_insert_with(|| Bucket {
                line: Arc::new(Semaphore::new(1)),
                queued: 0,
                limiter: None,
                pace: None,
                held_until: None,
                booked_until: None,
                last_used: now,
            });
        if bucket.pace != need.pace || (bucket.limiter.is_none() && need.pace.is_some()) {
            bucket.limiter = need
                .pace
                .map(|p| RateLimiter::direct(p.rate.quota(p.burst)));
            bucket.pace = need.pace;
        }
        bucket.last_used = now;
        bucket
    }
}

#[cfg(test)]
mod tests;
