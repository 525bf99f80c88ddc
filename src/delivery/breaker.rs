//! Isolation between tenants' endpoints: a cap on concurrent requests per host, a circuit
//! breaker per endpoint, and a hold on a host that cannot be reached at all, so one endpoint
//! that hangs or fails cannot take the delivery capacity other accounts need, nor hold back
//! another tenant whose endpoint shares its host (CONTRACT §6, "One tenant's endpoint is its
//! own").
//!
//! A **host** is where requests go: the host and port of a webhook or Discord URL, or the
//! provider (Slack, PagerDuty, the SMTP server). An **endpoint** is one channel's own: its
//! URL (webhooks, Discord), its bucket (Slack: bot token and channel; PagerDuty: integration
//! key), or, for email, the channel. A delivery that is not let through is not attempted: it
//! waits in a retry tier with the reason (no retry used up), so nothing waits while holding a
//! delivery slot and nothing is lost. Hosts and endpoints nobody uses are forgotten, since
//! their keys come from users.
//! - **Busy** (per host): `max_in_flight_per_destination` requests to it are already in
//!   flight and none finished within [`BUSY_WAIT`]. This protects capacity, not correctness:
//!   a healthy host frees slots in milliseconds, so a burst waits briefly and goes through.
//! - **Open circuit** (per endpoint): its last `breaker_threshold` attempts all failed in a
//!   way that may pass (no answer, 5xx, 408). Its deliveries then wait instead of spending
//!   their attempts on an endpoint that is down: after `breaker_cooldown` one probe is let
//!   through; success (or an answer that will not change, like 4xx) closes the circuit, a
//!   failure opens it for another cooldown. A rate-limit answer is the bucket's business
//!   (`crate::pacing`), not the circuit's.
//! - **Unreachable host** (per host): its last `breaker_threshold` attempts, to any of its
//!   endpoints, could not reach it at all (connection refused, DNS failure, TLS handshake
//!   failure). A timeout says nothing of the host and counts for its endpoint only; any answer
//!   from the host releases the hold.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a delivery waits for a slot of a busy host before it moves on.
pub const BUSY_WAIT: Duration = Duration::from_millis(500);

/// The circuit of one endpoint, or the hold of one host.
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

    /// A probe let through here that was not made after all (another breaker said no): the
    /// next request may probe.
    fn unprobe(&mut self) {
        self.probing = false;
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

    /// An attempt that tells this breaker nothing (a timeout, for a host's hold): a probe it
    /// was keeps the hold for another cooldown; otherwise nothing changes.
    fn inconclusive(&mut self, cooldown: Duration, now: Instant) {
        if std::mem::take(&mut self.probing) {
            self.open_until = Some(now + cooldown);
        }
    }
}

/// A breaker and when it was last used: what is kept of a host's hold or an endpoint's circuit.
struct Circuit {
    breaker: Mutex<Breaker>,
    /// When its last request ended (or it was created): idle ones are forgotten.
    last_used: Mutex<Instant>,
}

impl Circuit {
    fn new(now: Instant) -> Self {
        Self {
            breaker: Mutex::default(),
            last_used: Mutex::new(now),
        }
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().expect("breaker lock")
    }

    /// Whether forgetting it loses nothing worth keeping: a closed breaker with no failure
    /// counted, or no use for [`FORGET_AFTER_COOLDOWNS`] cooldowns.
    fn forgettable(&self, now: Instant, cooldown: Duration) -> bool {
        let idle_for = now.saturating_duration_since(*self.last_used.lock().expect("circuit lock"));
        *self.breaker() == Breaker::default() || idle_for > cooldown * FORGET_AFTER_COOLDOWNS
    }
}

/// A host: its slots for requests in flight, and its hold when it cannot be reached.
struct Host {
    permits: Arc<Semaphore>,
    hold: Circuit,
}

/// An unused host or endpoint whose breaker has a count or is open is kept this many cooldowns.
const FORGET_AFTER_COOLDOWNS: u32 = 10;
/// A map of hosts or endpoints is swept for forgettable ones when it reaches twice the size it
/// had after the last sweep, and at least this size: the keys come from users.
const MIN_SWEEP: usize = 1024;

/// Hosts or endpoints by key, forgotten when idle.
struct Known<T> {
    by_key: HashMap<String, Arc<T>>,
    sweep_at: usize,
}

impl<T> Default for Known<T> {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
            sweep_at: 0,
        }
    }
}

impl<T> Known<T> {
    /// The one for `key`, made when new. Before a new one is added to a large map, the ones
    /// with no request in flight (the map holds the only reference) and a `forgettable`
    /// circuit are forgotten.
    fn get(
        &mut self,
        key: &str,
        make: impl FnOnce() -> T,
        forgettable: impl Fn(&T) -> bool,
    ) -> Arc<T> {
        if let Some(known) = self.by_key.get(key) {
            return known.clone();
        }
        if self.by_key.len() >= self.sweep_at.max(MIN_SWEEP) {
            self.by_key
                .retain(|_, t| Arc::strong_count(t) > 1 || !forgettable(t));
            self.sweep_at = self.by_key.len() * 2;
        }
        let made = Arc::new(make());
        self.by_key.insert(key.to_owned(), made.clone());
        made
    }
}

/// Every host's cap and hold, and every endpoint's circuit.
pub struct Destinations {
    cap: usize,
    threshold: u32,
    cooldown: Duration,
    hosts: Mutex<Known<Host>>,
    endpoints: Mutex<Known<Circuit>>,
}

