//! One tenant's endpoint is its own (CONTRACT §6): accounts whose webhooks share one host,
//! one of them hanging until the timeout. The others' alerts go out on their first attempt,
//! waiting for nothing; the hanging account's deliveries get their own retries, and wait
//! (no retry used up) while its endpoint's circuit is open.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::receiver::{Receiver, Reply};
use crate::common::scenario::*;
use crate::common::{read_all, until, Setup};

/// The stated bound: the healthy accounts' alerts arrive within this of being produced,
/// while the hanging account has 5 deliveries ahead of them on the same host.
const BOUND: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_hanging_endpoint_holds_back_only_itself() {
    let host = Receiver::start().await;
    // acc0's path hangs past the 3 s request timeout; every other path answers at once.
    host.respond_by(Arc::new(|request| {
        if request.path.starts_with("/acc0") {
            Reply::status(200).after(Duration::from_secs(30))
        } else {
            Reply::status(200)
        }
    }));
    let mut setup = Setup::new("tenants", &["1s", "1s", "1s"]).await;
    setup.delivery = "max_in_flight = 16\nmax_in_flight_per_destination = 16\n\
                      breaker_threshold = 3\nbreaker_cooldown = \"2s\"\nmax_pending = \"10s\""
        .to_owned();
    setup.write_config();
    setup.create_service_topics().await;
    for n in 0..10 {
        let account = format!("acc{n}");
        let url = format!("{}/acc{n}", host.base);
        setup
            .put_settings(&account, &settings(&account, 1, vec![hook("hook", &url)]))
            .await;
    }
    let mut service = setup.start();
    service.wait_ready().await;
    for i in 0..5 {
        setup
            .send_event(&seed_event(&format!("evt_h{i}"), "acc0"))
            .await;
    }
    let started = Instant::now();
    for n in 1..10 {
        for i in 0..5 {
            let event = seed_event(&format!("evt_{n}_{i}"), &format!("acc{n}"));
            setup.send_event(&event).await;
        }
    }
    let healthy = || {
        host.requests()
            .into_iter()
            .filter(|r| !r.path.starts_with("/acc0"))
            .collect::<Vec<_>>()
    };
    until(BOUND * 5, "the healthy accounts' 45 alerts", || async {
        (healthy().len() >= 45).then_some(())
    })
    .await;
    let took = started.elapsed();
    println!("the healthy accounts' alerts took {took:?}");
    assert!(took < BOUND, "took {took:?}, bound {BOUND:?}");
    let mut ids: Vec<String> = healthy()
        .iter()
        .map(|r| r.headers["webhook-id"].clone())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        45,
        "each healthy alert once, on its first attempt"
    );

    // The hanging account's deliveries: their own retries, then the DLQ with the reason.
    let letters = dead_letters(&setup, 5).await;
    let reasons: Vec<&str> = letters
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    println!("acc0's dead letters: {reasons:?}");
    assert!(
        letters
            .iter()
            .all(|l| l["delivery"]["account_id"] == "acc0"),
        "only the hanging account's deliveries are dead-lettered"
    );
    for letter in &letters {
        let reason = letter["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("failed 4 attempts: timed out")
                || (reason.starts_with("waited 10s for the circuit of this channel's endpoint")),
            "{reason}"
        );
        let attempts = letter["delivery"]["attempts"].as_array().unwrap();
        assert!(!attempts.is_empty(), "every delivery was attempted");
        assert!(
            attempts.iter().all(|a| a["no_answer"] == Value::Bool(true)),
            "{attempts:?}"
        );
        assert_eq!(
            letter["may_have_arrived"],
            Value::Bool(true),
            "its last attempt timed out"
        );
    }
    let attempts: usize = letters
        .iter()
        .map(|l| l["delivery"]["attempts"].as_array().unwrap().len())
        .sum();
    let hanging = host
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/acc0"))
        .count();
    assert_eq!(attempts, hanging, "one recorded attempt per request made");
    assert!(hanging > 5, "retried: {hanging} requests for 5 alerts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_down_for_a_while_dead_letters_nothing() {
    let receiver = Receiver::start().await;
    let up_at = Instant::now() + Duration::from_secs(20);
    receiver.respond_by(Arc::new(move |_| {
        if Instant::now() < up_at {
            Reply::status(503)
        } else {
            Reply::status(200)
        }
    }));
    let mut setup = Setup::new("down-a-while", &["1s", "2s", "4s"]).await;
    // Its circuit opens after 3 failures; a probe every 8 s: 2 probes fail before it is up.
    setup.delivery = "breaker_threshold = 3\nbreaker_cooldown = \"8s\"".to_owned();
    setup.write_config();
    let _service = running(&setup, vec![hook("hook", &receiver.url)]).await;
    for i in 0..10 {
        setup
            .send_event(&seed_event(&format!("evt_{i}"), "acc"))
            .await;
    }
    let delivered = until(
        Duration::from_secs(90),
        "10 alerts answered 200",
        || async {
            let mut ids: Vec<String> = receiver
                .requests()
                .iter()
                .filter(|r| r.at >= up_at)
                .map(|r| r.headers["webhook-id"].clone())
                .collect();
            ids.sort();
            ids.dedup();
            (ids.len() == 10).then_some(ids)
        },
    )
    .await;
    let during = receiver.requests().iter().filter(|r| r.at < up_at).count();
    println!(
        "{} alerts arrived once the endpoint was up; {during} requests answered 503 before",
        delivered.len()
    );
    assert!(
        during < 10 + 4,
        "the first attempts and a few probes, not every retry: {during}"
    );
    assert!(
        read_all(&setup.topic("dlq")).is_empty(),
        "nothing dead-lettered: the endpoint was only down for a while"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_refusing_connections_waits_then_dead_letters_for_waiting() {
    let refused_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refusing = format!("http://127.0.0.1:{refused_port}/hook");
    let other = Receiver::start().await;
    let mut setup = Setup::new("refused", &["1s", "2s", "4s"]).await;
    setup.delivery =
        "breaker_threshold = 3\nbreaker_cooldown = \"30s\"\nmax_pending = \"30s\"".to_owned();
    setup.write_config();
    setup.create_service_topics().await;
    setup
        .put_settings("down", &settings("down", 1, vec![hook("hook", &refusing)]))
        .await;
    setup
        .put_settings("up", &settings("up", 1, vec![hook("hook", &other.url)]))
        .await;
    let mut service = setup.start();
    service.wait_ready().await;
    let started = Instant::now();
    for i in 0..5 {
        setup
            .send_event(&seed_event(&format!("evt_d{i}"), "down"))
            .await;
    }
    // Meanwhile another host's alerts go out at once, every few seconds.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let sent = Instant::now();
        setup
            .send_event(&seed_event(&format!("evt_u{i}"), "up"))
            .await;
        until(BOUND, "the other host's alert", || async {
            (other.count() > i).then_some(())
        })
        .await;
        assert!(sent.elapsed() < BOUND, "{:?}", sent.elapsed());
    }
    let dlq = setup.topic("dlq");
    let letters = until(Duration::from_secs(120), "5 dead letters", || async {
        let letters = read_all(&dlq);
        (letters.len() >= 5).then_some(letters)
    })
    .await;
    let took = started.elapsed();
    let reasons: Vec<String> = letters
        .iter()
        .map(|m| {
            let letter: Value =
                serde_json::from_slice(rdkafka::Message::payload(m).unwrap()).unwrap();
            letter["reason"].as_str().unwrap().to_owned()
        })
        .collect();
    println!("dead-lettered by {took:?}: {reasons:?}");
    // Waited, in all, `max_pending`: a probe's attempt ends a wait but does not reset it.
    let waiting = format!(" for 127.0.0.1:{refused_port} to be reachable (delivery.max_pending)");
    assert!(
        reasons
            .iter()
            .all(|r| r.starts_with("waited 3") && r.contains(&waiting)),
        "{reasons:?}"
    );
    assert!(
        (Duration::from_secs(30)..Duration::from_secs(50)).contains(&took),
        "{took:?}"
    );
}
