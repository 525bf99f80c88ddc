//! sysmos-notify: consumes alert events from Kafka, looks up each account's notification
//! settings, and delivers every alert to every connected channel through durable Kafka
//! delivery, retry and dead-letter topics.
//!
//! `run` is the whole service; `main.rs` only parses arguments and calls it.
//!
//! # Layout
//!
//! In the order data flows:
//!
//! - `config`: the configuration, parsed and checked once at start.
//! - `kafka`: clients, the consumer context, offset tracking, the durable producer, topics.
//! - `model`: events, account settings, delivery records and the incident key.
//! - `settings_cache`: the accounts' settings, fed by the compacted config topic.
//! - `router`: event → one delivery record per accepting channel (`router::decide`).
//! - `deliverer`: the loop over the delivery topics, and each record's flow through its stages
//!   (due, its provider bucket's turn, waiting, the request, what follows), with the digests
//!   of deliveries that waited together.
//! - `ledger`: what became of recent delivery records (`P.handled`): repeats, superseded problems.
//! - `pacing`: provider rate limits: each bucket's reserved turns and holds.
//! - `delivery`: one attempt to one provider, the outcome classifiers, host caps and holds,
//!   endpoint circuits.
//! - `render`: what each provider receives, as pure functions.
//! - `retry`: the tier plan (`retry::next_step`) and why a delivery is dead-lettered.
//! - `verify`: verification emails for new recipients.
//! - `metrics`, `admin`, `telemetry`, `shutdown`: what operators see and how the process stops.
//! - `ops`: the operator commands (`dlq`, `send-test`, `settings show`).

pub(crate) mod admin;
pub mod config;
pub(crate) mod deliverer;
pub(crate) mod delivery;
pub mod kafka;
pub mod ledger;
pub mod metrics;
pub mod model;
pub mod ops;
pub(crate) mod pacing;
pub mod render;
pub(crate) mod retry;
pub(crate) mod router;
pub(crate) mod settings_cache;
pub mod shutdown;
pub mod telemetry;
pub mod verify;

/// Where a channel's requests go (the host whose cap and hold they share): for the fuzz checks.
pub use delivery::destination;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::FutureProducer;
use rdkafka::Message;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::config::Config;
use crate::deliverer::{Deliverer, UNFINISHED_PER_ATTEMPT, WAITING_ROOM};
use crate::delivery::Dispatcher;
use crate::kafka::client;
use crate::kafka::context::{commit_stored, subscribed, ServiceContext};
use crate::kafka::producer::Output;
use crate::kafka::topics::Topics;
use crate::ledger::{Journal, Ledger};
use crate::metrics::Metrics;
use crate::pacing::Pacer;
use crate::router::consumer::Router;
use crate::settings_cache::SettingsCache;
use crate::verify::consumer::Verifier;

