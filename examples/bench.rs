//! `scripts/bench`: how close the service comes to the broker's own limit. In one run on one
//! machine it starts the broker, writes the settings of M accounts with K channels each
//! (webhooks spread over several local ports, plus the Slack and PagerDuty fakes, all
//! answering after `--delay-ms`), loads N events, runs the service binary and prints
//! events/s, deliveries/s, produce-to-receipt latency, the service's peak RSS and CPU per
//! 1,000 deliveries. Then, on the same broker, the pipe baseline: N messages consumed, K
//! copies of each produced and consumed again, with the service's own client settings and
//! nothing else; and the ratio of the two.
//!
//! Options: `--events N` (20000), `--accounts M` (100), `--channels K` (3), `--delay-ms D`
//! (0), `--rate R` (0: all events are loaded before the service starts, an alert storm; R > 0:
//! the service runs first and events arrive at R per second), `--partitions P` (4),
//! `--no-baseline`, `--transactions` (a second baseline whose copies and read offsets are
//! committed in Kafka transactions every 100 ms, as an exactly-once router would), `--tls` (the receivers speak TLS and offer HTTP/2, as providers do),
//! `--env KEY=VALUE` (repeatable: service environment, e.g.
//! `SYSMOS_NOTIFY__DELIVERY__MAX_IN_FLIGHT=2048`), `--client PROPERTY=VALUE` (repeatable:
//! librdkafka properties for the service and the baseline alike, e.g. `linger.ms=20`).
//! Environment: `SYSMOS_BIN` (the service binary).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::Message;
use serde_json::json;

use testkit::broker::create_topics;
use testkit::service::{now_ms, Instance, Setting};
use testkit::tls;

const USAGE: &str = "usage: scripts/bench [--events N] [--accounts M] [--channels K] [--delay-ms D]
                     [--rate R] [--partitions P] [--no-baseline] [--transactions] [--tls]
                     [--env KEY=VALUE ...] [--client PROPERTY=VALUE ...]
BENCHMARKS.md says what each option does and what the figures mean.";

/// Webhooks are spread over this many local ports: each port is a destination of its own,
/// as distinct customer endpoints are.
const WEBHOOK_PORTS: usize = 8;

struct Options {
    events: u64,
    accounts: u64,
    channels: u64,
    delay: Duration,
    rate: u64,
    partitions: i32,
    baseline: bool,
    /// A second pipe baseline whose fan-out is committed in Kafka transactions.
    transactions: bool,
    /// Receivers over TLS offering HTTP/2 and HTTP/1.1 (ALPN), trusted by `delivery.ca_file`.
    tls: bool,
    env: Vec<(String, String)>,
    /// librdkafka properties for the service and the baseline alike (`[kafka.client]`).
    client: Vec<(String, String)>,
}

