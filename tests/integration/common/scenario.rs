//! Steps most end-to-end tests share: seed events, settings records, a started service,
//! and waiting for metrics, requests and records.

use std::time::Duration;

use rdkafka::Message;
use serde_json::{json, Value};

use super::receiver::{Receiver, Recorded};
use super::{read_all, until, Service, Setup};

pub const WAIT: Duration = Duration::from_secs(60);
pub const SEED_BODY: &str = r#"{"event":"monitor.down","monitor":{"id":"mon_abc123","name":"Production API","url":"https://api.example.com/health"},"alert":{"status":"down","region":"us-east-1","response_time_ms":5023,"status_code":503,"triggered_at":"2025-01-15T10:30:00Z"}}"#;

pub fn seed_event(id: &str, account: &str) -> Value {
    serde_json::from_str::<Value>(SEED_BODY)
        .map(|mut v| {
            let o = v.as_object_mut().unwrap();
            o.insert("event_id".into(), json!(id));
            o.insert("account_id".into(), json!(account));
            o.insert("occurred_at".into(), json!("2025-01-15T10:30:00Z"));
            v
        })
        .unwrap()
}

pub fn event(kind: &str, id: &str, account: &str) -> Value {
    let product = kind.split('.').next().unwrap();
    json!({"event":kind,"event_id":id,"account_id":account,"occurred_at":"2025-01-15T10:30:00Z",
           product:{"id":format!("{product}_1"),"name":"Thing"},"alert":{"status":"x"}})
}

pub fn hook(id: &str, url: &str) -> Value {
    json!({"id":id,"type":"webhook","url":url})
}

pub fn settings(account: &str, version: u64, channels: Vec<Value>) -> Value {
    json!({"account_id":account,"version":version,"channels":channels})
}

/// Starts the service on `setup` with `channels` for account `acc` already in the config topic.
pub async fn running(setup: &Setup, channels: Vec<Value>) -> Service {
    setup.create_service_topics().await;
    setup
        .put_settings("acc", &settings("acc", 1, channels))
        .await;
    let mut service = setup.start();
    service.wait_ready().await;
    service
}

pub async fn metric_reaches(service: &Service, series: &str, value: f64) {
    until(WAIT, series, move || async move {
        (service.metric(series).await >= value).then_some(())
    })
    .await;
}

pub async fn requests_reach(receiver: &Receiver, n: usize) -> Vec<Recorded> {
    until(WAIT, &format!("{n} requests"), move || async move {
        let r = receiver.requests();
        (r.len() >= n).then_some(r)
    })
    .await
}

/// The requests whose path or body contains `needle`, once there are at least `n`.
pub async fn requests_with(receiver: &Receiver, needle: &str, n: usize) -> Vec<Recorded> {
    until(
        WAIT,
        &format!("{n} requests with {needle}"),
        || async move {
            let r = receiver.requests_with(needle);
            (r.len() >= n).then_some(r)
        },
    )
    .await
}

/// Every record of `topic` once it holds at least `n`.
pub async fn records(topic: &str, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    until(WAIT, &format!("{n} records in {topic}"), || async move {
        let records = read_all(topic);
        (records.len() >= n).then_some(records)
    })
    .await
}

pub async fn dead_letters(setup: &Setup, n: usize) -> Vec<Value> {
    let letters = records(&setup.topic("dlq"), n).await;
    letters
        .iter()
        .map(|m| serde_json::from_slice(m.payload().unwrap()).unwrap())
        .collect()
}
