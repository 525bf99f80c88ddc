//! The README's first command (`scripts/demo`): runs sysmos-notify against a local broker,
//! with a local webhook receiver, and shows seed-format alerts delivered — one of them
//! through a retry tier after the receiver's 503.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Response;
use hyper_util::rt::TokioIo;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;
use sysmos_notify::config::Settings;
use tokio_util::sync::CancellationToken;

type Hits = Arc<Mutex<HashMap<String, u32>>>;

/// A receiver that answers 503 to the first request on `/flaky`, 200 to everything else.
async fn receiver(start: Instant) -> (String, Hits) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits: Hits = Arc::default();
    let shared = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let hits = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let hits = hits.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let id = req
                                .headers()
                                .get("webhook-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let n = {
                                let mut h = hits.lock().unwrap();
                                let n = h.entry(format!("{path} {id}")).or_default();
                                *n += 1;
                                *n
                            };
                            let status = if path == "/flaky" && n == 1 { 503 } else { 200 };
                            let v: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or_default();
                            let source = v
                                .get("monitor")
                                .or(v.get("server"))
                                .and_then(|s| s.get("name"))
                                .cloned()
                                .unwrap_or_default();
                            println!(
                            "[{:>5.1}s] {path:<7} received {:<18} {:<18} attempt {n} -> answered {status}   (webhook-id {id})",
                            start.elapsed().as_secs_f64(),
                            v["event"].as_str().unwrap_or("?"),
                            source.as_str().unwrap_or("?"),
                        );
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (base, hits)
}

async fn produce(producer: &FutureProducer, topic: &str, key: &str, value: &serde_json::Value) {
    let payload = value.to_string();
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce to the local broker");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let brokers = std::env::var("DEMO_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into());
    sysmos_notify::telemetry::init();
    let start = Instant::now();
    let (base, hits) = receiver(start).await;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let env = [
        ("SYSMOS_NOTIFY__KAFKA__BROKERS", brokers.clone()),
        ("SYSMOS_NOTIFY__KAFKA__PARTITIONS", "2".into()),
        (
            "SYSMOS_NOTIFY__KAFKA__CLIENT__FETCH_WAIT_MAX_MS",
            "10".into(),
        ),
        ("SYSMOS_NOTIFY__RETRY__DELAYS", "3s,10s,30s".into()),
        (
            "SYSMOS_NOTIFY__DELIVERY__ALLOW_PRIVATE_TARGETS",
            "true".into(),
        ),
        ("SYSMOS_NOTIFY__HTTP__LISTEN", listen.to_string()),
    ];
    let settings =
        Settings::load_with_env(None, env.iter().map(|(k, v)| (k.to_string(), v.clone())))?;
    let prefix = settings.kafka.topic_prefix.clone();
    println!(
        "sysmos-notify demo: broker {brokers}, receiver {base}, metrics http://{listen}/metrics\n"
    );

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    // The upstream products' topics (the broker does not create topics on first use).
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()?;
    let topics = ["monitor.alerts", "server.alerts"]
        .map(|t| rdkafka::admin::NewTopic::new(t, 2, rdkafka::admin::TopicReplication::Fixed(-1)));
    admin
        .create_topics(topics.iter(), &rdkafka::admin::AdminOptions::new())
        .await?;
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(sysmos_notify::run(settings, shutdown.clone()));

    // The settings app's record for one account: two webhook channels.
    let account = json!({"account_id":"acc_42","version":1,"channels":[
        {"id":"ops","type":"webhook","url":format!("{base}/ops"),"secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
        {"id":"flaky","type":"webhook","url":format!("{base}/flaky"),"events":["monitor.*"]}]});
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("http://{listen}{path}"))
                .send()
                .await
                .ok()?;
            if r.status().is_success() {
                r.text().await.ok()
            } else {
                None
            }
        }
    };
    // Ready = topics created, config topic read, consumers in their groups.
    while get("/readyz").await.is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    produce(&producer, &format!("{prefix}.config"), "acc_42", &account).await;
    while !get("/metrics")
        .await
        .is_some_and(|m| m.contains("sysmos_notify_config_accounts 1"))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "[{:>5.1}s] service ready, settings of acc_42 cached; producing 3 alerts\n",
        start.elapsed().as_secs_f64()
    );

    let events = [
        (
            "monitor.alerts",
            "mon_abc123",
            json!({"event":"monitor.down","event_id":"evt_01HZX3","account_id":"acc_42","occurred_at":"2025-01-15T10:30:00Z",
            "monitor":{"id":"mon_abc123","name":"Production API","url":"https://api.example.com/health"},
            "alert":{"status":"down","region":"us-east-1","response_time_ms":5023,"status_code":503,"triggered_at":"2025-01-15T10:30:00Z"}}),
        ),
        (
            "server.alerts",
            "srv_7",
            json!({"event":"server.offline","event_id":"evt_01HZX4","account_id":"acc_42","occurred_at":"2025-01-15T10:31:00Z",
            "server":{"id":"srv_7","name":"db-primary","hostname":"db1.internal"},"alert":{"last_seen_at":"2025-01-15T10:29:30Z","triggered_at":"2025-01-15T10:31:00Z"}}),
        ),
        (
            "monitor.alerts",
            "mon_abc123",
            json!({"event":"monitor.recovered","event_id":"evt_01HZX5","account_id":"acc_42","occurred_at":"2025-01-15T10:35:00Z",
            "monitor":{"id":"mon_abc123","name":"Production API","url":"https://api.example.com/health"},
            "alert":{"status":"up","region":"us-east-1","response_time_ms":120,"status_code":200,"down_since":"2025-01-15T10:30:00Z","triggered_at":"2025-01-15T10:35:00Z"}}),
        ),
    ];
    for (topic, key, event) in &events {
        produce(&producer, topic, key, event).await;
    }
    // 3 alerts on `ops`, 2 monitor alerts on `flaky` (first answered 503, retried from retry.1).
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected = 7;
    while hits.lock().unwrap().values().sum::<u32>() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = get("/metrics").await.unwrap_or_default();
    println!("\nmetrics:");
    for line in metrics.lines().filter(|l| {
        (l.starts_with("sysmos_notify_events_total")
            || l.starts_with("sysmos_notify_deliveries_total{channel=\"webhook\"")
            || l.starts_with("sysmos_notify_config_accounts"))
            && !l.ends_with(" 0")
    }) {
        println!("  {line}");
    }
    shutdown.cancel();
    service.await??;
    let received = hits.lock().unwrap().values().sum::<u32>();
    anyhow::ensure!(
        received >= expected,
        "only {received} of {expected} requests arrived within 60s"
    );
    println!("\ndemo done: {received} webhook requests, every alert delivered (the flaky endpoint's two through retry tier 1).");
    Ok(())
}
