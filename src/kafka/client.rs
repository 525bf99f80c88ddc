//! librdkafka client configurations built from the service settings.

use rdkafka::ClientConfig;

use crate::config::KafkaSettings;

fn base(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("client.id", "sysmos-notify")
        // 127.0.0.1 and IPv6 hosts alike; `any` lets librdkafka pick what resolves.
        .set("broker.address.family", "any");
    config
}

fn passthrough(config: &mut ClientConfig, settings: &KafkaSettings) {
    for (key, value) in &settings.client {
        config.set(key, value);
    }
}

/// A group consumer whose offsets are stored only by the service, after an outcome is
/// durable, and committed in the background (at-least-once).
pub fn group_consumer(settings: &KafkaSettings, group_id: &str) -> ClientConfig {
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
        // Bounded prefetch: memory stays flat however deep the backlog.
        .set("queued.max.messages.kbytes", "16384");
    passthrough(&mut config, settings);
    config
}

/// A consumer that reads assigned partitions from the beginning and never commits.
pub fn reader(settings: &KafkaSettings, group_id: &str) -> ClientConfig {
    let mut config = base(settings);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    passthrough(&mut config, settings);
    config
}

/// The one producer of a process: idempotent, so broker retries cannot duplicate records.
pub fn producer(settings: &KafkaSettings) -> ClientConfig {
    let mut config = base(settings);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "none");
    passthrough(&mut config, settings);
    config
}

pub fn admin(settings: &KafkaSettings) -> ClientConfig {
    let mut config = base(settings);
    passthrough(&mut config, settings);
    config
}