/// Where one request goes, as the breakers see it: its host (`host:port`, or the provider)
/// and its endpoint's key (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub host: &'a str,
    pub endpoint: &'a str,
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
        "not attempted: the circuit of this channel's endpoint on {destination} is open after \
         {threshold} consecutive unanswered requests; a probe is let through every {cooldown:?}"
    )]
    CircuitOpen {
        destination: String,
        threshold: u32,
        cooldown: Duration,
    },
    #[error(
        "not attempted: {destination} could not be reached on its last {threshold} attempts \
         (connection refused, DNS or TLS failure); a probe is let through every {cooldown:?}"
    )]
    HostUnreachable {
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
            Skipped::HostUnreachable { .. } => "host_unreachable",
        }
    }
}

/// How a request let through ended, as the breakers count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The endpoint answered and the attempt is settled (delivered, or a failure that will
    /// not pass): the host's hold and the endpoint's circuit close.
    Answered,
    /// The endpoint answered with a failure that may pass (5xx, 408): counts against the
    /// endpoint; the host, which answered, is released.
    Failing,
    /// No answer in time, or the connection broke: counts against the endpoint only.
    NoAnswer,
    /// The host could not be reached at all: counts against the host and the endpoint.
    Unreachable,
    /// No request was made after all (a target the guard refused): nothing is learnt.
    Nothing,
}

/// What a failure opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// One endpoint's circuit: only that channel's deliveries wait.
    Endpoint,
    /// A host's hold: every endpoint of the host waits.
    Host,
}

/// A request let through: holds the host's slot until its outcome is recorded.
pub struct Ticket {
    host: Arc<Host>,
    endpoint: Arc<Circuit>,
    _permit: OwnedSemaphorePermit,
}

impl Destinations {
    pub fn new(cap: usize, threshold: u32, cooldown: Duration) -> Self {
        Self {
            cap,
            threshold,
            cooldown,
            hosts: Mutex::default(),
            endpoints: Mutex::default(),
        }
    }

    fn host(&self, key: &str, now: Instant) -> Arc<Host> {
        let make = || Host {
            permits: Arc::new(Semaphore::new(self.cap)),
            hold: Circuit::new(now),
        };
        let forgettable = |h: &Host| h.hold.forgettable(now, self.cooldown);
        let mut hosts = self.hosts.lock().expect("hosts lock");
        hosts.get(key, make, forgettable)
    }

    fn endpoint(&self, key: &str, now: Instant) -> Arc<Circuit> {
        let forgettable = |c: &Circuit| c.forgettable(now, self.cooldown);
        let mut endpoints = self.endpoints.lock().expect("endpoints lock");
        endpoints.get(key, || Circuit::new(now), forgettable)
    }

    /// Lets a request to `target` through, or says why not.
    pub async fn admit(&self, target: Target<'_>) -> Result<Ticket, Skipped> {
        let host = self.host(target.host, Instant::now());
        let waiting = host.permits.clone().acquire_owned();
        let Ok(Ok(permit)) = tokio::time::timeout(BUSY_WAIT, waiting).await else {
            return Err(Skipped::Busy {
                destination: target.host.to_owned(),
                cap: self.cap,
            });
        };
        let now = Instant::now();
        let endpoint = self.endpoint(target.endpoint, now);
        let held = host.hold.breaker().admit(now);
        let open = endpoint.breaker().admit(now);
        let (destination, threshold, cooldown) =
            (target.host.to_owned(), self.threshold, self.cooldown);
        match (held, open) {
            (Admit::Skip, open) => {
                if open == Admit::Probe {
                    endpoint.breaker().unprobe();
                }
                Err(Skipped::HostUnreachable {
                    destination,
                    threshold,
                    cooldown,
                })
            }
            (held, Admit::Skip) => {
                if held == Admit::Probe {
                    host.hold.breaker().unprobe();
                }
                Err(Skipped::CircuitOpen {
                    destination,
                    threshold,
                    cooldown,
                })
            }
            _ => Ok(Ticket {
                host,
                endpoint,
                _permit: permit,
            }),
        }
    }

    /// Records how a request let through ended; what it opened, if anything.
    pub fn record(&self, ticket: Ticket, reach: Reach) -> Option<Opened> {
        let now = Instant::now();
        for circuit in [&ticket.host.hold, &*ticket.endpoint] {
            *circuit.last_used.lock().expect("circuit lock") = now;
        }
        let (threshold, cooldown) = (self.threshold, self.cooldown);
        let mut hold = ticket.host.hold.breaker();
        let mut circuit = ticket.endpoint.breaker();
        let (host_opened, endpoint_opened) = match reach {
            Reach::Answered => (
                hold.record(true, threshold, cooldown, now),
                circuit.record(true, threshold, cooldown, now),
            ),
            Reach::Failing => (
                hold.record(true, threshold, cooldown, now),
                circuit.record(false, threshold, cooldown, now),
            ),
            Reach::Unreachable => (
                hold.record(false, threshold, cooldown, now),
                circuit.record(false, threshold, cooldown, now),
            ),
            Reach::NoAnswer => {
                hold.inconclusive(cooldown, now);
                (false, circuit.record(false, threshold, cooldown, now))
            }
            Reach::Nothing => {
                hold.unprobe();
                circuit.unprobe();
                (false, false)
            }
        };
        match (host_opened, endpoint_opened) {
            (true, _) => Some(Opened::Host),
            (false, true) => Some(Opened::Endpoint),
            (false, false) => None,
        }
    }

    #[cfg(test)]
    fn known(&self) -> (usize, usize) {
        let hosts = self.hosts.lock().expect("hosts lock").by_key.len();
        let endpoints = self.endpoints.lock().expect("endpoints lock").by_key.len();
        (hosts, endpoints)
    }
}

#[cfg(test)]
mod tests;
