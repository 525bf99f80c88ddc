//! The README's first command (`scripts/demo`): runs sysmos-notify against a local broker and
//! delivers alerts to all five channel types — local fake Slack, Discord and PagerDuty APIs,
//! two webhooks (one answers 503 once, so its alert goes through retry tier 1) and a local
//! SMTP server — printing each request as the provider receives it.
//!
//! It starts its own broker (`testkit::broker`, on `DEMO_PORT` or a free port) in a work
//! folder (`DEMO_DIR`, else a new one under the temporary folder) that keeps the service's
//! log (`service.log`, level from `RUST_LOG`) and the broker's (`broker/logs/server.log`).

use std::time::{Duration, Instant};

use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use sysmos_notify::config::Config;
use tokio_util::sync::CancellationToken;

use testkit::broker::produce;
use testkit::receiver::{Receiver, Recorded, Reply};
use testkit::smtp::{Mail, SmtpServer};

/// One line saying what a provider received.
fn describe(request: &Recorded) -> String {
    let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
    let path = request.path.as_str();
    if path.ends_with("/chat.postMessage") {
        format!("slack      {}", body["text"].as_str().unwrap_or("?"))
    } else if path.starts_with("/discord") {
        let embed = &body["embeds"][0];
        format!(
            "discord    {} (color {})",
            embed["title"].as_str().unwrap_or("?"),
            embed["color"]
        )
    } else if path.starts_with("/pagerduty") {
        format!(
            "pagerduty  {:<8} {}  dedup_key {}",
            body["event_action"].as_str().unwrap_or("?"),
            body["payload"]["summary"].as_str().unwrap_or("?"),
            body["dedup_key"].as_str().unwrap_or("?")
        )
    } else {
        let source = body
            .get("monitor")
            .or(body.get("server"))
            .and_then(|s| s["name"].as_str())
            .unwrap_or("?");
        format!(
            "webhook    {path:<7} {} {source}  (webhook-id {})",
            body["event"].as_str().unwrap_or("?"),
            request
                .headers
                .get("webhook-id")
                .map_or("?", String::as_str)
        )
    }
}

