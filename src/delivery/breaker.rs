//! Isolation between destinations: a cap on concurrent requests per destination and a
//! circuit breaker, so one endpoint that hangs or fails cannot take the delivery capacity
//! other accounts need.
//!
//! A destination is where requests go: the host and port of a webhook or Discord URL, or the
//! provider (Slack, PagerDuty, the SMTP server). A delivery that is not let through is not
//! attempted: it moves to the next retry tier with the reason, like any failure that may
//! pass (without using up a retry), so nothing waits while holding a delivery slot and
//! nothing is lost. Destinations nobody uses are forgotten, since their keys come from users.
//! - **Busy**: `max_in_flight_per_destination` requests to it are already in flight and none
//!   finished within [`BUSY_WAIT`]. A healthy destination frees slots in milliseconds, so a
//!   burst waits briefly and goes through; a hanging one holds them until its timeouts trip
//!   the breaker, and meanwhile its deliveries move on instead of holding delivery slots.
//! - **Open circuit**: its last `breaker_threshold` attempts all went unanswered (timeout,
//!   connection error, TLS failure). After `breaker_cooldown` one probe is let through; an
//!   answer closes the circuit, no answer opens it for another cooldown. Any HTTP answer,
//!   5xx and 429 included, shows the destination is up and responsive: those failures are
//!   retried through the tiers as usual without tripping the breaker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a delivery waits for a slot of a busy destination before it moves on.
pub const BUSY_WAIT: Duration = Duration::from_millis(500);

/// The circuit of one destination.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

/// What the breaker lets happen now.
#[derive(Debug, Clone, PartialEq)]
pub enum Admit {
    Go,
    /// The one request after the cooldown; its outcome decides.
    Probe,
    Skip,
}

impl Breaker {
    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.open_until {
            None => Admit::Go,
            Some(until) if now < until || self.probing => Admit::Skip,
            Some(_) => {
                self.probing = true;
                Admit::Probe
            }
        }
    }

    /// Records an attempt's result; true when this opened (or re-opened) the circuit.
    pub fn record(
        &mut self,
        success: bool,
        threshold: u32,
        cooldown: Duration,
        now: Instant,
    ) -> bool {
        let was_probe = std::mem::take(&mut self.probing);
        if success {
            *self = Breaker::default();
            return false;
        }
        self.consecutive_failures += 1;
        if was_probe || (self.open_until.is_none() && self.consecutive_failures >= threshold) {
            self.open_until = Some(now + cooldown);
            return true;
        }
        false
    }
}

struct Destination {
    permits: Arc<Semaphore>,
    breaker: Mutex<Breaker>,
    /// When its last request ended (or it was created): idle destinations are forgotten.
    last_used: Mutex<Instant>,
}

impl Destination {
    /// Whether forgetting it loses nothing worth keeping: no request in flight (the map holds
    /// the only reference), and a closed circuit with no failure counted, or no use for
    /// [`FORGET_AFTER_COOLDOWNS`] cooldowns.
    fn forgettable(self: &Arc<Self>, now: Instant, cooldown: Duration) -> bool {
        let idle_for =
            now.saturating_duration_since(*self.last_used.lock().expect("destination lock"));
        Arc::strong_count(self) == 1
            && (*self.breaker.lock().expect("breaker lock") == Breaker::default()
                || idle_for > cooldown * FORGET_AFTER_COOLDOWNS)
    }
}

/// An unused destination whose circuit has a count or is open is kept this many cooldowns.
const FORGET_AFTER_COOLDOWNS: u32 = 10;
/// The map of destinations is swept for forgettable ones when it reaches twice the size it had
/// after the last sweep, and at least this size: the keys are user-supplied host:port pairs.
const MIN_SWEEP: usize = 1024;

/// Every destination's cap and circuit.
pub struct Destinations {
    cap: usize,
    threshold: u32,
    cooldown: Duration,
    all: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    by_key: HashMap<String, Arc<Destination>>,
    sweep_at: usize,
}

/// Why a request was not let through: the delivery is skipped, not attempted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Skipped {
    #[error(
        "not attempted: {cap} requests to {destination} are already in flight \
         (delivery.max_in_flight_per_destination)"
    )]
    Busy { destination: String, cap: usize },
    #[error(
        "not attempted: the circuit to {destination} is open after {threshold} consecutive \
         unanswered requests; a probe is let through every {cooldown:?}"
    )]
    CircuitOpen {
        destination: String,
        threshold: u32,
        cooldown: Duration,
    },
}

impl Skipped {
    /// The `reason` label of `sysmos_notify_not_attempted_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Skipped::Busy { .. } => "busy",
            Skipped::CircuitOpen { .. } => "circuit_open",
        }
    }
}

/// A request let through: holds the destination's slot until its outcome is recorded.
pub struct Ticket {
    destination: Arc<Destination>,
    _permit: OwnedSemaphorePermit,
}

impl Destinations {
    pub fn new(cap: usize, threshold: u32, cooldown: Duration) -> Self {
        Self {
            cap,
            threshold,
            cooldown,
            all: Mutex::default(),
        }
    }

    fn get(&self, key: &str) -> Arc<Destination> {
        let mut all = self.all.lock().expect("destinations lock");
        if let Some(known) = all.by_key.get(key) {
            return known.clone();
        }
        let now = Instant::now();
        if all.by_key.len() >= all.sweep_at.max(MIN_SWEEP) {
            all.by_key.retain(|_, d| !d.forgettable(now, self.cooldown));
            all.sweep_at = all.by_key.len() * 2;
        }
        let destination = Arc::new(Destination {
            permits: Arc::new(Semaphore::new(self.cap)),
            breaker: Mutex::default(),
            last_used: Mutex::new(now),
        });
        all.by_key.insert(key.to_owned(), destination.clone());
        destination
    }

