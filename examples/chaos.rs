//! `scripts/chaos`: nothing lost, and no false dead letter, under faults. Events of several
//! accounts flow for a while to webhook receivers on one host (as many tenants' hooks share
//! one), which fail at random (503, at most twice per delivery, so every delivery can succeed
//! within the retry tiers) and are slow for a few seconds at random (answers after up to 5 s,
//! past the 3 s request timeout), while two service instances share one consumer group. Each
//! account's last channel is rate-limited: its settings carry a `rate` of the account's event
//! rate (below what the retries need) and the receiver enforces that limit with 429 and
//! `Retry-After`, so a backlog waits for its bucket (in memory and in the retry tiers) through
//! the faults, and a restarted instance's full bucket meets the receiver's empty one. At random
//! moments an instance is killed with SIGKILL and restarted, the second instance leaves and
//! rejoins, and the broker is restarted once. Then it waits for the pipeline to drain (until
//! every delivery has arrived, or none has for a minute) and prints what was produced,
//! expected, delivered, lost (must be 0) and duplicated, the dead letters by what they are
//! (an attempt that timed out and that the receiver processed anyway, or an answered delivery
//! whose `P.handled` mark a kill prevented; any other is a false dead letter, which fails the
//! run), and the longest delay.
//!
//! Options: `--duration SECONDS` (75), `--rate EVENTS_PER_SECOND` (20), `--accounts N` (20),
//! `--channels K` (2), `--seed N`. Environment: `SYSMOS_BIN` (the service binary).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;

use testkit::broker::create_topics;
use testkit::limits::{Enforced, Limit};
use testkit::receiver::{Receiver, Reply};
use testkit::service::{now_ms, Instance, Setting};

/// No delivery for this long while draining: what is still missing is lost.
const STALLED: Duration = Duration::from_secs(60);

/// A small deterministic generator (xorshift64*), so a seed replays the same chaos.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Options {
    duration: Duration,
    rate: u64,
    accounts: u64,
    channels: usize,
    seed: u64,
}

