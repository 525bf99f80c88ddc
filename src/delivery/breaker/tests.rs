//! Unit tests of the breakers: endpoint circuits, host holds, caps, forgetting.

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
