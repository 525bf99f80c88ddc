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

    const HOST: &str = "hooks.example.com:443";

    fn at(endpoint: &str) -> Target<'_> {
        Target {
            host: HOST,
            endpoint,
        }
    }

    #[tokio::test]
    async fn one_endpoints_timeouts_open_its_circuit_only() {
        let d = Destinations::new(8, 2, Duration::from_secs(30));
        for _ in 0..2 {
            let ticket = d.admit(at("acc-1/hook")).await.unwrap();
            d.record(ticket, Reach::NoAnswer);
        }
        let skipped = d.admit(at("acc-1/hook")).await.err();
        assert!(
            matches!(skipped, Some(Skipped::CircuitOpen { .. })),
            "{skipped:?}"
        );
        let other = d.admit(at("acc-2/hook")).await;
        assert!(
            other.is_ok(),
            "another tenant's endpoint on the same host is let through"
        );
        let text = skipped.unwrap().to_string();
        assert!(
            text.contains("this channel's endpoint on hooks.example.com:443"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_host_holds_its_endpoints_until_it_answers() {
        let d = Destinations::new(8, 2, Duration::ZERO);
        let a = d.admit(at("acc-1/hook")).await.unwrap();
        assert_eq!(d.record(a, Reach::Unreachable), None);
        let b = d.admit(at("acc-2/hook")).await.unwrap();
        assert_eq!(
            d.record(b, Reach::Unreachable),
            Some(Opened::Host),
            "refusals on two endpoints: the host itself is down"
        );
        // The cooldown is zero: the next request is the host's probe, the rest wait.
        let probe = d.admit(at("acc-3/hook")).await.unwrap();
        let held = d.admit(at("acc-4/hook")).await.err();
        assert!(
            matches!(held, Some(Skipped::HostUnreachable { .. })),
            "{held:?}"
        );
        assert_eq!(d.record(probe, Reach::Answered), None);
        assert!(
            d.admit(at("acc-4/hook")).await.is_ok(),
            "any answer from the host releases it"
        );
    }

    #[tokio::test]
    async fn an_endpoint_answering_5xx_opens_its_circuit_and_releases_its_host() {
        let d = Destinations::new(8, 2, Duration::ZERO);
        let refused = d.admit(at("acc-1/hook")).await.unwrap();
        d.record(refused, Reach::Unreachable);
        for _ in 0..2 {
            let ticket = d.admit(at("acc-2/hook")).await.unwrap();
            d.record(ticket, Reach::Failing);
        }
        let probe = d
            .admit(at("acc-2/hook"))
            .await
            .expect("cooldown zero: the probe of its circuit goes");
        assert_eq!(
            d.record(probe, Reach::Failing),
            Some(Opened::Endpoint),
            "a failed probe opens it again"
        );
        let other = d.admit(at("acc-3/hook")).await.unwrap();
        assert_eq!(
            d.record(other, Reach::Unreachable),
            None,
            "the 503s showed the host up: the count started over"
        );
    }

    #[tokio::test]
    async fn a_timeout_says_nothing_of_the_host() {
        let d = Destinations::new(8, 1, Duration::from_secs(30));
        for n in 0..5 {
            let ticket = d.admit(at(&format!("acc-{n}/hook"))).await.unwrap();
            assert_eq!(d.record(ticket, Reach::NoAnswer), Some(Opened::Endpoint));
        }
        assert!(
            d.admit(at("acc-9/hook")).await.is_ok(),
            "five endpoints timing out hold no sixth"
        );
    }

    #[tokio::test]
    async fn a_probe_one_breaker_gave_and_the_other_refused_is_given_back() {
        let d = Destinations::new(8, 1, Duration::ZERO);
        let down = d.admit(at("acc-1/hook")).await.unwrap();
        assert_eq!(d.record(down, Reach::Unreachable), Some(Opened::Host));
        // An endpoint whose own probe is in flight, through another host.
        let elsewhere = Target {
            host: "other.example.com:443",
            endpoint: "acc-2/hook",
        };
        let timed_out = d.admit(elsewhere).await.unwrap();
        assert_eq!(d.record(timed_out, Reach::NoAnswer), Some(Opened::Endpoint));
        let _probing = d.admit(elsewhere).await.unwrap();
        // The held host offers its probe to that endpoint, which refuses (one probe at a
        // time): the host's probe goes to the next request instead of being lost.
        let refused = d.admit(at("acc-2/hook")).await.err();
        assert!(
            matches!(refused, Some(Skipped::CircuitOpen { .. })),
            "{refused:?}"
        );
        assert!(
            d.admit(at("acc-3/hook")).await.is_ok(),
            "the host's probe was given back"
        );
    }

    #[tokio::test]
    async fn a_busy_host_waits_briefly_then_moves_on() {
        let d = Arc::new(Destinations::new(2, 5, Duration::from_secs(1)));
        let a = d.admit(at("a")).await.unwrap();
        let _b = d.admit(at("b")).await.unwrap();
        let started = Instant::now();
        let busy = d.admit(at("c")).await.err().unwrap();
        assert_eq!(busy.label(), "busy");
        assert!(busy.to_string().contains("2 requests"), "{busy}");
        assert!(started.elapsed() >= BUSY_WAIT);
        let elsewhere = Target {
            host: "other.example.com:443",
            endpoint: "c",
        };
        assert!(d.admit(elsewhere).await.is_ok(), "other hosts flow");
        // A slot freed while a delivery waits lets it through.
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.admit(at("c")).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        d.record(a, Reach::Answered);
        assert!(waiter.await.unwrap(), "a finished request frees its slot");
    }

    #[tokio::test]
    async fn idle_hosts_and_endpoints_are_forgotten() {
        let d = Destinations::new(2, 1, Duration::from_secs(30));
        let down = Target {
            host: "down.example.com:443",
            endpoint: "down",
        };
        let failing = d.admit(down).await.unwrap();
        assert_eq!(d.record(failing, Reach::NoAnswer), Some(Opened::Endpoint));
        let slow = Target {
            host: "slow.example.com:443",
            endpoint: "slow",
        };
        let in_flight = d.admit(slow).await.unwrap();
        for n in 0..10_000 {
            let host = format!("host{n}.example.com:443");
            let endpoint = format!("endpoint{n}");
            let ticket = d
                .admit(Target {
                    host: &host,
                    endpoint: &endpoint,
                })
                .await
                .unwrap();
            d.record(ticket, Reach::Answered);
        }
        let (hosts, endpoints) = d.known();
        assert!(
            hosts <= 2 * MIN_SWEEP && endpoints <= 2 * MIN_SWEEP,
            "{hosts} hosts and {endpoints} endpoints remembered after 10,000 distinct ones"
        );
        let skipped = d.admit(down).await.err();
        assert!(
            matches!(skipped, Some(Skipped::CircuitOpen { .. })),
            "an open circuit is not forgotten while it matters"
        );
        let _second = d.admit(slow).await.unwrap();
        assert!(
            matches!(d.admit(slow).await, Err(Skipped::Busy { .. })),
            "a host with a request in flight keeps its slots"
        );
        drop(in_flight);
    }
}