fn options() -> Options {
    let mut o = Options {
        events: 20_000,
        accounts: 100,
        channels: 3,
        delay: Duration::ZERO,
        rate: 0,
        partitions: 4,
        baseline: true,
        transactions: false,
        tls: false,
        env: Vec::new(),
        client: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if flag == "--no-baseline" {
            o.baseline = false;
            continue;
        }
        if flag == "--transactions" {
            o.transactions = true;
            continue;
        }
        if flag == "--tls" {
            o.tls = true;
            continue;
        }
        let value = args.next().unwrap_or_else(|| panic!("{flag}: a value"));
        let number = || {
            value
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{flag}: a number"))
        };
        match flag.as_str() {
            "--events" => o.events = number().max(1),
            "--accounts" => o.accounts = number().max(1),
            "--channels" => o.channels = number().max(1),
            "--delay-ms" => o.delay = Duration::from_millis(number()),
            "--rate" => o.rate = number(),
            "--partitions" => o.partitions = number().max(1) as i32,
            "--env" => {
                let (k, v) = value.split_once('=').expect("--env KEY=VALUE");
                o.env.push((k.to_owned(), v.to_owned()));
            }
            "--client" => {
                let (k, v) = value.split_once('=').expect("--client PROPERTY=VALUE");
                o.client.push((k.to_owned(), v.to_owned()));
            }
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// What the fake providers received.
#[derive(Default)]
struct Received {
    count: AtomicU64,
    /// Connections the fake providers accepted: how well the service reuses them.
    connections: AtomicU64,
    /// Requests that came over HTTP/2.
    http2: AtomicU64,
    /// (produced at, produce-to-receipt), ms, for every request that carries `produced_at_ms`.
    latencies: Mutex<Vec<(i64, i64)>>,
}

/// `"produced_at_ms":123` anywhere in a body (webhooks carry the alert, PagerDuty its
/// custom_details; Slack's rendering does not show it).
fn produced_at(body: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"produced_at_ms\":";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits: String = body[at..]
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| b.is_ascii_digit())
        .map(|b| *b as char)
        .collect();
    digits.parse().ok()
}

/// A fake provider on `listener`: answers each request after `delay` as Slack, PagerDuty or
/// a webhook receiver would, and counts it.
async fn serve(
    listener: std::net::TcpListener,
    delay: Duration,
    tls: Option<tls::TlsAcceptor>,
    received: Arc<Received>,
) {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        received.connections.fetch_add(1, Ordering::Relaxed);
        let received = received.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = move |req: Request<hyper::body::Incoming>| {
                let received = received.clone();
                async move {
                    if req.version() == hyper::Version::HTTP_2 {
                        received.http2.fetch_add(1, Ordering::Relaxed);
                    }
                    let path = req.uri().path().to_owned();
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    if let Some(produced) = produced_at(&body) {
                        let latency = now_ms() - produced;
                        received.latencies.lock().unwrap().push((produced, latency));
                    }
                    received.count.fetch_add(1, Ordering::Relaxed);
                    let (status, answer) = if path.starts_with("/api/") {
                        (200, r#"{"ok":true,"channel":"C1","ts":"1.2"}"#)
                    } else if path.starts_with("/v2/") {
                        (202, r#"{"status":"success","message":"Event processed"}"#)
                    } else {
                        (200, "{}")
                    };
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(answer)))
                            .unwrap(),
                    )
                }
            };
            tls::serve(stream, tls.as_ref(), service).await;
        });
    }
}

/// Channel `k` of an account: webhooks, Slack and PagerDuty in turn (the Slack and PagerDuty
/// URLs are in the service config).
fn channel(k: u64, account: u64, ports: &[u16], scheme: &str) -> serde_json::Value {
    match k % 3 {
        0 => {
            let port = ports[((account + k) as usize) % ports.len()];
            json!({"id": format!("hook{k}"), "type": "webhook",
                   "url": format!("{scheme}://127.0.0.1:{port}/hooks/{account}/{k}")})
        }
        1 => json!({"id": format!("slack{k}"), "type": "slack",
                    "bot_token": format!("xoxb-bench-{account}"), "channel": "C1"}),
        _ => json!({"id": format!("pd{k}"), "type": "pagerduty",
                    "integration_key": format!("{account:032x}")}),
    }
}

fn event(i: u64, accounts: u64) -> String {
    let monitor = i % 1000;
    json!({"event": "monitor.down", "event_id": format!("evt_{i}"),
        "account_id": format!("acc_{}", i % accounts),
        "occurred_at": chrono::Utc::now().to_rfc3339(),
        "monitor": {"id": format!("mon_{monitor}"), "name": format!("API {monitor}"),
                    "url": format!("https://api.example.com/{monitor}/health")},
        "alert": {"status": "down", "region": "us-east-1", "response_time_ms": 5023,
                  "status_code": 503, "error": "HTTP 503 Service Unavailable",
                  "triggered_at": chrono::Utc::now().to_rfc3339(), "produced_at_ms": now_ms()}})
    .to_string()
}

