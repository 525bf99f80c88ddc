//! Scaling out (issue 21): instances sharing one consumer group on Apache Kafka. The range
//! assignor gives partition i of `P.deliveries` and of every retry tier to one member, so each
//! bucket is paced by one process at a time: with members killed and added while paced
//! channels are busy, no bucket goes over its pace and nothing is lost.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::limits::{Enforced, Limit};

use crate::common::receiver::{Receiver, Recorded};
use crate::common::scenario::*;
use crate::common::{free_port, read_all, until, Service, Setup};

const ACCOUNTS: usize = 6;
/// Each account's webhook takes this many requests a second, with as large a burst.
const PACE: u32 = 2;

/// The most requests of `requests` (one bucket's, in arrival order, answered 429 or not)
/// within any span, less what the pace allows in it: above 0 means the bucket went over its
/// pace, as when a new owner's full burst meets the one the previous owner just emptied.
fn worst_excess(requests: &[&Recorded]) -> f64 {
    let mut worst = f64::MIN;
    for (i, first) in requests.iter().enumerate() {
        for (j, last) in requests.iter().enumerate().skip(i) {
            let span = (last.at - first.at).as_secs_f64();
            // A request's token comes back 1/PACE s after it; 50 ms of arrival jitter allowed.
            let allowed = f64::from(PACE) + ((span + 0.05) * f64::from(PACE)).floor();
            worst = worst.max((j - i + 1) as f64 - allowed);
        }
    }
    worst
}

/// Deliveries received, each counted once (by `webhook-id`).
fn received(receiver: &Receiver) -> usize {
    let ids: HashSet<String> = receiver
        .requests()
        .iter()
        .filter_map(|r| r.headers.get("webhook-id").cloned())
        .collect();
    ids.len()
}

fn start(setup: &Setup, configs: &mut Vec<tempfile::NamedTempFile>) -> Service {
    let port = free_port();
    let config = setup.instance_config(port);
    let service = Service::start(config.path().to_path_buf(), port);
    configs.push(config);
    service
}

async fn send_wave(setup: &Setup, wave: usize, per_account: usize) {
    for i in 0..per_account {
        for a in 0..ACCOUNTS {
            let id = format!("evt_w{wave}_{i:02}");
            setup.send_event(&seed_event(&id, &format!("acc{a}"))).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_keep_every_bucket_to_its_pace_when_one_dies_and_one_joins() {
    let receiver = Receiver::start().await;
    let limit = Enforced::new(Limit::webhook(PACE));
    let limited_at = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let (limit, limited_at) = (limit.clone(), limited_at.clone());
        receiver.respond_by(std::sync::Arc::new(move |r: &Recorded| {
            let reply = limit.answer(r);
            if reply.status == 429 {
                limited_at.lock().unwrap().push((r.at, r.path.clone()));
            }
            reply
        }));
    }
    let mut setup = Setup::new("scaling", &["1s", "2s", "4s"]).await;
    setup.partitions = 6;
    setup.write_config();
    setup.create_service_topics().await;
    for a in 0..ACCOUNTS {
        let mut channel = hook("hook", &format!("{}/b{a}", receiver.base));
        channel["rate"] = json!(format!("{PACE}/1s"));
        setup
            .put_settings(
                &format!("acc{a}"),
                &settings(&format!("acc{a}"), 1, vec![channel]),
            )
            .await;
    }
    let mut configs = Vec::new();
    let mut instances: Vec<Service> = (0..3).map(|_| start(&setup, &mut configs)).collect();
    for instance in &mut instances {
        instance.wait_ready().await;
    }

    // Wave 1 meets three members, and one dies mid-wave: its buckets wait for the session
    // timeout, then move. Wave 2 meets two. Wave 3 keeps every bucket busy while a fourth
    // member joins, so partitions move between live members in mid-flow.
    const PER_WAVE: usize = 8;
    const BUSY_WAVE: usize = 16;
    let started = Instant::now();
    send_wave(&setup, 1, PER_WAVE).await;
    requests_reach(&receiver, ACCOUNTS * 2).await;
    instances[1].kill();
    let killed_at = started.elapsed();
    send_wave(&setup, 2, PER_WAVE).await;
    until(
        Duration::from_secs(60),
        "waves 1 and 2 received",
        || async { (received(&receiver) >= ACCOUNTS * PER_WAVE * 2).then_some(()) },
    )
    .await;
    send_wave(&setup, 3, BUSY_WAVE).await;
    requests_reach(&receiver, ACCOUNTS * (PER_WAVE * 2 + 2)).await;
    let mut joined = start(&setup, &mut configs);
    joined.wait_ready().await;
    let joined_at = started.elapsed();

    let expected = ACCOUNTS * (PER_WAVE * 2 + BUSY_WAVE);
    let delivered = until(
        Duration::from_secs(120),
        "every delivery received",
        || async {
            let n = received(&receiver);
            (n >= expected).then_some(n)
        },
    )
    .await;
    let took = started.elapsed();

    let requests = receiver.requests();
    let mut buckets: HashMap<&str, Vec<&Recorded>> = HashMap::new();
    for r in &requests {
        buckets.entry(r.path.as_str()).or_default().push(r);
    }
    let excess: Vec<(String, f64)> = {
        let mut e: Vec<_> = buckets
            .iter()
            .map(|(path, rs)| (path.to_string(), worst_excess(rs)))
            .collect();
        e.sort_by(|a, b| a.0.cmp(&b.0));
        e
    };
    println!(
        "{expected} deliveries over {ACCOUNTS} buckets at {PACE}/s, one member SIGKILLed at \
         {killed_at:?}, one joined at {joined_at:?}: all {delivered} received after {took:?} in \
         {} requests, {} answers of 429; worst excess per bucket {excess:?}",
        requests.len(),
        limit.limited()
    );
    for (at, path) in limited_at.lock().unwrap().iter() {
        let previous: Vec<String> = buckets[path.as_str()]
            .iter()
            .filter(|r| r.at <= *at && *at - r.at < Duration::from_secs(2))
            .map(|r| format!("{:.3}", (r.at - started).as_secs_f64()))
            .collect();
        println!(
            "429 at {:.3}s on {path}; its requests in the 2 s before: {previous:?}",
            (*at - started).as_secs_f64()
        );
    }
    // Requests leave on the pace; a strict limiter counts arrivals, and the first request on
    // a new connection (a fresh instance's) arrives a few ms later than the ones after it.
    assert!(
        limit.limited() <= ACCOUNTS,
        "{} answers of 429: at most one per bucket, from arrival jitter",
        limit.limited()
    );
    for (path, worst) in &excess {
        assert!(*worst <= 0.0, "{path}: {worst} requests past the pace");
    }
    assert_eq!(buckets.len(), ACCOUNTS);
    assert!(
        read_all(&setup.topic("dlq")).is_empty(),
        "nothing dead-lettered"
    );
    drop(joined);
}