/// Runs the service until `shutdown` is cancelled, then drains in-flight work, commits and
/// returns. Errors are start-up failures an operator must fix (bad address, broker refusing).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness::default());
    let admin_server = admin::serve(
        config.http.listen,
        metrics.clone(),
        readiness.clone(),
        shutdown.clone(),
    )
    .await?;
    let topics = Topics::from_config(&config);
    let kafka = &config.kafka;
    tracing::info!(brokers = %kafka.brokers, prefix = %kafka.topic_prefix, tiers = topics.retry.len(),
        config = %config.effective(), "starting sysmos-notify {}", env!("CARGO_PKG_VERSION"));

    if !kafka::topics::set_up(&config, &topics, &shutdown).await? {
        return Ok(()); // stopped before the cluster answered
    }

    let producer: FutureProducer = kafka::client::producer(kafka).create()?;
    let output = Arc::new(Output::new(producer, shutdown.clone()));
    let cache = Arc::new(SettingsCache::new(metrics.clone()));

    // Settings first: routing before the cache is complete would drop alerts as unroutable.
    // The verification markers too: the verifier must know what was sent before it sends.
    let table_cache = cache.clone();
    let (reader, mut settings_loaded) = kafka::table::follow(
        kafka,
        "settings",
        metrics.clone(),
        &topics.config,
        move |message| table_cache.apply_logged(message),
        shutdown.clone(),
    )
    .await?;
    let markers = Arc::new(verify::Markers::default());
    let table_markers = markers.clone();
    let (markers_reader, mut markers_loaded) = kafka::table::follow(
        kafka,
        "verifications",
        metrics.clone(),
        &topics.verifications,
        move |message| table_markers.apply(message.key(), message.payload()),
        shutdown.clone(),
    )
    .await?;
    // And what became of recent deliveries: a record handled before this start (offset not
    // yet committed when the last process died) is not attempted again.
    let ledger = Arc::new(Ledger::new(
        config.delivery.dedup_window,
        config.delivery.dedup_capacity,
    ));
    let table_ledger = ledger.clone();
    let (handled, mut handled_loaded) = kafka::table::follow(
        kafka,
        "handled",
        metrics.clone(),
        &topics.handled,
        move |message| table_ledger.apply_bytes(message.payload()),
        shutdown.clone(),
    )
    .await?;
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        _ = async {
            for loaded in [&mut settings_loaded, &mut markers_loaded, &mut handled_loaded] {
                let _ = loaded.wait_for(|loaded| *loaded).await;
            }
        } => readiness.settings_loaded.store(true, Ordering::Release),
    }

    let event_topics: Vec<&str> = kafka.event_topics.iter().map(String::as_str).collect();
    let router_consumer = subscribed(
        &client::events_consumer(kafka, &kafka.group_id),
        ServiceContext::new("router", metrics.clone(), readiness.router_joined.clone()),
        &event_topics,
    )?;
    let deliverer_consumer = subscribed(
        &client::group_consumer(kafka, &format!("{}.deliveries", kafka.group_id)),
        ServiceContext::new(
            "deliverer",
            metrics.clone(),
            readiness.deliverer_joined.clone(),
        )
        .with_tiers(&topics.retry),
        &topics.delivery_topics(),
    )?;
    let verifier_consumer = subscribed(
        &client::group_consumer(kafka, &format!("{}.verifications", kafka.group_id)),
        ServiceContext::new("verifier", metrics.clone(), Arc::default()),
        &[&topics.config],
    )?;

    // In-flight HTTP requests end within the timeout; the rest is writing their outcomes.
    let drain = config.delivery.timeout + Duration::from_secs(5);
    let router = Arc::new(Router {
        topics: topics.clone(),
        cache: cache.clone(),
        output: output.clone(),
        metrics: metrics.clone(),
    });
    let dispatcher = Arc::new(Dispatcher::new(&config)?);
    let verifier = Arc::new(Verifier {
        topic: topics.verifications.clone(),
        markers,
        mailer: dispatcher.mailer.clone(),
        output: output.clone(),
        metrics: metrics.clone(),
        delays: config.retry.delays.clone(),
        in_progress: Default::default(),
    });
    let deliverer = Arc::new(Deliverer {
        topics: topics.clone(),
        delays: config.retry.delays.clone(),
        cache,
        dispatcher,
        journal: Journal::start(topics.handled.clone(), output.clone(), ledger.clone()),
        ledger,
        in_flight: Default::default(),
        output: output.clone(),
        metrics,
        permits: Arc::new(Semaphore::new(config.delivery.max_in_flight)),
        unfinished: Arc::new(Semaphore::new(
            config.delivery.max_in_flight * UNFINISHED_PER_ATTEMPT,
        )),
        pacer: Pacer::default(),
        paces: config.paces(),
        // Holds up to the first tier's delay are waited out in memory; longer ones in the
        // tiers, so no offset stays unstored behind a long Retry-After.
        patience: config
            .retry
            .delays
            .first()
            .copied()
            .unwrap_or(Duration::from_secs(15)),
        waiting: Arc::new(Semaphore::new(WAITING_ROOM)),
        gatherings: Default::default(),
        dead_letters: Default::default(),
        tasks: tokio_util::task::TaskTracker::new(),
        max_pending: chrono::Duration::from_std(config.delivery.max_pending)
            .unwrap_or(chrono::Duration::MAX),
        drain,
    });
    tracing::info!(topics = ?kafka.event_topics, group = %kafka.group_id, "routing events");
    let routing = tokio::spawn(router.run(router_consumer.clone(), shutdown.clone(), drain));
    let delivering = tokio::spawn(deliverer.run(deliverer_consumer.clone(), shutdown.clone()));
    let verifying = tokio::spawn(verifier.run(verifier_consumer.clone(), shutdown.clone()));
    let ended = supervise(
        [
            ("router", routing),
            ("deliverer", delivering),
            ("verifier", verifying),
        ],
        &shutdown,
    )
    .await;

    commit_stored(&router_consumer, "router").await;
    commit_stored(&deliverer_consumer, "deliverer").await;
    commit_stored(&verifier_consumer, "verifier").await;
    output.flush(Duration::from_secs(10)).await;
    leave_groups(vec![router_consumer, deliverer_consumer, verifier_consumer]).await;
    let _ = tokio::join!(reader, markers_reader, handled, admin_server);
    if let Some(error) = ended {
        tracing::error!(%error, "stopped because a loop ended: exiting with an error so the process is restarted");
        return Err(error);
    }
    tracing::info!("stopped: in-flight work finished and offsets committed");
    Ok(())
}