/// Produces `events` to `topic` (at `rate` per second, or as fast as the broker takes them),
/// every send acknowledged.
async fn produce(producer: &FutureProducer, topic: &str, events: u64, accounts: u64, rate: u64) {
    let mut pending = FuturesUnordered::new();
    let started = Instant::now();
    for i in 0..events {
        if let Some(micros) = (i * 1_000_000).checked_div(rate) {
            let due = started + Duration::from_micros(micros);
            tokio::time::sleep_until(due.into()).await;
        }
        let payload = event(i, accounts);
        let key = format!("mon_{}", i % 1000);
        let producer = producer.clone();
        let topic = topic.to_owned();
        // Spawned, so the send starts now (a future in `pending` would wait to be polled).
        pending.push(tokio::spawn(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(120),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("the broker takes the event");
        }));
        while pending.len() >= 10_000 {
            pending.next().await;
        }
    }
    while pending.next().await.is_some() {}
}

/// (user + system CPU seconds, peak RSS in MiB) of a process.
fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    (ticks / 100.0, hwm_kb / 1024.0)
}

/// The machine's CPU time so far, from the first line of `/proc/stat`.
struct MachineTicks {
    busy: u64,
    total: u64,
}

/// How busy the machine was between two readings.
struct MachineUse {
    /// Busy share of all cores, 0 to 1.
    busy: f64,
    cores: usize,
}

fn machine_ticks() -> MachineTicks {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    let total: u64 = ticks.iter().take(8).sum();
    MachineTicks {
        busy: total - idle,
        total,
    }
}

impl MachineTicks {
    fn since(&self, start: &MachineTicks) -> MachineUse {
        let total = self.total.saturating_sub(start.total).max(1);
        MachineUse {
            busy: self.busy.saturating_sub(start.busy) as f64 / total as f64,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// The `n` seconds of production whose requests took longest (max), as `+s: max ms`, so a
/// steady run shows whether its tail is one stall or spread out.
fn slowest_seconds(timed: &[(i64, i64)], n: usize) -> String {
    let Some(first) = timed.iter().map(|(at, _)| *at).min() else {
        return "none".into();
    };
    let mut worst: std::collections::BTreeMap<i64, i64> = Default::default();
    for (at, latency) in timed {
        let slot = worst.entry((at - first) / 1000).or_default();
        *slot = (*slot).max(*latency);
    }
    let mut seconds: Vec<(i64, i64)> = worst.into_iter().collect();
    seconds.sort_by_key(|(_, latency)| std::cmp::Reverse(*latency));
    let shown: Vec<String> = seconds
        .iter()
        .take(n)
        .map(|(second, latency)| format!("+{second}s: {latency} ms"))
        .collect();
    shown.join(", ")
}

fn percentile(sorted: &[i64], p: usize) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) * p) / 100]
}

