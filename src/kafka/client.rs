//! librdkafka client configurations built from the service settings.

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

fn base(settings: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("client.id", "sysmos-notify")
        // 127.0.0.1 and IPv6 hosts alike; `any` lets librdkafka pick what resolves.
        .set("broker.address.family", "any");
    config
}

/// librdkafka properties that only consumers take (exact names, or prefixes ending in `.`).
const CONSUMER_ONLY: &[&str] = &[
    "fetch.",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.",
    "partition.assignment.strategy",
    "max.poll.interval.ms",
    "auto.offset.reset",
    "auto.commit.interval.ms",
    "enable.partition.eof",
    "check.crcs",
    "queued.",
    "isolation.level",
    "coordinator.query.interval.ms",
    "consume.callback.max.messages",
];

/// librdkafka properties that only producers take.
const PRODUCER_ONLY: &[&str] = &[
    "linger.ms",
    "queue.buffering.",
    "batch.",
    "acks",
    "request.required.acks",
    "compression.",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "message.send.max.retries",
    "retries",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "transactional.id",
    "transaction.timeout.ms",
    "sticky.partitioning.linger.ms",
    "partitioner",
];

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Consumer,
    Producer,
    Admin,
}

fn listed(key: &str, list: &[&str]) -> bool {
    list.iter().any(|p| {
        if p.ends_with('.') {
            key.starts_with(p)
        } else {
            key == *p
        }
    })
}

/// `kafka.client` properties for a client of `role`: a consumer-only property is not given to
/// the producer (librdkafka would warn that it ignores it), and the other way round.
fn passthrough(config: &mut ClientConfig, settings: &KafkaConfig, role: Role) {
    for (key, value) in &settings.client {
        let skip = match role {
            Role::Consumer => listed(key, PRODUCER_ONLY),
            Role::Producer => listed(key, CONSUMER_ONLY),
            Role::Admin => listed(key, PRODUCER_ONLY) || listed(key, CONSUMER_ONLY),
        };
        if !skip {
            config.set(key, value);
        }
    }
}

/// A group consumer whose offsets are stored only by the service, after an outcome is
/// durable, and committed in the background (at-least-once). It prefetches
/// [`DELIVERIES_PREFETCH_KIB`].
pub fn group_consumer(settings: &KafkaConfig, group_id: &str) -> ClientConfig {
    group_consumer_prefetching(settings, group_id, DELIVERIES_PREFETCH_KIB)
}

/// The router's group consumer: as [`group_consumer`], prefetching [`EVENTS_PREFETCH_KIB`].
pub fn events_consumer(settings: &KafkaConfig, group_id: &str) -> ClientConfig {
    group_consumer_prefetching(settings, group_id, EVENTS_PREFETCH_KIB)
}

/// Prefetch (`queued.max.messages.kbytes`; librdkafka's default is 64 MiB) of the deliverer,
/// whose queue must not run dry between two fetches in a storm, nor hold a backlog's worth of
/// memory (BENCHMARKS.md, "Memory").
const DELIVERIES_PREFETCH_KIB: u32 = 3072;

/// Prefetch of the router, which runs ahead of the deliverer in a backlog, so a smaller queue
/// costs no speed there (BENCHMARKS.md, "Memory").
const EVENTS_PREFETCH_KIB: u32 = 2048;

fn group_consumer_prefetching(
    settings: &KafkaConfig,
    group_id: &str,
    prefetch_kib: u32,
) -> ClientConfig {
    let mut config = base(settings);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        // A new group must not skip events produced before it first joined.
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "2000")
        // Topics that appear later (a new upstream product) match the regexes within 30s.
        .set("topic.metadata.refresh.interval.ms", "30000")
        .set("queued.max.messages.kbytes", prefetch_kib.to_string())
        // Once the prefetch is full, librdkafka waits this long before fetching the
        // partition again; its default (1 s) let the deliverer's queue run dry in a storm
        // (BENCHMARKS.md, "The fetch back-off and the attempt slot").
        .set("fetch.queue.backoff.ms", "20")
        // A SIGKILLed instance's partitions move when the broker has heard no heartbeat for
        // this long; librdkafka's 45 s would leave its buckets undelivered that long. The
        // heartbeats come from librdkafka's own thread, so a busy loop cannot miss them.
        .set("session.timeout.ms", SESSION_TIMEOUT_MS.to_string())
        .set("heartbeat.interval.ms", "1000")
        // `P.deliveries` and every `P.retry.k` have the same partition count and key
        // (account:channel), and range hands partition i of each to the same member: a
        // bucket's deliveries and its retries are paced by one process (README, "Scaling out").
        .set("partition.assignment.strategy", "range");
    passthrough(&mut config, settings, Role::Consumer);
    config
}

/// How long a silent member keeps its partitions (BENCHMARKS.md, "Membership").
const SESSION_TIMEOUT_MS: u32 = 10_000;

/// A consumer that reads assigned partitions from the beginning and never commits.
pub fn reader(settings: &KafkaConfig, group_id: &str) -> ClientConfig {
    let mut config = base(settings);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // librdkafka prefetches up to 64 MiB by default; a follower applies records in a
        // tight loop and needs far less (BENCHMARKS.md, "Cost growth").
        .set("queued.max.messages.kbytes", "8192");
    passthrough(&mut config, settings, Role::Consumer);
    config
}

/// The one producer of a process: idempotent, so broker retries cannot duplicate records.
pub fn producer(settings: &KafkaConfig) -> ClientConfig {
    let mut config = base(settings);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("compression.type", "none");
    passthrough(&mut config, settings, Role::Producer);
    config
}

pub fn admin(settings: &KafkaConfig) -> ClientConfig {
    let mut config = base(settings);
    passthrough(&mut config, settings, Role::Admin);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_the_properties_it_takes() {
        let mut settings = crate::config::Config::load_with_env(None, std::iter::empty())
            .unwrap()
            .kafka;
        let defaults = group_consumer(&settings, "g");
        assert_eq!(defaults.get("session.timeout.ms"), Some("10000"));
        assert_eq!(defaults.get("heartbeat.interval.ms"), Some("1000"));
        assert_eq!(defaults.get("partition.assignment.strategy"), Some("range"));
        for (k, v) in [
            ("fetch.wait.max.ms", "10"),
            ("session.timeout.ms", "6000"),
            ("linger.ms", "30"),
            ("security.protocol", "SASL_SSL"),
        ] {
            settings.client.insert(k.into(), v.into());
        }
        let consumer = group_consumer(&settings, "g");
        let producer = producer(&settings);
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(consumer.get("queued.max.messages.kbytes"), Some("3072"));
        assert_eq!(consumer.get("fetch.queue.backoff.ms"), Some("20"));
        let events = events_consumer(&settings, "g");
        assert_eq!(events.get("queued.max.messages.kbytes"), Some("2048"));
        settings
            .client
            .insert("queued.max.messages.kbytes".into(), "65536".into());
        assert_eq!(
            events_consumer(&settings, "g").get("queued.max.messages.kbytes"),
            Some("65536"),
            "[kafka.client] wins over the prefetch set here"
        );
        assert_eq!(
            consumer.get("session.timeout.ms"),
            Some("6000"),
            "[kafka.client] wins over the session timeout set here"
        );
        assert_eq!(consumer.get("linger.ms"), None);
        assert_eq!(producer.get("linger.ms"), Some("30"));
        assert_eq!(producer.get("session.timeout.ms"), None);
        for config in [&consumer, &producer, &admin(&settings)] {
            assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        }
    }
}
