//! Offset storage under concurrency: deliveries finish in any order on many threads, and the
//! committed offset must be the low-water mark after each round. `finish` computes and stores
//! under one lock because librdkafka keeps the last offset stored, not the highest; this
//! test checks the property, though it could not make the unlocked version fail on demand.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use sysmos_notify::config::Config;
use sysmos_notify::kafka::context::{commit_stored, finish, subscribed, ServiceContext};
use sysmos_notify::metrics::Metrics;

use crate::common::{brokers, committed, create_topic, unique, until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_finishes_store_the_low_water_mark() {
    let name = unique("offsets");
    let topic = format!("{name}.t");
    create_topic(&topic, 1).await;
    let group = format!("{name}-group");
    let settings = Config::load_with_env(
        None,
        [(
            "SYSMOS_NOTIFY__KAFKA__BROKERS".to_owned(),
            brokers().to_owned(),
        )],
    )
    .unwrap();
    let joined = Arc::new(AtomicBool::new(false));
    let context = ServiceContext::new("test", Arc::new(Metrics::new()), joined.clone());
    let config = sysmos_notify::kafka::client::group_consumer(&settings.kafka, &group);
    let consumer = subscribed(&config, context, &[&topic]).unwrap();
    // Rebalance callbacks run while the consumer is polled.
    let polling = consumer.clone();
    let poller = tokio::spawn(async move {
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(100), polling.recv()).await;
        }
    });
    until(Duration::from_secs(60), "the partition assigned", || {
        let joined = joined.clone();
        async move { joined.load(Ordering::Acquire).then_some(()) }
    })
    .await;

    // Rounds of offsets finished by sixteen threads at once (more than cores: preemption); after each round the committed
    // offset must be exactly the round's end.
    const ROUND: i64 = 2_000;
    for round in 0..10 {
        let positions: Vec<_> = (round * ROUND..(round + 1) * ROUND)
            .map(|offset| {
                consumer
                    .context()
                    .assignment
                    .lock()
                    .unwrap()
                    .begin(&topic, 0, offset, None)
                    .expect("assigned")
            })
            .collect();
        let positions = Arc::new(positions);
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let (consumer, positions) = (consumer.clone(), positions.clone());
                std::thread::spawn(move || {
                    for pos in positions.iter().skip(t).step_by(16) {
                        finish(&consumer, pos);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        commit_stored(&consumer, "test").await;
        assert_eq!(
            committed(&group, &topic),
            (round + 1) * ROUND,
            "round {round}: the stored offset went backwards"
        );
    }
    poller.abort();
}
