//! Isolation between destinations (issue 5 §4): an endpoint that hangs until the timeout
//! does not slow other accounts' deliveries, and its own deliveries are not lost.

use std::time::{Duration, Instant};

use crate::common::receiver::Receiver;
use crate::common::scenario::*;
use crate::common::{until, Service, Setup};

/// The stated bound: other accounts' deliveries arrive within this of being produced, while
/// a hanging destination has 40 deliveries queued ahead of them.
const BOUND: Duration = Duration::from_secs(6);

async fn isolation_setup(name: &str, per_destination: usize, threshold: u32) -> Setup {
    let mut setup = Setup::new(name, &["1s", "1s", "1s"]).await;
    // 8 delivery slots; the request timeout is 3 s.
    setup.delivery = format!(
        "max_in_flight = 8\nmax_in_flight_per_destination = {per_destination}\n\
         breaker_threshold = {threshold}\nbreaker_cooldown = \"2s\""
    );
    setup.write_config();
    setup
}

/// Produces 40 events for the hanging account, then 20 for the healthy one, and returns the
/// running service and the time the healthy account's deliveries took to arrive.
async fn healthy_delay(setup: &Setup, hang: &Receiver, fast: &Receiver) -> (Service, Duration) {
    setup.create_service_topics().await;
    setup
        .put_settings("slow", &settings("slow", 1, vec![hook("hook", &hang.url)]))
        .await;
    setup
        .put_settings("fast", &settings("fast", 1, vec![hook("hook", &fast.url)]))
        .await;
    let mut service = setup.start();
    service.wait_ready().await;
    for i in 0..40 {
        setup
            .send_event(&seed_event(&format!("evt_s{i}"), "slow"))
            .await;
    }
    let started = Instant::now();
    for i in 0..20 {
        setup
            .send_event(&seed_event(&format!("evt_f{i}"), "fast"))
            .await;
    }
    let deadline = BOUND * 5;
    while fast.count() < 20 && started.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (service, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_destination_does_not_slow_other_accounts() {
    let hang = Receiver::start().await;
    hang.delay(Duration::from_secs(30)); // every request ends at the 3 s timeout
    let fast = Receiver::start().await;
    let setup = isolation_setup("isolation", 2, 3).await;
    let (_service, took) = healthy_delay(&setup, &hang, &fast).await;
    println!(
        "healthy deliveries took {took:?}; the hanging endpoint saw {} requests",
        hang.count()
    );
    assert_eq!(fast.count(), 20);
    assert!(
        took < BOUND,
        "healthy deliveries took {took:?}, bound {BOUND:?}"
    );
    // The hanging endpoint saw a few requests (the cap, then probes), not 40 at once.
    assert!(
        hang.count() <= 8,
        "{} requests reached the hanging endpoint",
        hang.count()
    );
    // Nothing lost: each of its deliveries went through the tiers to the DLQ, with the reason.
    let letters = dead_letters(&setup, 40).await;
    let slow: Vec<_> = letters
        .iter()
        .filter(|l| l["delivery"]["account_id"] == "slow")
        .collect();
    assert_eq!(slow.len(), 40);
    assert!(slow.iter().any(|l| l["reason"]
        .as_str()
        .unwrap()
        .contains("circuit to 127.0.0.1")));
    // Skips are recorded as skips: every attempt a dead letter lists is a request the
    // endpoint received, and the deliveries the circuit held back say how often.
    let attempts: usize = slow
        .iter()
        .map(|l| l["delivery"]["attempts"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        attempts,
        hang.count(),
        "one recorded attempt per request made"
    );
    assert!(slow
        .iter()
        .any(|l| l["delivery"]["skips"].as_u64().unwrap_or(0) > 0));
    let fast_letters = letters
        .iter()
        .filter(|l| l["delivery"]["account_id"] == "fast");
    assert_eq!(fast_letters.count(), 0);
    until(WAIT, "all healthy deliveries counted", || async {
        (fast.count() == 20).then_some(())
    })
    .await;
}
