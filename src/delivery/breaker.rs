//! Isolation between destinations: a cap on concurrent requests per destination and a
//! circuit breaker, so one endpoint that hangs or fails cannot take the delivery capacity
//! other accounts need.
//!
//! A destination is where requests go: the host and port of a webhook or Discord URL, or the
//! provider (Slack, PagerDuty, the SMTP server). A delivery that is not let through is not
//! attempted: it moves to the next retry tier with the reason, like any failure that may
//! pass, so nothing waits while holding a delivery slot and nothing is lost.
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

    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }
}

struct Destination {
    permits: Arc<Semaphore>,
    breaker: Mutex<Breaker>,
}

/// Every destination's cap and circuit.
pub struct Destinations {
    cap: usize,
    threshold: u32,
    cooldown: Duration,
    all: Mutex<HashMap<String, Arc<Destination>>>,
}

/// Why a request was not let through.
#[derive(Debug, Clone, PartialEq)]
pub struct NotAdmitted {
    /// The metric label: `busy` or `circuit_open`.
    pub label: &'static str,
    /// What the delivery record and the logs say.
    pub reason: String,
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
        all.entry(key.to_owned())
            .or_insert_with(|| {
                Arc::new(Destination {
                    permits: Arc::new(Semaphore::new(self.cap)),
                    breaker: Mutex::default(),
                })
            })
            .clone()
    }

    /// Lets a request to `key` through, or says why not.
    pub async fn admit(&self, key: &str) -> Result<Ticket, NotAdmitted> {
        let destination = self.get(key);
        let waiting = destination.permits.clone().acquire_owned();
        let permit = match tokio::time::timeout(BUSY_WAIT, waiting).await {
            Ok(Ok(permit)) => permit,
            _ => {
                return Err(NotAdmitted {
                    label: "busy",
                    reason: format!(
                        "not attempted: {} requests to {key} are already in flight \
                         (delivery.max_in_flight_per_destination)",
                        self.cap
                    ),
                })
            }
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
            Admit::Skip => Err(NotAdmitted {
                label: "circuit_open",
                reason: format!(
                    "not attempted: the circuit to {key} is open after {} consecutive unanswered \
                     requests; a probe is let through every {:?}",
                    self.threshold, self.cooldown
                ),
            }),
        }
    }

    /// Records the outcome of a request let through; true when it opened the circuit.
    pub fn record(&self, ticket: Ticket, success: bool) -> bool {
        ticket
            .destination
            .breaker
            .lock()
            .expect("breaker lock")
            .record(success, self.threshold, self.cooldown, Instant::now())
    }

    /// How many destinations have an open circuit now.
    pub fn open(&self) -> usize {
        let all = self.all.lock().expect("destinations lock");
        all.values()
            .filter(|d| d.breaker.lock().expect("breaker lock").is_open())
            .count()
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
        assert_eq!(busy.label, "busy");
        assert!(busy.reason.contains("2 requests"), "{busy:?}");
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
}