/// Waits for the service's loops. They end only when `shutdown` is cancelled; the first to
/// end before that (returned, or panicked) cancels it, so the others drain and stop too, and
/// is the error `run` returns: a process with a dead loop must not stay up looking healthy.
async fn supervise(
    loops: [(&'static str, tokio::task::JoinHandle<()>); 3],
    shutdown: &CancellationToken,
) -> Option<anyhow::Error> {
    let (names, handles): (Vec<_>, Vec<_>) = loops.into_iter().unzip();
    let (first, index, rest) = futures::future::select_all(handles).await;
    let ended = (!shutdown.is_cancelled()).then(|| {
        let name = names[index];
        match first {
            Ok(()) => anyhow::anyhow!("the {name} loop ended before shutdown"),
            Err(error) => anyhow::anyhow!("the {name} loop failed: {error}"),
        }
    });
    shutdown.cancel();
    for (name, result) in names
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, name)| name)
        .zip(futures::future::join_all(rest).await)
    {
        if let Err(error) = result {
            tracing::error!(loop_name = name, %error, "a loop failed while stopping");
        }
    }
    ended
}

/// How long leaving the consumer groups may take at shutdown.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Closes the consumers, which leaves their groups, on a thread of its own. librdkafka's close
/// can wait forever inside a rebalance it receives meanwhile (seen once in a chaos run: a
/// process stuck in `rd_kafka_assign` during close); the offsets are committed by now, so
/// after [`LEAVE_TIMEOUT`] the process goes on to exit, and the broker drops the members
/// when their sessions time out.
async fn leave_groups(consumers: Vec<Arc<kafka::context::GroupConsumer>>) {
    let (left, leaving) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        drop(consumers);
        let _ = left.send(());
    });
    if tokio::time::timeout(LEAVE_TIMEOUT, leaving).await.is_err() {
        tracing::warn!(
            "leaving the consumer groups took longer than {LEAVE_TIMEOUT:?}; exiting anyway \
             (offsets are committed; the broker drops the members after their session timeout)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn until_stopped(shutdown: CancellationToken) {
        shutdown.cancelled().await;
    }

    #[tokio::test]
    async fn the_first_loop_to_end_stops_the_others_and_is_the_error() {
        let shutdown = CancellationToken::new();
        let ended = supervise(
            [
                ("router", tokio::spawn(until_stopped(shutdown.clone()))),
                ("deliverer", tokio::spawn(async {})),
                ("verifier", tokio::spawn(until_stopped(shutdown.clone()))),
            ],
            &shutdown,
        )
        .await;
        assert!(shutdown.is_cancelled(), "the others were told to stop");
        let error = ended.expect("an early end is an error").to_string();
        assert_eq!(error, "the deliverer loop ended before shutdown");

        let shutdown = CancellationToken::new();
        let ended = supervise(
            [
                ("router", tokio::spawn(until_stopped(shutdown.clone()))),
                ("deliverer", tokio::spawn(until_stopped(shutdown.clone()))),
                ("verifier", tokio::spawn(async { panic!("boom") })),
            ],
            &shutdown,
        )
        .await;
        let error = ended.expect("a panic is an error").to_string();
        assert!(error.starts_with("the verifier loop failed"), "{error}");

        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let ended = supervise(
            [
                ("router", tokio::spawn(async {})),
                ("deliverer", tokio::spawn(async {})),
                ("verifier", tokio::spawn(async {})),
            ],
            &shutdown,
        )
        .await;
        assert!(ended.is_none(), "loops that end at shutdown are no error");
    }
}
