//! sysmos-notify: consumes alert events from Kafka, looks up each account's notification
//! settings, and delivers every alert to every connected channel through durable Kafka
//! delivery, retry and dead-letter topics.
//!
//! `run` is the whole service; `main.rs` only parses arguments and calls it.

pub mod admin;
pub mod config;
pub mod delivery;
pub mod kafka;
pub mod metrics;
pub mod model;
pub mod render;
pub mod retry;
pub mod router;
pub mod settings_cache;
pub mod shutdown;
pub mod telemetry;
pub mod verify;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureProducer;
use rdkafka::Message;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::config::Settings;
use crate::delivery::Channels;
use crate::kafka::context::{commit_stored, GroupConsumer, ServiceContext};
use crate::kafka::producer::Output;
use crate::kafka::topics::Topics;
use crate::metrics::Metrics;
use crate::retry::consumer::Deliverer;
use crate::router::consumer::Router;
use crate::settings_cache::SettingsCache;
use crate::verify::consumer::Verifier;

/// Runs the service until `shutdown` is cancelled, then drains in-flight work, commits and
/// returns. Errors are start-up failures an operator must fix (bad address, broker refusing).
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness::default());
    let admin_server = admin::serve(
        settings.http.listen,
        metrics.clone(),
        readiness.clone(),
        shutdown.clone(),
    )
    .await?;
    let topics = Topics::from_settings(&settings);
    let kafka = &settings.kafka;
    tracing::info!(brokers = %kafka.brokers, prefix = %kafka.topic_prefix, tiers = topics.retry.len(),
        "starting sysmos-notify {}", env!("CARGO_PKG_VERSION"));

    let admin: Arc<AdminClient<DefaultClientContext>> =
        Arc::new(kafka::client::admin(kafka).create()?);
    let mut backoff = Duration::from_millis(500);
    loop {
        // Probe with a bounded, blocking metadata request first: an admin request against an
        // unreachable cluster does not give way to shutdown, a 5s metadata probe does.
        let probe = admin.clone();
        let reachable = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = tokio::task::spawn_blocking(move || probe.inner().fetch_metadata(None, Duration::from_secs(5))) => r,
        };
        let attempt = match reachable {
            Ok(Ok(_)) => kafka::topics::ensure(&admin, &topics, kafka.partitions).await,
            Ok(Err(error)) => Err(anyhow::anyhow!(
                "Kafka at {} not reachable: {error}",
                kafka.brokers
            )),
            Err(error) => Err(anyhow::anyhow!("metadata probe failed: {error}")),
        };
        match attempt {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!("cannot set up topics yet: {error:#}; retrying in {backoff:?}")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(Duration::from_secs(10)),
        }
    }
    drop(admin);

    let producer: FutureProducer = kafka::client::producer(kafka).create()?;
    let output = Arc::new(Output::new(producer, shutdown.clone()));
    let cache = Arc::new(SettingsCache::new(metrics.clone()));

    // Settings first: routing before the cache is complete would drop alerts as unroutable.
    // The verification markers too: the verifier must know what was sent before it sends.
    let settings_consumer = GroupConsumer::from_config_and_context(
        &kafka::client::reader(kafka, &format!("{}.settings", kafka.group_id)),
        ServiceContext::new("settings", metrics.clone(), Arc::default()),
    )?;
    let targets = kafka::table::assign_all(&settings_consumer, &topics.config)?;
    let (settings_tx, mut settings_rx) = watch::channel(false);
    let table_cache = cache.clone();
    let reader = tokio::spawn(kafka::table::run(
        settings_consumer,
        topics.config.clone(),
        targets,
        move |message| table_cache.apply_logged(message),
        settings_tx,
        shutdown.clone(),
    ));
    let sent = Arc::new(verify::Sent::default());
    let markers_consumer = GroupConsumer::from_config_and_context(
        &kafka::client::reader(kafka, &format!("{}.verifications", kafka.group_id)),
        ServiceContext::new("verifications", metrics.clone(), Arc::default()),
    )?;
    let targets = kafka::table::assign_all(&markers_consumer, &topics.verifications)?;
    let (markers_tx, mut markers_rx) = watch::channel(false);
    let table_sent = sent.clone();
    let markers = tokio::spawn(kafka::table::run(
        markers_consumer,
        topics.verifications.clone(),
        targets,
        move |message| table_sent.apply(message.key(), message.payload()),
        markers_tx,
        shutdown.clone(),
    ));
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        _ = async {
            let _ = settings_rx.wait_for(|loaded| *loaded).await;
            let _ = markers_rx.wait_for(|loaded| *loaded).await;
        } => readiness.settings_loaded.store(true, Ordering::Release),
    }

    let router_consumer = Arc::new(GroupConsumer::from_config_and_context(
        &kafka::client::group_consumer(kafka, &kafka.group_id),
        ServiceContext::new("router", metrics.clone(), readiness.router_joined.clone()),
    )?);
    let event_topics: Vec<&str> = kafka.event_topics.iter().map(String::as_str).collect();
    router_consumer.subscribe(&event_topics)?;
    let deliverer_consumer = Arc::new(GroupConsumer::from_config_and_context(
        &kafka::client::group_consumer(kafka, &format!("{}.deliveries", kafka.group_id)),
        ServiceContext::new(
            "deliverer",
            metrics.clone(),
            readiness.deliverer_joined.clone(),
        ),
    )?);
    deliverer_consumer.subscribe(&topics.delivery_topics())?;
    let verifier_consumer = Arc::new(GroupConsumer::from_config_and_context(
        &kafka::client::group_consumer(kafka, &format!("{}.verifications", kafka.group_id)),
        ServiceContext::new("verifier", metrics.clone(), Arc::default()),
    )?);
    verifier_consumer.subscribe(&[&topics.config])?;

    // In-flight HTTP requests end within the timeout; the rest is writing their outcomes.
    let drain = settings.delivery.timeout + Duration::from_secs(5);
    let router = Arc::new(Router {
        topics: topics.clone(),
        cache: cache.clone(),
        output: output.clone(),
        metrics: metrics.clone(),
    });
    let channels = Arc::new(Channels::new(&settings)?);
    let verifier = Verifier {
        topic: topics.verifications.clone(),
        sent,
        mailer: channels.mailer.clone(),
        output: output.clone(),
        metrics: metrics.clone(),
        delays: settings.retry.delays.clone(),
    };
    let deliverer = Arc::new(Deliverer {
        topics: topics.clone(),
        delays: settings.retry.delays.clone(),
        cache,
        channels,
        output: output.clone(),
        metrics,
        permits: Arc::new(Semaphore::new(settings.delivery.max_in_flight)),
    });
    tracing::info!(topics = ?kafka.event_topics, group = %kafka.group_id, "routing events");
    let routing = tokio::spawn(router.run(router_consumer.clone(), shutdown.clone(), drain));
    let delivering =
        tokio::spawn(deliverer.run(deliverer_consumer.clone(), shutdown.clone(), drain));
    let verifying = tokio::spawn(verifier.run(verifier_consumer.clone(), shutdown.clone()));
    let _ = tokio::join!(routing, delivering, verifying);

    commit_stored(&router_consumer, "router");
    commit_stored(&deliverer_consumer, "deliverer");
    commit_stored(&verifier_consumer, "verifier");
    output.flush(Duration::from_secs(10));
    drop(router_consumer);
    drop(deliverer_consumer);
    drop(verifier_consumer);
    let _ = tokio::join!(reader, markers, admin_server);
    tracing::info!("stopped: in-flight work finished and offsets committed");
    Ok(())
}