fn options() -> Options {
    let mut o = Options {
        duration: Duration::from_secs(75),
        rate: 20,
        accounts: 20,
        channels: 2,
        seed: 7,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).map(String::as_str).unwrap_or_default();
        let number = value
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("{}: a number", pair[0]));
        match pair[0].as_str() {
            "--duration" => o.duration = Duration::from_secs(number),
            "--rate" => o.rate = number.max(1),
            "--accounts" => o.accounts = number.max(1),
            "--channels" => o.channels = number.max(1) as usize,
            "--seed" => o.seed = number.max(1),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// What the receivers saw, per webhook-id.
#[derive(Default)]
struct Seen {
    failures: HashMap<String, u32>,
    successes: HashMap<String, u32>,
    /// Per webhook-id: the receiver's path (one per channel) and produce-to-receipt delay.
    delay_ms: HashMap<String, (String, i64)>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let opts = options();
    // Blocking waits (processes, ports) run off the async workers: the receivers live here.
    let mut setting = tokio::task::block_in_place(Setting::start);
    let (bin, work, brokers) = (
        setting.bin.clone(),
        setting.work.clone(),
        setting.brokers.clone(),
    );
    let mut rng = Rng(opts.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);

    // Receivers: each delivery fails at random at most twice, then is answered 200; each
    // account's paced channel first answers 429 past its limit; while `slow_until` lies
    // ahead, answers come after up to 5 s.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let receiver = Receiver::start().await;
    let decide = seen.clone();
    let failing = Arc::new(Mutex::new(Rng(opts.seed + 1)));
    let paced = opts.channels - 1;
    let pace = opts.rate.div_ceil(opts.accounts) as u32;
    let limit = Enforced::new(Limit::webhook(pace));
    let enforce = limit.clone();
    let paced_path = format!("/c{paced}");
    let slow_until = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let slow = slow_until.clone();
    receiver.respond_by(Arc::new(move |request| {
        let after = if now_ms() < slow.load(std::sync::atomic::Ordering::Relaxed) {
            Duration::from_millis(failing.lock().unwrap().below(5000))
        } else {
            Duration::ZERO
        };
        if request.path.ends_with(&paced_path) {
            let answer = enforce.answer(request);
            if answer.status == 429 {
                return answer;
            }
        }
        let id = request
            .headers
            .get("webhook-id")
            .cloned()
            .unwrap_or_default();
        let mut seen = decide.lock().unwrap();
        let failures = seen.failures.get(&id).copied().unwrap_or(0);
        if failures < 2 && failing.lock().unwrap().below(100) < 30 {
            seen.failures.insert(id, failures + 1);
            return Reply::status(503).after(after);
        }
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let produced = body["alert"]["produced_at_ms"]
            .as_i64()
            .unwrap_or_else(now_ms);
        *seen.successes.entry(id.clone()).or_default() += 1;
        let path = request.path.clone();
        seen.delay_ms
            .entry(id)
            .or_insert((path, now_ms() - produced));
        Reply::status(200).after(after)
    }));

    let config = work.join("chaos.toml");
    std::fs::write(
        &config,
        format!(
            r#"[kafka]
brokers = "{brokers}"
group_id = "chaos"
event_topics = ["^chaos\\.monitor\\..*"]
topic_prefix = "chaos.notify"
partitions = 4
[kafka.client]
"topic.metadata.refresh.interval.ms" = "1000"
[retry]
delays = ["1s", "2s", "3s"]
[delivery]
timeout = "3s"
breaker_cooldown = "5s"
allow_private_targets = true
"#
        ),
    )
    .unwrap();
    create_topics(
        &brokers,
        4,
        &[
            ("chaos.monitor.alerts", false),
            ("chaos.notify.config", true),
        ],
    )
    .await;
    let client = |c: &mut ClientConfig| {
        c.set("bootstrap.servers", &brokers)
            .set("message.timeout.ms", "120000")
            .clone()
    };
    let producer: FutureProducer = client(&mut ClientConfig::new())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for a in 0..opts.accounts {
        let account_id = format!("acc{a}");
        let channels: Vec<_> = (0..opts.channels)
            .map(|k| {
                let url = format!("{}/{account_id}/c{k}", receiver.base);
                let mut channel = json!({"id": format!("hook{k}"), "type": "webhook", "url": url});
                if k == paced {
                    channel["rate"] = json!(format!("{pace}/1s"));
                }
                channel
            })
            .collect();
        let account =
            json!({"account_id": account_id, "version": 1, "channels": channels}).to_string();
        producer
            .send(
                FutureRecord::to("chaos.notify.config")
                    .key(&account_id)
                    .payload(&account),
                Duration::from_secs(60),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let log_filter = std::env::var("CHAOS_SERVICE_LOG").unwrap_or_else(|_| "warn".into());
    let mut instances = [Instance::new("a"), Instance::new("b")];
    for instance in &mut instances {
        instance.start(&bin, &config, &work, &log_filter);
    }
    println!(
        "chaos: {}s at {} events/s, {} accounts on one host, {} webhook channels per event (hook{paced} paced at {pace}/s per account), seed {}; broker {brokers}; logs in {}",
        opts.duration.as_secs(),
        opts.rate,
        opts.accounts,
        opts.channels,
        opts.seed,
        work.display()
    );

    // Production, acknowledged: a produce that fails is retried, so `produced` is exact.
    let total = opts.duration.as_secs() * opts.rate;
    let producing = {
        let producer = producer.clone();
        let interval = Duration::from_micros(1_000_000 / opts.rate);
        let accounts = opts.accounts;
        tokio::spawn(async move {
            let mut produced = 0u64;
            let mut tick = tokio::time::interval(interval);
            for i in 0..total {
                tick.tick().await;
                let monitor = format!("mon_{}", i % 16);
                let event = json!({"event": "monitor.down", "event_id": format!("evt_{i}"),
                    "account_id": format!("acc{}", i % accounts), "occurred_at": chrono::Utc::now().to_rfc3339(),
                    "monitor": {"id": monitor, "name": "Chaos API"},
                    "alert": {"status": "down", "produced_at_ms": now_ms()}})
                .to_string();
                loop {
                    let sent = producer
                        .send(
                            FutureRecord::to("chaos.monitor.alerts")
                                .key(&monitor)
                                .payload(&event),
                            Duration::from_secs(120),
                        )
                        .await;
                    if sent.is_ok() {
                        produced += 1;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            produced
        })
    };

    // The chaos itself, until production ends.
    let started = Instant::now();
    let broker_restart_at = opts.duration.mul_f64(0.4);
    let mut broker_restarted = false;
    let mut kills = 0;
    let mut leaves = 0;
    while !producing.is_finished() {
        tokio::time::sleep(Duration::from_secs(3 + rng.below(6))).await;
        if !broker_restarted && started.elapsed() >= broker_restart_at {
            println!(
                "[{:>5.1}s] broker: SIGKILL and restart",
                started.elapsed().as_secs_f64()
            );
            tokio::task::block_in_place(|| setting.stop_broker());
            tokio::time::sleep(Duration::from_secs(2)).await;
            tokio::task::block_in_place(|| setting.restart_broker());
            broker_restarted = true;
            continue;
        }
        match rng.below(4) {
            3 => {
                let lasts = Duration::from_secs(3 + rng.below(4));
                println!(
                    "[{:>5.1}s] receivers: slow for {lasts:?} (answers after up to 5 s)",
                    started.elapsed().as_secs_f64()
                );
                let until = now_ms() + lasts.as_millis() as i64;
                slow_until.store(until, std::sync::atomic::Ordering::Relaxed);
            }
            0 | 1 => {
                let which = rng.below(2) as usize;
                println!(
                    "[{:>5.1}s] instance {}: SIGKILL",
                    started.elapsed().as_secs_f64(),
                    instances[which].name
                );
                tokio::task::block_in_place(|| instances[which].kill());
                kills += 1;
                tokio::time::sleep(Duration::from_millis(500 + rng.below(2500))).await;
                instances[which].start(&bin, &config, &work, &log_filter);
            }
            _ => {
                println!(
                    "[{:>5.1}s] instance b: leaves the group (SIGTERM), rejoins later",
                    started.elapsed().as_secs_f64()
                );
                tokio::task::block_in_place(|| instances[1].terminate());
                leaves += 1;
                tokio::time::sleep(Duration::from_secs(2 + rng.below(4))).await;
                instances[1].start(&bin, &config, &work, &log_filter);
            }
        }
    }
    let produced = producing.await.unwrap();
    let expected = produced * opts.channels as u64;
    println!(
        "[{:>5.1}s] production done: {produced} events; {kills} SIGKILLs, {leaves} leave/rejoin, broker restarted: {broker_restarted}; draining",
        started.elapsed().as_secs_f64()
    );
    // The paced channel drains at its pace, however long its backlog grew: wait while
    // deliveries keep arriving, and call the rest lost once none has for a minute.
    let (mut last_count, mut last_progress) = (0, Instant::now());
    let finished = loop {
        let delivered = seen.lock().unwrap().successes.len() as u64;
        if delivered > last_count {
            (last_count, last_progress) = (delivered, Instant::now());
        }
        if delivered >= expected || last_progress.elapsed() >= STALLED {
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Late duplicates from work repeated after the last kill would show up now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| instances.iter_mut().for_each(Instance::terminate));
    let letters = read_dead_letters(&brokers, "chaos.notify.dlq");
    let reasons = dead_letter_reasons(&letters);
    let backlog = [
        ("chaos", "chaos.monitor.alerts"),
        ("chaos.deliveries", "chaos.notify.deliveries"),
        ("chaos.deliveries", "chaos.notify.retry.1"),
        ("chaos.deliveries", "chaos.notify.retry.2"),
        ("chaos.deliveries", "chaos.notify.retry.3"),
    ]
    .map(|(group, topic)| (topic, uncommitted(&brokers, group, topic)));
    let dead_letters: usize = reasons.iter().map(|(_, n)| n).sum();
    let missing: Vec<String> = {
        let seen = seen.lock().unwrap();
        (0..produced)
            .flat_map(|i| (0..opts.channels).map(move |k| (i, k)))
            .map(|(i, k)| {
                sysmos_notify::model::delivery::delivery_id(
                    &format!("acc{}", i % opts.accounts),
                    &format!("evt_{i}"),
                    &format!("hook{k}"),
                )
            })
            .filter(|id| !seen.successes.contains_key(id))
            .collect()
    };
    let traces = trace(&brokers, &missing);
    let repeated_records = routed_twice(&brokers, "chaos.notify.deliveries");
    setting.stop_broker();

    let seen = seen.lock().unwrap();
    let delivered = seen.successes.len() as u64;
    let duplicated: u64 = seen.successes.values().map(|n| u64::from(n - 1)).sum();
    let lost = expected.saturating_sub(delivered);
    println!("\nevents produced:     {produced}");
    println!("deliveries expected: {expected}");
    println!("delivered:           {delivered}");
    println!("lost:                {lost}");
    println!(
        "duplicated:          {duplicated} ({:.3}% of deliveries)",
        100.0 * duplicated as f64 / expected.max(1) as f64
    );
    let mut repeated: Vec<&String> = seen
        .successes
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    repeated.sort();
    if !repeated.is_empty() {
        let sample: Vec<&str> = repeated.iter().take(5).map(|id| id.as_str()).collect();
        println!("  e.g. {}", sample.join(" "));
    }
    // What each dead letter is: one of the two cases the README explains, or a false one.
    let (mut timed_out, mut unmarked, mut false_letters) = (0, 0, Vec::new());
    for letter in &letters {
        let id = letter["delivery"]["delivery_id"]
            .as_str()
            .unwrap_or_default();
        match (
            seen.successes.contains_key(id),
            letter["may_have_arrived"].as_bool().unwrap_or(false),
        ) {
            (true, true) => timed_out += 1,
            (true, false) => unmarked += 1,
            (false, _) => false_letters.push(id.to_owned()),
        }
    }
    println!("dead letters:        {dead_letters}");
    println!("  timed out, processed by the receiver anyway (may_have_arrived): {timed_out}");
    println!("  answered, its P.handled mark prevented by a kill:              {unmarked}");
    println!(
        "  false (the receiver never accepted it):                          {}",
        false_letters.len()
    );
    println!(
        "rate-limit answers:  {} (hook{paced}, paced at {pace}/s)",
        limit.limited()
    );
    println!(
        "routed twice:        {repeated_records} delivery records written again (events read again after a kill, a rebalance or the broker restart)"
    );
    println!(
        "seconds:             {:.0} (production {}s, drain to the last delivery {:.0}s)",
        finished.as_secs_f64(),
        opts.duration.as_secs(),
        finished.as_secs_f64() - opts.duration.as_secs_f64()
    );
    for (reason, n) in reasons.iter().take(5) {
        println!("  {n} × {reason}");
    }
    for k in 0..opts.channels {
        let path = format!("/c{k}");
        let mut delays: Vec<i64> = seen
            .delay_ms
            .values()
            .filter(|(p, _)| p.ends_with(&path))
            .map(|(_, ms)| *ms)
            .collect();
        delays.sort_unstable();
        let at = |q: usize| {
            delays
                .get(delays.len().saturating_sub(1) * q / 100)
                .copied()
        };
        let seconds = |ms: Option<i64>| ms.unwrap_or(0) as f64 / 1000.0;
        println!(
            "delay, hook{k}:         p50 {:.1} s, p99 {:.1} s, longest {:.1} s{}",
            seconds(at(50)),
            seconds(at(99)),
            seconds(delays.last().copied()),
            if k == paced { " (paced)" } else { "" }
        );
    }
    if lost > 0 {
        for (topic, behind) in &backlog {
            println!("  not committed in {topic}: {behind:?}");
        }
        for line in traces.iter().take(10) {
            println!("  missing {line}");
        }
    }
    if lost > 0 || !false_letters.is_empty() {
        eprintln!(
            "chaos: FAILED: {lost} deliveries lost, {} false dead letters (e.g. {:?})",
            false_letters.len(),
            false_letters.iter().take(3).collect::<Vec<_>>()
        );
        std::process::exit(1);
    }
}

/// The service's Kafka settings for reading the run's topics.
fn kafka_settings(brokers: &str) -> sysmos_notify::config::KafkaConfig {
    let env = [(
        "SYSMOS_NOTIFY__KAFKA__BROKERS".to_owned(),
        brokers.to_owned(),
    )];
    sysmos_notify::config::Config::load_with_env(None, env)
        .expect("valid settings")
        .kafka
}

/// Every dead letter of `topic`, as JSON; a record that cannot be read counts as `null`.
fn read_dead_letters(brokers: &str, topic: &str) -> Vec<serde_json::Value> {
    use rdkafka::Message;
    let records = sysmos_notify::ops::read_topic(&kafka_settings(brokers), topic)
        .expect("the DLQ can be read");
    records
        .iter()
        .map(|m| serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default())
        .collect()
}

/// The dead letters' reasons and attempts, with how many times each occurred.
fn dead_letter_reasons(letters: &[serde_json::Value]) -> Vec<(String, usize)> {
    let mut reasons: HashMap<String, usize> = HashMap::new();
    for letter in letters {
        let reason = letter["reason"].as_str().unwrap_or("unreadable").to_owned();
        let errors: Vec<String> = letter["delivery"]["attempts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                format!(
                    "{} {}",
                    a["at"].as_str().unwrap_or(""),
                    a["error"].as_str().unwrap_or("")
                )
            })
            .collect();
        *reasons
            .entry(format!(
                "{reason}\n      attempts: {}",
                errors.join("\n                ")
            ))
            .or_default() += 1;
    }
    let mut reasons: Vec<_> = reasons.into_iter().collect();
    reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
    reasons
}

/// Delivery records in `topic` beyond the first with the same delivery id: the router's
/// repeated fan-out, which the deliverer's ledger (`P.handled`) keeps from being sent twice.
fn routed_twice(brokers: &str, topic: &str) -> usize {
    use rdkafka::Message;
    let records =
        sysmos_notify::ops::read_topic(&kafka_settings(brokers), topic).unwrap_or_default();
    let mut ids = std::collections::HashSet::new();
    records
        .iter()
        .filter_map(|m| {
            serde_json::from_slice::<serde_json::Value>(m.payload().unwrap_or_default()).ok()
        })
        .filter(|d| !ids.insert(d["delivery_id"].as_str().unwrap_or_default().to_owned()))
        .count()
}

/// For each missing delivery: what the receivers and `P.handled` know of it.
fn trace(brokers: &str, missing: &[String]) -> Vec<String> {
    use rdkafka::Message;
    if missing.is_empty() {
        return Vec::new();
    }
    let handled = sysmos_notify::ops::read_topic(&kafka_settings(brokers), "chaos.notify.handled")
        .unwrap_or_default();
    let mut marks: HashMap<&str, Vec<String>> = HashMap::new();
    let entries = handled
        .iter()
        .filter_map(|m| sysmos_notify::ledger::entries_of(m.payload().unwrap_or_default()).ok())
        .flatten();
    for h in entries {
        if let Some(id) = missing.iter().find(|id| h.delivery_id == id.as_str()) {
            let next = serde_json::to_value(h.next).unwrap_or_default();
            marks.entry(id).or_default().push(format!(
                "{} after {} attempts at {}",
                next.as_str().unwrap_or("?"),
                h.attempts_before,
                h.at.to_rfc3339()
            ));
        }
    }
    missing
        .iter()
        .map(|id| {
            let handled = marks
                .get(id.as_str())
                .map_or("none".into(), |m| m.join("; "));
            format!("{id}: P.handled: {handled}")
        })
        .collect()
}

/// Per partition of `topic`: end offset minus the offset `group` committed.
fn uncommitted(brokers: &str, group: &str, topic: &str) -> Vec<i64> {
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) else {
        return Vec::new();
    };
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition(topic, p.id());
    }
    let Ok(committed) = consumer.committed_offsets(tpl, Duration::from_secs(10)) else {
        return Vec::new();
    };
    committed
        .elements()
        .iter()
        .map(|e| {
            let high = consumer
                .fetch_watermarks(topic, e.partition(), Duration::from_secs(10))
                .map(|(_, h)| h)
                .unwrap_or(-1);
            match e.offset() {
                Offset::Offset(o) => high - o,
                _ => high,
            }
        })
        .collect()
}