    /// Lets a request to `key` through, or says why not.
    pub async fn admit(&self, key: &str) -> Result<Ticket, Skipped> {
        let destination = self.get(key);
        let waiting = destination.permits.clone().acquire_owned();
        let Ok(Ok(permit)) = tokio::time::timeout(BUSY_WAIT, waiting).await else {
            return Err(Skipped::Busy {
                destination: key.to_owned(),
                cap: self.cap,
            });
        };
        let admitted = destination
            .breaker
            .lock()
            .expect("breaker lock")
            .admit(Instant::now());
        match admitted {
            Admit::Go | Admit::Probe => Ok(Ticket {
                destination,
                _permit: permit,
            }),
            Admit::Skip => Err(Skipped::CircuitOpen {
                destination: key.to_owned(),
                threshold: self.threshold,
                cooldown: self.cooldown,
            }),
        }
    }

    /// Records the outcome of a request let through; true when it opened the circuit.
    pub fn record(&self, ticket: Ticket, success: bool) -> bool {
        let now = Instant::now();
        *ticket
            .destination
            .last_used
            .lock()
            .expect("destination lock") = now;
        ticket
            .destination
            .breaker
            .lock()
            .expect("breaker lock")
            .record(success, self.threshold, self.cooldown, now)
    }

    #[cfg(test)]
    fn known(&self) -> usize {
        self.all.lock().expect("destinations lock").by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_closes_on_a_successful_probe() {
        let (threshold, cooldown) = (3, Duration::from_secs(30));
        let t0 = Instant::now();
        let mut b = Breaker::default();
        for _ in 0..2 {
            assert_eq!(b.admit(t0), Admit::Go);
            assert!(!b.record(false, threshold, cooldown, t0));
        }
        assert!(
            b.record(false, threshold, cooldown, t0),
            "the third failure opens it"
        );
        assert_eq!(b.admit(t0 + Duration::from_secs(29)), Admit::Skip);
        let later = t0 + Duration::from_secs(31);
        assert_eq!(b.admit(later), Admit::Probe);
        assert_eq!(b.admit(later), Admit::Skip, "one probe at a time");
        assert!(
            b.record(false, threshold, cooldown, later),
            "a failed probe re-opens it"
        );
        assert_eq!(b.admit(later + Duration::from_secs(1)), Admit::Skip);
        let again = later + Duration::from_secs(31);
        assert_eq!(b.admit(again), Admit::Probe);
        assert!(!b.record(true, threshold, cooldown, again));
        assert_eq!(b, Breaker::default(), "a successful probe closes it");
        assert!(
            !b.record(false, threshold, cooldown, again),
            "counting starts over"
        );
    }

    #[test]
    fn a_success_between_failures_resets_the_count() {
        let (threshold, cooldown, now) = (2, Duration::from_secs(1), Instant::now());
        let mut b = Breaker::default();
        assert!(!b.record(false, threshold, cooldown, now));
        assert!(!b.record(true, threshold, cooldown, now));
        assert!(!b.record(false, threshold, cooldown, now));
        assert!(b.record(false, threshold, cooldown, now));
    }

    #[tokio::test]
    async fn a_busy_destination_waits_briefly_then_moves_on() {
        let d = Arc::new(Destinations::new(2, 5, Duration::from_secs(1)));
        let a = d.admit("hooks.example.com:443").await.unwrap();
        let _b = d.admit("hooks.example.com:443").await.unwrap();
        let started = Instant::now();
        let busy = d.admit("hooks.example.com:443").await.err().unwrap();
        assert_eq!(busy.label(), "busy");
        assert!(busy.to_string().contains("2 requests"), "{busy}");
        assert!(started.elapsed() >= BUSY_WAIT);
        assert!(
            d.admit("other.example.com:443").await.is_ok(),
            "other destinations flow"
        );
        // A slot freed while a delivery waits lets it through.
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.admit("hooks.example.com:443").await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        d.record(a, true);
        assert!(waiter.await.unwrap(), "a finished request frees its slot");
    }

    #[tokio::test]
    async fn idle_destinations_are_forgotten() {
        let d = Destinations::new(2, 1, Duration::from_secs(30));
        let failing = d.admit("down.example.com:443").await.unwrap();
        assert!(d.record(failing, false), "its circuit opens");
        let in_flight = d.admit("slow.example.com:443").await.unwrap();
        for n in 0..10_000 {
            let ticket = d.admit(&format!("host{n}.example.com:443")).await.unwrap();
            d.record(ticket, true);
        }
        assert!(
            d.known() <= 2 * MIN_SWEEP,
            "{} destinations remembered after 10,000 distinct ones",
            d.known()
        );
        let skipped = d.admit("down.example.com:443").await.err();
        assert!(
            matches!(skipped, Some(Skipped::CircuitOpen { .. })),
            "an open circuit is not forgotten while it matters"
        );
        let _second = d.admit("slow.example.com:443").await.unwrap();
        assert!(
            matches!(
                d.admit("slow.example.com:443").await,
                Err(Skipped::Busy { .. })
            ),
            "a destination with a request in flight keeps its slots"
        );
        drop(in_flight);
    }
}
