//! `send-test --account A --channel C`: a test notification through the durable pipeline.
//! The delivery goes to `P.deliveries` with `report` set, so the running service's deliverer
//! writes each attempt's outcome to `P.reports`; this command waits for the final one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::json;

use super::Ops;
use crate::kafka::client;
use crate::model::{AttemptReport, DeliveryRecord, Event};

/// The event a test notification carries: an unknown type to the renderers, so every
/// channel shows it generically, clearly marked as a test.
pub fn test_event(account: &str) -> Event {
    let now = Utc::now();
    let id = format!("test_{}", now.timestamp_nanos_opt().unwrap_or_default());
    let event = json!({
        "event": "monitor.test", "event_id": id, "account_id": account,
        "occurred_at": now.to_rfc3339(),
        "monitor": {"id": "send-test", "name": "Sysmos test notification"},
        "alert": {"status": "test", "severity": "info", "triggered_at": now.to_rfc3339(),
                  "message": "Sent by sysmos-notify send-test: this channel receives Sysmos alerts."}
    });
    Event::decode(Some(event.to_string().as_bytes())).expect("the test event is valid")
}

/// Sends the test notification and prints every attempt; `Ok(true)` when delivered.
pub async fn send_test(
    ops: &Ops,
    account: &str,
    channel_id: &str,
    wait: Duration,
) -> anyhow::Result<bool> {
    let cache = ops.settings_cache()?;
    let Some(settings) = cache.get(account) else {
        anyhow::bail!("account {account} has no settings in {}", ops.topics.config);
    };
    let Some(channel) = settings.channel(channel_id) else {
        let ids: Vec<&str> = settings.channels.iter().map(|c| c.id.as_str()).collect();
        anyhow::bail!(
            "account {account} has no channel {channel_id}; its channels: {}",
            ids.join(", ")
        );
    };
    anyhow::ensure!(
        channel.deliverable(),
        "channel {channel_id} is disabled or has no verified recipient: the service would drop the test"
    );
    let mut record = DeliveryRecord::new(&test_event(account), channel, Utc::now());
    record.report = true;
    // Position at the current end of the reports before sending, so no report is missed.
    let reports = reports_from_now(ops)?;
    let payload = serde_json::to_vec(&record).expect("delivery records serialize");
    ops.produce(&ops.topics.deliveries, &record.key(), &payload)
        .await?;
    println!(
        "sent test delivery {} to {account}:{channel_id} ({}) through {}; waiting up to {wait:?} for the service",
        record.delivery_id,
        channel.kind.name(),
        ops.topics.deliveries
    );
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let polled = tokio::task::block_in_place(|| reports.poll(Duration::from_millis(200)));
        let Some(Ok(message)) = polled else {
            continue;
        };
        let Some(Ok(report)) = message
            .payload()
            .map(serde_json::from_slice::<AttemptReport>)
        else {
            continue;
        };
        if report.delivery_id != record.delivery_id {
            continue;
        }
        let a = &report.attempt;
        let answer = match (a.status, &a.error) {
            (Some(status), Some(error)) => format!("status {status}: {error}"),
            (Some(status), None) => format!("status {status}"),
            (None, Some(error)) => error.clone(),
            (None, None) => "accepted".into(),
        };
        println!("attempt {} ({} ms): {answer}", a.attempt, a.duration_ms);
        match report.next.as_str() {
            "delivered" => {
                println!("delivered");
                return Ok(true);
            }
            "dead_lettered" => {
                println!(
                    "dead-lettered: {}",
                    report.reason.as_deref().unwrap_or("no reason given")
                );
                return Ok(false);
            }
            _ => println!(
                "retry in tier {} not before {}",
                report.retry_tier.unwrap_or_default(),
                report
                    .not_before
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            ),
        }
    }
    println!(
        "no final outcome within {wait:?}: is sysmos-notify running with this configuration? \
         The delivery stays in the pipeline and is reported to {} when it is attempted.",
        ops.topics.reports
    );
    Ok(false)
}

/// A reader of `P.reports` positioned at each partition's current end.
fn reports_from_now(ops: &Ops) -> anyhow::Result<BaseConsumer> {
    let kafka = &ops.config.kafka;
    let topic = &ops.topics.reports;
    let consumer: BaseConsumer =
        client::reader(kafka, &format!("{}.ops", kafka.group_id)).create()?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut ends = HashMap::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        ends.insert(p.id(), consumer.fetch_watermarks(topic, p.id(), timeout)?.1);
    }
    let mut tpl = TopicPartitionList::new();
    for (partition, end) in ends {
        tpl.add_partition_offset(topic, partition, Offset::Offset(end))?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}
