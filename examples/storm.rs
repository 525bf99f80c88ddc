//! `scripts/storm`: a storm to one channel per provider, against fakes that enforce the
//! providers' documented limits (`testkit::limits`: Slack about one message a second per
//! channel with a burst of 5, Discord 5 per 2 s per webhook, PagerDuty 120 a minute per key).
//! One account sends N alerts at once to one Slack channel, one Discord webhook and one
//! PagerDuty key; meanwhile another account's alerts arrive at R per second at a plain
//! webhook. It prints, per provider, the time until the last alert was accepted (inside a
//! message: alone, or in a digest), the messages and digests, the rate-limit answers it gave
//! and what was dead-lettered, and the other account's produce-to-receipt latency during the
//! storm.
//!
//! Options: `--alerts N` (300), `--calm-rate R` (5), `--no-email` (no email recipient in the
//! storm, as before digests), `--backlog` (the N alerts go to the Slack
//! channel alone, and the run ends once the service has dealt with them: sent, waiting, or
//! dead-lettered for waiting past `delivery.max_pending`; it prints this process's peak RSS,
//! the service's and the fakes' together). The service runs in this process with its default
//! pacing (README "Configuration"); the broker is started here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use sysmos_notify::config::Config;
use testkit::broker::{self, create_topics, free_port, produce};
use testkit::limits::{Enforced, Limit};
use testkit::receiver::Receiver;
use testkit::smtp::SmtpServer;
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "storm.notify";

fn down(event_id: &str, account: &str, monitor: &str) -> Value {
    json!({"event": "monitor.down", "event_id": event_id, "account_id": account,
        "occurred_at": "2025-01-15T10:30:00Z",
        "monitor": {"id": monitor, "name": format!("API {monitor}"), "url": "https://api.example.com/health"},
        "alert": {"status": "down", "region": "us-east-1", "response_time_ms": 5023,
            "status_code": 503, "triggered_at": "2025-01-15T10:30:00Z"}})
}

/// One provider's fake and what it enforces.
struct Fake {
    name: &'static str,
    receiver: Receiver,
    limit: Enforced,
}

impl Fake {
    async fn start(name: &'static str, limit: Limit) -> Self {
        let receiver = Receiver::start().await;
        let limit = Enforced::new(limit);
        receiver.respond_by(limit.responder());
        Self {
            name,
            receiver,
            limit,
        }
    }

    fn accepted(&self) -> usize {
        self.receiver.count() - self.limit.limited()
    }
}

struct Options {
    alerts: usize,
    calm_rate: u64,
    backlog: bool,
    /// The storm account's email recipient (`--no-email` leaves it out, as before digests).
    email: bool,
}

fn options() -> Options {
    let mut o = Options {
        alerts: 300,
        calm_rate: 5,
        backlog: false,
        email: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--backlog" => o.backlog = true,
            "--no-email" => o.email = false,
            "--alerts" | "--calm-rate" => {
                let value: u64 = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{flag} takes a number"));
                if flag == "--alerts" {
                    o.alerts = value.max(1) as usize;
                } else {
                    o.calm_rate = value.max(1);
                }
            }
            _ => {
                panic!("usage: scripts/storm [--alerts N] [--calm-rate R] [--backlog] [--no-email]")
            }
        }
    }
    o
}