fn describe_mail(mail: &Mail) -> String {
    let subject = mail.parsed().subject().unwrap_or_default().to_owned();
    format!("email      to {}: {subject}", mail.to.join(", "))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let start = Instant::now();
    let work = match std::env::var_os("DEMO_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => tempfile::Builder::new()
            .prefix("sysmos-notify-demo-")
            .tempdir()?
            .keep(),
    };
    let service_log = work.join("service.log");
    log_to(&service_log)?;
    let port = std::env::var("DEMO_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(testkit::broker::free_port);
    let broker_data = work.join("broker");
    println!(
        "starting Apache Kafka on 127.0.0.1:{port}; logs: {} and {}",
        service_log.display(),
        broker_data.join("logs/server.log").display()
    );
    let mut broker = tokio::task::spawn_blocking({
        let data = broker_data.clone();
        move || testkit::broker::start(port, &data)
    })
    .await?;
    println!("[{:>5.1}s] broker ready", start.elapsed().as_secs_f64());
    let brokers = format!("127.0.0.1:{port}");
    let outcome = demo(&brokers, start).await;
    let _ = broker.kill();
    let _ = broker.wait();
    let _ = std::fs::remove_dir_all(broker_data.join("kafka"));
    if outcome.is_err() {
        eprintln!("the service's log: {}", service_log.display());
    }
    outcome
}

/// The service's log goes to `path`, not among the demo's lines.
fn log_to(path: &std::path::Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .init();
    Ok(())
}

async fn demo(brokers: &str, start: Instant) -> anyhow::Result<()> {
    let providers = Receiver::start().await;
    providers.respond_when("/flaky", vec![Reply::status(503)], Reply::status(200));
    providers.respond_when(
        "chat.postMessage",
        vec![],
        Reply::json(200, json!({"ok": true})),
    );
    providers.respond_when(
        "/pagerduty",
        vec![],
        Reply::json(202, json!({"status": "success"})),
    );
    let mail = SmtpServer::start().await;
    let base = providers.base.clone();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let env = [
        ("SYSMOS_NOTIFY__KAFKA__BROKERS", brokers.to_owned()),
        ("SYSMOS_NOTIFY__KAFKA__PARTITIONS", "2".into()),
        ("SYSMOS_NOTIFY__RETRY__DELAYS", "3s,10s,30s".into()),
        (
            "SYSMOS_NOTIFY__DELIVERY__ALLOW_PRIVATE_TARGETS",
            "true".into(),
        ),
        ("SYSMOS_NOTIFY__HTTP__LISTEN", listen.to_string()),
        (
            "SYSMOS_NOTIFY__CHANNELS__SLACK__API_BASE_URL",
            format!("{base}/slack/api"),
        ),
        (
            "SYSMOS_NOTIFY__CHANNELS__PAGERDUTY__EVENTS_URL",
            format!("{base}/pagerduty/v2/enqueue"),
        ),
        ("SYSMOS_NOTIFY__CHANNELS__EMAIL__SMTP_URL", mail.url()),
    ];
    let settings =
        Config::load_with_env(None, env.iter().map(|(k, v)| (k.to_string(), v.clone())))?;
    let prefix = settings.kafka.topic_prefix.clone();
    println!(
        "sysmos-notify demo: broker {brokers}, fake providers {base}, SMTP {}, metrics http://{listen}/metrics\n",
        mail.url()
    );

    let client = |c: &mut ClientConfig| c.set("bootstrap.servers", brokers).clone();
    let producer: FutureProducer = client(&mut ClientConfig::new()).create()?;
    // The upstream products' topics (the broker does not create topics on first use).
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        client(&mut ClientConfig::new()).create()?;
    let topics = ["monitor.alerts", "server.alerts"]
        .map(|t| rdkafka::admin::NewTopic::new(t, 2, rdkafka::admin::TopicReplication::Fixed(-1)));
    admin
        .create_topics(topics.iter(), &rdkafka::admin::AdminOptions::new())
        .await?;
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(sysmos_notify::run(settings, shutdown.clone()));

    // The settings app's record for one account: every channel type.
    let account = json!({"account_id":"acc_42","version":1,"channels":[
        {"id":"slack-ops","type":"slack","bot_token":"xoxb-demo","channel":"C0123ABC"},
        {"id":"discord","type":"discord","webhook_url":format!("{base}/discord/api/webhooks/1/abc")},
        {"id":"email","type":"email","recipients":[
            {"address":"owner@example.com","verified":true},
            {"address":"new@example.com","verified":false,"verification_url":"https://app.sysmos.io/verify?t=demo"}]},
        {"id":"pd","type":"pagerduty","integration_key":"0123456789abcdef0123456789abcdef"},
        {"id":"ops","type":"webhook","url":format!("{base}/ops"),"secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
        {"id":"flaky","type":"webhook","url":format!("{base}/flaky"),"events":["server.*"]}]});
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("http://{listen}{path}"))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(r.text().await.ok()?)
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
        "[{:>5.1}s] service ready, settings of acc_42 cached; producing alerts\n",
        start.elapsed().as_secs_f64()
    );

    let monitor =
        json!({"id":"mon_abc123","name":"Production API","url":"https://api.example.com/health"});
    let down = json!({"event":"monitor.down","event_id":"evt_01HZX3","account_id":"acc_42","occurred_at":"2025-01-15T10:30:00Z",
        "monitor":monitor,"alert":{"status":"down","region":"us-east-1","response_time_ms":5023,"status_code":503,"triggered_at":"2025-01-15T10:30:00Z"}});
    let offline = json!({"event":"server.offline","event_id":"evt_01HZX4","account_id":"acc_42","occurred_at":"2025-01-15T10:31:00Z",
        "server":{"id":"srv_7","name":"db-primary","hostname":"db1.internal"},"alert":{"last_seen_at":"2025-01-15T10:29:30Z","triggered_at":"2025-01-15T10:31:00Z"}});
    let recovered = json!({"event":"monitor.recovered","event_id":"evt_01HZX5","account_id":"acc_42","occurred_at":"2025-01-15T10:42:30Z",
        "monitor":monitor,"alert":{"status":"up","region":"us-east-1","response_time_ms":120,"status_code":200,"down_since":"2025-01-15T10:30:00Z","triggered_at":"2025-01-15T10:42:30Z"}});
    produce(&producer, "monitor.alerts", "mon_abc123", &down).await;
    produce(&producer, "server.alerts", "srv_7", &offline).await;

    // 3 alerts × (slack, discord, pagerduty, email, ops) + offline on flaky (503, then its
    // retry) + 1 verification email. The recovery goes out once its alert has been delivered.
    let expected = 3 * 5 + 2 + 1;
    let (mut shown, mut mails_shown, mut recovery_sent) = (0, 0, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while shown + mails_shown < expected && Instant::now() < deadline {
        let at = start.elapsed().as_secs_f64();
        for request in providers.requests().iter().skip(shown) {
            println!("[{at:>5.1}s] {}", describe(request));
            shown += 1;
        }
        for m in mail.mails().iter().skip(mails_shown) {
            println!("[{at:>5.1}s] {}", describe_mail(m));
            mails_shown += 1;
        }
        if !recovery_sent && providers.requests_with("/pagerduty").len() >= 2 {
            produce(&producer, "monitor.alerts", "mon_abc123", &recovered).await;
            recovery_sent = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = get("/metrics").await.unwrap_or_default();
    println!("\nmetrics:");
    for line in metrics.lines().filter(|l| {
        (l.starts_with("sysmos_notify_events_total")
            || l.starts_with("sysmos_notify_deliveries_total")
            || l.starts_with("sysmos_notify_verification_emails_total")
            || l.starts_with("sysmos_notify_config_accounts"))
            && !l.ends_with(" 0")
    }) {
        println!("  {line}");
    }
    shutdown.cancel();
    service.await??;
    let received = shown + mails_shown;
    anyhow::ensure!(
        received >= expected,
        "only {received} of {expected} deliveries arrived within 60s"
    );
    println!(
        "\ndemo done: {received} requests and emails — every alert on every channel, the recovery \
         resolving its PagerDuty incident, one verification email, and the flaky webhook's alert \
         through retry tier 1."
    );
    Ok(())
}