async fn wait_ready(port: u16) {
    let url = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = reqwest::get(&url).await {
            if r.status().as_u16() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "service not ready after 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `received` reaches `expected` or nothing arrives for `idle`; the instant of
/// the last receipt.
async fn wait_received(received: &Received, expected: u64, idle: Duration) -> Instant {
    let (mut last, mut at) = (0, Instant::now());
    loop {
        let now = received.count.load(Ordering::Relaxed);
        if now != last {
            (last, at) = (now, Instant::now());
        }
        if now >= expected || at.elapsed() > idle {
            return at;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (records, entries) the service wrote to `P.handled`: how well its writes were batched.
fn handled_written(kafka: &sysmos_notify::config::KafkaConfig) -> anyhow::Result<(usize, usize)> {
    let records = sysmos_notify::ops::read_topic(kafka, "bench.notify.handled")?;
    let entries = records
        .iter()
        .filter_map(|m| m.payload())
        .filter_map(|p| sysmos_notify::ledger::entries_of(p).ok())
        .map(|entries| entries.len())
        .sum();
    Ok((records.len(), entries))
}

/// The pipe baseline: N messages consumed from one topic, K copies of each produced to a
/// second, and those consumed; messages per second moved through the second topic.
/// What the pipe cost the machine, from its source loaded to its last message counted.
struct PipeCost {
    busy: f64,
    cores: usize,
    broker_cpu: f64,
    pipe_cpu: f64,
    /// Each copy's wait from its production to its consumption, sorted (ms).
    visible_ms: Vec<i64>,
    /// Transactions committed, and their mean commit time (read offsets sent with them).
    commits: u64,
    commit_ms: f64,
}

impl PipeCost {
    fn print_machine(&self) {
        println!(
            "  machine while it ran: {:.0}% of {} cores busy; CPU s: broker {:.1}, bench process (the pipe) {:.1}",
            100.0 * self.busy,
            self.cores,
            self.broker_cpu,
            self.pipe_cpu
        );
    }
}

/// With `--transactions`, the pipe commits what it wrote and the offsets it read this often,
/// as a router fanning out in transactions would.
const TRANSACTION_EVERY: Duration = Duration::from_millis(100);

async fn pipe(
    kafka: &sysmos_notify::config::KafkaConfig,
    opts: &Options,
    broker_pid: u32,
    transactions: bool,
) -> (u64, f64, PipeCost) {
    let (source, sink, group) = if transactions {
        ("bench.txpipe.in", "bench.txpipe.out", "bench.txpipe")
    } else {
        ("bench.pipe.in", "bench.pipe.out", "bench.pipe")
    };
    create_topics(
        &kafka.brokers,
        opts.partitions,
        &[(source, false), (sink, false)],
    )
    .await;
    let producer: FutureProducer = sysmos_notify::kafka::client::producer(kafka)
        .create()
        .unwrap();
    produce(&producer, source, opts.events, opts.accounts, 0).await;
    let producer: FutureProducer = if transactions {
        let mut config = sysmos_notify::kafka::client::producer(kafka);
        config.set("transactional.id", "bench.txpipe");
        let producer: FutureProducer = config.create().unwrap();
        producer
            .init_transactions(Duration::from_secs(30))
            .expect("transactions: init");
        producer.begin_transaction().expect("transactions: begin");
        producer
    } else {
        producer
    };
    let (broker_start, _) = usage(broker_pid);
    let (pipe_start, _) = usage(std::process::id());
    let machine_start = machine_ticks();
    let expected = opts.events * opts.channels;
    let reader: StreamConsumer = sysmos_notify::kafka::client::group_consumer(kafka, group)
        .create()
        .unwrap();
    reader.subscribe(&[source]).unwrap();
    let counter: StreamConsumer =
        sysmos_notify::kafka::client::group_consumer(kafka, &format!("{group}.out"))
            .create()
            .unwrap();
    counter.subscribe(&[sink]).unwrap();
    // The clock starts at the first message read, once the group is joined, as the
    // service's starts at `/readyz`: joining a group takes a second or more, and counting
    // it would flatter the service at small N.
    let first_read = Arc::new(std::sync::OnceLock::new());
    let moving = {
        let (producer, copies) = (producer.clone(), opts.channels);
        let first_read = first_read.clone();
        tokio::spawn(async move {
            let mut moved = 0;
            let (mut commits, mut committing) = (0u64, Duration::ZERO);
            let mut since_commit = Instant::now();
            let commit = |producer: &FutureProducer, reader: &StreamConsumer| {
                let offsets = reader.position().unwrap();
                let group = reader.group_metadata().unwrap();
                let t = Duration::from_secs(30);
                tokio::task::block_in_place(|| {
                    producer.send_offsets_to_transaction(&offsets, &group, t)?;
                    producer.commit_transaction(t)?;
                    producer.begin_transaction()
                })
                .expect("transactions: commit");
            };
            while moved < expected {
                let message = reader.recv().await.unwrap();
                first_read.get_or_init(Instant::now);
                if transactions && since_commit.elapsed() >= TRANSACTION_EVERY {
                    let started = Instant::now();
                    commit(&producer, &reader);
                    (commits, committing) = (commits + 1, committing + started.elapsed());
                    since_commit = Instant::now();
                }
                for k in 0..copies {
                    let key = format!("{k}");
                    let record = FutureRecord::to(sink)
                        .key(&key)
                        .payload(message.payload().unwrap_or_default());
                    let mut record = record;
                    loop {
                        match producer.send_result(record) {
                            Ok(_) => break,
                            Err((_, back)) => {
                                record = back;
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                        }
                    }
                    moved += 1;
                }
            }
            if transactions {
                let started = Instant::now();
                commit(&producer, &reader);
                (commits, committing) = (commits + 1, committing + started.elapsed());
            }
            producer
                .flush(Timeout::After(Duration::from_secs(60)))
                .unwrap();
            (commits, committing)
        })
    };
    let mut counted = 0;
    let mut visible_ms = Vec::with_capacity(expected as usize);
    while counted < expected {
        match tokio::time::timeout(Duration::from_secs(60), counter.recv()).await {
            Ok(Ok(m)) => {
                counted += 1;
                if let Some(produced) = m.timestamp().to_millis() {
                    visible_ms.push(now_ms() - produced);
                }
            }
            Ok(Err(e)) => panic!("pipe: {e}"),
            Err(_) => break,
        }
    }
    let elapsed = first_read
        .get()
        .map_or(0.0, |started: &Instant| started.elapsed().as_secs_f64());
    let machine = machine_ticks().since(&machine_start);
    let (commits, committing) = match tokio::time::timeout(Duration::from_secs(5), moving).await {
        Ok(Ok(done)) => done,
        _ => (0, Duration::ZERO),
    };
    visible_ms.sort_unstable();
    let cost = PipeCost {
        busy: machine.busy,
        cores: machine.cores,
        broker_cpu: usage(broker_pid).0 - broker_start,
        pipe_cpu: usage(std::process::id()).0 - pipe_start,
        visible_ms,
        commits,
        commit_ms: committing.as_secs_f64() * 1000.0 / commits.max(1) as f64,
    };
    (counted, counted as f64 / elapsed, cost)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let opts = options();
    let mut setting = tokio::task::block_in_place(Setting::start);
    let (bin, work, brokers) = (
        setting.bin.clone(),
        setting.work.clone(),
        setting.brokers.clone(),
    );
    let expected = opts.events * opts.channels;
    println!(
        "bench: {} events × {} channels = {expected} deliveries, {} accounts, receivers answer after {} ms{}, {}; broker {brokers}",
        opts.events,
        opts.channels,
        opts.accounts,
        opts.delay.as_millis(),
        if opts.tls { " over TLS (h2, http/1.1)" } else { "" },
        if opts.rate == 0 { "all events loaded first (storm)".to_owned() } else { format!("{} events/s while the service runs", opts.rate) },
    );

    let received = Arc::new(Received::default());
    // Bound here, before any is served: a port picked and released could be picked twice.
    let listeners: Vec<std::net::TcpListener> = (0..WEBHOOK_PORTS + 2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    // Slack and PagerDuty are hosts of their own, as they are: over HTTP/2 each is one
    // connection per client, its streams limited by the fake's 200 (hyper's default).
    let (slack, pagerduty) = (ports[WEBHOOK_PORTS], ports[WEBHOOK_PORTS + 1]);
    ports.truncate(WEBHOOK_PORTS);
    let acceptor = opts.tls.then(tls::acceptor);
    let scheme = if opts.tls { "https" } else { "http" };
    for listener in listeners {
        tokio::spawn(serve(
            listener,
            opts.delay,
            acceptor.clone(),
            received.clone(),
        ));
    }
    let config = work.join("bench.toml");
    std::fs::write(
        &config,
        format!(
            r#"[kafka]
brokers = "{brokers}"
group_id = "bench"
event_topics = ["^bench\\.monitor\\..*"]
topic_prefix = "bench.notify"
partitions = {partitions}
[kafka.client]
{client}
[delivery]
timeout = "10s"
allow_private_targets = true
{ca_file}
[channels.slack]
api_base_url = "{scheme}://127.0.0.1:{slack}/api"
[channels.pagerduty]
events_url = "{scheme}://127.0.0.1:{pagerduty}/v2/enqueue"
"#,
            // Left out without TLS: an empty `ca_file` is refused.
            ca_file = if opts.tls {
                format!("ca_file = {:?}", tls::ca_file())
            } else {
                String::new()
            },
            partitions = opts.partitions,
            client = opts
                .client
                .iter()
                .map(|(k, v)| format!("{k:?} = {v:?}"))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    )
    .unwrap();
    create_topics(
        &brokers,
        opts.partitions,
        &[
            ("bench.monitor.alerts", false),
            ("bench.notify.config", true),
        ],
    )
    .await;
    // The service's own Kafka settings, for the producer here and the baseline.
    let kafka = sysmos_notify::config::Config::load_with_env(Some(&config), std::iter::empty())
        .unwrap()
        .kafka;
    let producer: FutureProducer = sysmos_notify::kafka::client::producer(&kafka)
        .create()
        .unwrap();
    // The events topic's leader is looked up now, not by the first measured event.
    producer
        .client()
        .fetch_metadata(Some("bench.monitor.alerts"), Duration::from_secs(10))
        .expect("metadata of the events topic");
    for account in 0..opts.accounts {
        let channels: Vec<_> = (0..opts.channels)
            .map(|k| channel(k, account, &ports, scheme))
            .collect();
        let settings =
            json!({"account_id": format!("acc_{account}"), "version": 1, "channels": channels});
        producer
            .send(
                FutureRecord::to("bench.notify.config")
                    .key(&format!("acc_{account}"))
                    .payload(&settings.to_string()),
                Duration::from_secs(60),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let mut service = Instance::new("service");
    service.env = opts.env.clone();
    let loading = Instant::now();
    if opts.rate == 0 {
        produce(
            &producer,
            "bench.monitor.alerts",
            opts.events,
            opts.accounts,
            0,
        )
        .await;
        println!(
            "[{:>6.1}s] loaded {} events ({:.0} events/s into the broker)",
            loading.elapsed().as_secs_f64(),
            opts.events,
            opts.events as f64 / loading.elapsed().as_secs_f64()
        );
    }
    service.start(&bin, &config, &work, "warn");
    let pid = service.pid().unwrap();
    wait_ready(service.port).await;
    let (cpu_start, _) = usage(pid);
    let (broker_start, _) = usage(setting.broker.id());
    let (bench_start, _) = usage(std::process::id());
    let machine_start = machine_ticks();
    let started = Instant::now();
    println!("[{:>6.1}s] service ready", loading.elapsed().as_secs_f64());
    if opts.rate > 0 {
        produce(
            &producer,
            "bench.monitor.alerts",
            opts.events,
            opts.accounts,
            opts.rate,
        )
        .await;
    }
    let last = wait_received(&received, expected, Duration::from_secs(60)).await;
    let elapsed = (last - started).as_secs_f64();
    let (cpu_end, peak_mib) = usage(pid);
    let (broker_cpu, broker_mib) = usage(setting.broker.id());
    let (bench_cpu, _) = usage(std::process::id());
    let machine = machine_ticks().since(&machine_start);
    service.terminate();
    let delivered = received.count.load(Ordering::Relaxed);
    let timed = std::mem::take(&mut *received.latencies.lock().unwrap());
    let mut latencies: Vec<i64> = timed.iter().map(|(_, latency)| *latency).collect();
    latencies.sort_unstable();
    let deliveries_per_s = delivered as f64 / elapsed;
    println!("\nservice");
    println!("  delivered:            {delivered} of {expected} in {elapsed:.1} s");
    println!(
        "  events/s:             {:.0}",
        opts.events as f64 * delivered as f64 / expected as f64 / elapsed
    );
    println!("  deliveries/s:         {deliveries_per_s:.0}");
    println!(
        "  HTTP connections:     {} for {delivered} requests, {} over HTTP/2",
        received.connections.load(Ordering::Relaxed),
        received.http2.load(Ordering::Relaxed)
    );
    println!(
        "  produce→receipt:      p50 {} ms, p99 {} ms, max {} ms ({} webhook and PagerDuty requests)",
        percentile(&latencies, 50),
        percentile(&latencies, 99),
        latencies.last().copied().unwrap_or(0),
        latencies.len()
    );
    if opts.rate > 0 {
        println!("  slowest seconds:      {}", slowest_seconds(&timed, 3));
    }
    println!("  peak RSS:             {peak_mib:.1} MiB");
    println!(
        "  CPU:                  {:.2} s, {:.3} s per 1,000 deliveries",
        cpu_end - cpu_start,
        (cpu_end - cpu_start) * 1000.0 / delivered.max(1) as f64
    );
    println!("  broker so far:        {broker_cpu:.1} CPU s, peak RSS {broker_mib:.0} MiB");
    println!(
        "  machine while it ran: {:.0}% of {} cores busy; CPU s: service {:.1}, broker {:.1}, \
         bench process (fake receivers, producer) {:.1}",
        100.0 * machine.busy,
        machine.cores,
        cpu_end - cpu_start,
        broker_cpu - broker_start,
        bench_cpu - bench_start
    );
    match handled_written(&kafka) {
        Ok((records, entries)) => {
            println!("  P.handled:            {entries} entries in {records} records")
        }
        Err(error) => println!("  P.handled:            not counted: {error:#}"),
    }

    if opts.baseline {
        let (moved, per_s, cost) = pipe(&kafka, &opts, setting.broker.id(), false).await;
        println!(
            "\npipe baseline (consume → produce ×{} → consume, same broker and client settings)",
            opts.channels
        );
        println!("  moved:                {moved} of {expected}");
        println!("  messages/s:           {per_s:.0}");
        cost.print_machine();
        println!(
            "  produce→consume:      p50 {} ms, p99 {} ms",
            percentile(&cost.visible_ms, 50),
            percentile(&cost.visible_ms, 99)
        );
        println!(
            "  service / baseline:   {:.0}%",
            100.0 * deliveries_per_s / per_s
        );
        if opts.transactions {
            let (tx_moved, tx_per_s, tx) = pipe(&kafka, &opts, setting.broker.id(), true).await;
            println!(
                "\npipe in transactions (the same, the copies and the read offsets committed together every {TRANSACTION_EVERY:?})"
            );
            println!("  moved:                {tx_moved} of {expected}");
            println!(
                "  messages/s:           {tx_per_s:.0} ({:.0}% of the plain pipe)",
                100.0 * tx_per_s / per_s
            );
            println!(
                "  commits:              {}, {:.1} ms each on average",
                tx.commits, tx.commit_ms
            );
            println!(
                "  produce→consume:      p50 {} ms, p99 {} ms (read_committed: a copy is seen once its transaction commits)",
                percentile(&tx.visible_ms, 50),
                percentile(&tx.visible_ms, 99)
            );
            tx.print_machine();
        }
    }
    setting.stop_broker();
    // The broker's data is gigabytes after a million events; the logs stay for a look.
    let _ = std::fs::remove_dir_all(&setting.data);
    println!("\nlogs: {}", setting.work.display());
    if delivered < expected {
        eprintln!("bench: only {delivered} of {expected} deliveries arrived");
        std::process::exit(1);
    }
}