/// A series' value in Prometheus text, 0 when absent.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// This process's peak resident set (`VmHWM`), in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    series(
        &status.replace("VmHWM:", "VmHWM ").replace(" kB", ""),
        "VmHWM",
    ) / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let Options {
        alerts,
        calm_rate,
        backlog,
        email,
    } = options();
    sysmos_notify::telemetry::init();
    let data = tempfile::tempdir()?;
    let port = free_port();
    let _broker = Broker(tokio::task::block_in_place(|| {
        broker::start(port, &data.path().join("broker"))
    }));
    let brokers = format!("127.0.0.1:{port}");
    create_topics(&brokers, 4, &[("monitor.alerts", false)]).await;

    let slack = Fake::start("slack", Limit::slack(5)).await;
    let discord = Fake::start("discord", Limit::discord()).await;
    let pagerduty = Fake::start("pagerduty", Limit::pagerduty()).await;
    // Email is paced by the service's own `channels.email` (1/1m, burst 5), not a provider's.
    let smtp = SmtpServer::start().await;
    let calm = Receiver::start().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let env: Vec<(String, String)> = [
        ("KAFKA__BROKERS", brokers.clone()),
        ("KAFKA__TOPIC_PREFIX", PREFIX.to_owned()),
        ("KAFKA__GROUP_ID", "storm".to_owned()),
        ("KAFKA__PARTITIONS", "4".to_owned()),
        ("DELIVERY__ALLOW_PRIVATE_TARGETS", "true".to_owned()),
        ("HTTP__LISTEN", listen.clone()),
        (
            "CHANNELS__SLACK__API_BASE_URL",
            format!("{}/api", slack.receiver.base),
        ),
        (
            "CHANNELS__PAGERDUTY__EVENTS_URL",
            format!("{}/v2/enqueue", pagerduty.receiver.base),
        ),
        ("CHANNELS__EMAIL__SMTP_URL", smtp.url()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("SYSMOS_NOTIFY__{k}"), v))
    .collect();
    let config = Config::load_with_env(None, env)?;
    let kafka = config.kafka.clone();
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(sysmos_notify::run(config, shutdown.clone()));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .create()?;

    let http = reqwest::Client::new();
    let metrics = || async {
        let r = http
            .get(format!("http://{listen}/metrics"))
            .send()
            .await
            .ok()?;
        r.text().await.ok()
    };
    while http
        .get(format!("http://{listen}/readyz"))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let slack_only = json!([
        {"id": "slack", "type": "slack", "bot_token": "xoxb-storm", "channel": "C0STORM"}]);
    let every = json!([
        {"id": "slack", "type": "slack", "bot_token": "xoxb-storm", "channel": "C0STORM"},
        {"id": "discord", "type": "discord", "webhook_url": format!("{}/api/webhooks/1/storm", discord.receiver.base)},
        {"id": "pd", "type": "pagerduty", "integration_key": "0123456789abcdef0123456789abcdef"}]);
    let mut every = every;
    if email {
        every.as_array_mut().expect("a list").push(json!(
            {"id": "email", "type": "email", "recipients": [{"address": "oncall@storm.test", "verified": true}]}));
    }
    let storm = json!({"account_id": "storm", "version": 1,
        "channels": if backlog { slack_only } else { every }});
    let quiet = json!({"account_id": "calm", "version": 1, "channels": [
        {"id": "hook", "type": "webhook", "url": calm.url}]});
    let config_topic = format!("{PREFIX}.config");
    produce(&producer, &config_topic, "storm", &storm).await;
    produce(&producer, &config_topic, "calm", &quiet).await;
    while !metrics()
        .await
        .is_some_and(|m| m.contains("sysmos_notify_config_accounts 2"))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let places = if backlog {
        "one Slack channel"
    } else {
        if email {
            "one Slack channel, one Discord webhook, one PagerDuty key and one email recipient"
        } else {
            "one Slack channel, one Discord webhook and one PagerDuty key"
        }
    };
    println!("storm: {alerts} alerts at once to {places}; another account at {calm_rate}/s");
    let started = Instant::now();
    for chunk in (0..alerts).collect::<Vec<_>>().chunks(5000) {
        let sends = chunk.iter().map(|i| {
            let monitor = format!("mon_{i}");
            let event = down(&format!("evt_storm_{i}"), "storm", &monitor);
            let producer = &producer;
            async move { produce(producer, "monitor.alerts", &monitor, &event).await }
        });
        futures::future::join_all(sends).await;
    }
    println!("produced in {:.1} s", started.elapsed().as_secs_f64());
    let every_fake = [&slack, &discord, &pagerduty];
    let fakes = if backlog {
        &every_fake[..1]
    } else {
        &every_fake[..]
    };
    let dead_series = "sysmos_notify_deliveries_total{channel=\"slack\",outcome=\"dead_lettered\"}";
    let (mut dead_seen, mut dead_since) = (0.0, Instant::now());
    let mut done: HashMap<&'static str, Duration> = HashMap::new();
    let produced_calm: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut next_calm = Instant::now();
    let mut calm_sent = 0;
    let deadline = started + Duration::from_secs(if backlog { 3600 } else { 900 });
    let delivered = |text: &str, channel: &str| {
        let name = format!(
            "sysmos_notify_deliveries_total{{channel=\"{channel}\",outcome=\"delivered\"}}"
        );
        series(text, &name)
    };
    let mut email_done: Option<Duration> = None;
    while (done.len() < fakes.len() || (!backlog && email && email_done.is_none()))
        && Instant::now() < deadline
    {
        let text = metrics().await.unwrap_or_default();
        if backlog {
            // Done once the dead letters stop growing: the rest is sent or waiting its turn.
            let dead = series(&text, dead_series);
            if dead != dead_seen {
                (dead_seen, dead_since) = (dead, Instant::now());
            } else if dead > 0.0 && dead_since.elapsed() > Duration::from_secs(15) {
                println!(
                    "dealt with after {:.1} s: {dead} dead-lettered (their turn lay past delivery.max_pending), {} accepted in {} messages; peak RSS {:.1} MiB",
                    (dead_since - started).as_secs_f64(),
                    delivered(&text, "slack"),
                    slack.accepted(),
                    peak_rss_mib()
                );
                break;
            }
        }
        // Every alert inside an accepted message (a digest's alerts count one delivery each).
        if email_done.is_none() && delivered(&text, "email") >= alerts as f64 {
            email_done = Some(started.elapsed());
        }
        for fake in fakes {
            if delivered(&text, fake.name) >= alerts as f64 {
                done.entry(fake.name).or_insert_with(|| started.elapsed());
            }
        }
        if Instant::now() >= next_calm {
            let monitor = format!("calm_{calm_sent}");
            produced_calm
                .lock()
                .expect("calm lock")
                .insert(monitor.clone(), Instant::now());
            produce(
                &producer,
                "monitor.alerts",
                &monitor,
                &down(&format!("evt_calm_{calm_sent}"), "calm", &monitor),
            )
            .await;
            calm_sent += 1;
            next_calm += Duration::from_millis(1000 / calm_rate);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // the last calm alerts land
    let produced = produced_calm.lock().expect("calm lock").clone();
    // Per calm alert: when it was produced (from the storm's start) and how long it took.
    let calm_alerts: Vec<(Duration, Duration)> = calm
        .requests()
        .iter()
        .filter_map(|r| {
            let monitor = r.json()["monitor"]["id"].as_str()?.to_owned();
            let at = *produced.get(&monitor)?;
            Some((
                at.saturating_duration_since(started),
                r.at.saturating_duration_since(at),
            ))
        })
        .collect();
    let latencies_within = |from: u64, to: u64| -> Vec<Duration> {
        let window = Duration::from_secs(from)..Duration::from_secs(to);
        let mut within: Vec<Duration> = calm_alerts
            .iter()
            .filter(|(at, _)| window.contains(at))
            .map(|(_, took)| *took)
            .collect();
        within.sort();
        within
    };
    let latencies = latencies_within(0, u64::MAX / 2);
    let percentile = |latencies: &[Duration], p: usize| {
        latencies
            .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1000.0
    };
    // A backlog's dead letters are counted from the metrics: reading a million back is slow.
    let dead: Vec<Value> = if backlog {
        Vec::new()
    } else {
        sysmos_notify::ops::read_topic(&kafka, &format!("{PREFIX}.dlq"))?
            .iter()
            .filter_map(|m| serde_json::from_slice(rdkafka::Message::payload(m)?).ok())
            .collect()
    };
    let text = metrics().await.unwrap_or_default();
    println!("\n| provider | last alert accepted after | alerts accepted | messages | of them digests | rate-limit answers (429) | dead-lettered |");
    println!("|---|---|---|---|---|---|---|");
    for fake in fakes.iter().copied() {
        let dead_here = dead
            .iter()
            .filter(|l| l["delivery"]["channel_type"] == fake.name)
            .count();
        let after = done
            .get(fake.name)
            .map_or("not all within 15 minutes".to_owned(), |d| {
                format!("{:.1} s", d.as_secs_f64())
            });
        let digests = format!("sysmos_notify_digests_total{{channel=\"{}\"}}", fake.name);
        println!(
            "| {} | {after} | {} of {alerts} | {} | {} | {} | {dead_here} |",
            fake.name,
            delivered(&text, fake.name),
            fake.accepted(),
            series(&text, &digests),
            fake.limit.limited(),
        );
    }
    if !backlog && email {
        let after = email_done.map_or("not all within 15 minutes".to_owned(), |d| {
            format!("{:.1} s", d.as_secs_f64())
        });
        let dead_here = dead
            .iter()
            .filter(|l| l["delivery"]["channel_type"] == "email")
            .count();
        println!(
            "| email | {after} | {} of {alerts} | {} | {} | {} (SMTP 421/454) | {dead_here} |",
            delivered(&text, "email"),
            smtp.mails().len(),
            series(&text, "sysmos_notify_digests_total{channel=\"email\"}"),
            series(&text, "sysmos_notify_rate_limited_total{channel=\"email\"}"),
        );
    }
    println!("\naccepted per 20 s (from the storm's start):");
    for fake in fakes.iter().copied() {
        let mut per: Vec<usize> = Vec::new();
        let limited: Vec<_> = fake.receiver.requests();
        for r in &limited {
            let slot = (r.at.saturating_duration_since(started).as_secs() / 20) as usize;
            if per.len() <= slot {
                per.resize(slot + 1, 0);
            }
            per[slot] += 1;
        }
        println!("  {:<9} {per:?} (requests, 429s included)", fake.name);
    }
    println!(
        "\nthe other account during the storm: {} of {calm_sent} alerts received; produce-to-receipt p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        latencies.len(),
        percentile(&latencies, 50),
        percentile(&latencies, 99),
        percentile(&latencies, 100),
    );
    // The same windows whatever ends the run, so runs of different lengths compare.
    for (from, to) in [(0, 60), (60, 170)] {
        let within = latencies_within(from, to);
        println!(
            "  produced {from}-{to} s into the storm: {} alerts, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            within.len(),
            percentile(&within, 50),
            percentile(&within, 99),
            percentile(&within, 100),
        );
    }
    for line in text
        .lines()
        .filter(|l| l.starts_with("sysmos_notify_rate_limited_total"))
    {
        println!("{line}");
    }
    shutdown.cancel();
    let _ = service.await;
    Ok(())
}

/// The broker process, killed when the run ends, however it ends.
struct Broker(std::process::Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
