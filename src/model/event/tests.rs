//! Unit tests of event decoding and validation.

use super::*;
use serde_json::json;

fn decode(v: Value) -> Result<Event, String> {
    Event::decode(Some(v.to_string().as_bytes())).map_err(|e| e.to_string())
}

fn seed() -> Value {
    json!({"event":"monitor.down","event_id":"evt_01HZX3","account_id":"acc_42",
        "occurred_at":"2025-01-15T10:30:00Z",
        "monitor":{"id":"mon_abc123","name":"Production API","url":"https://api.example.com/health"},
        "alert":{"status":"down","region":"us-east-1","response_time_ms":5023,"status_code":503,
                 "triggered_at":"2025-01-15T10:30:00Z"}})
}

#[test]
fn seed_event_gives_the_product_page_body_in_order() {
    let event = decode(seed()).unwrap();
    assert_eq!(event.severity(), Severity::Critical);
    assert_eq!(event.resource_id(), "mon_abc123");
    let body = serde_json::to_string(&event.webhook_body()).unwrap();
    assert_eq!(
        body,
        r#"{"event":"monitor.down","monitor":{"id":"mon_abc123","name":"Production API","url":"https://api.example.com/health"},"alert":{"status":"down","region":"us-east-1","response_time_ms":5023,"status_code":503,"triggered_at":"2025-01-15T10:30:00Z"}}"#
    );
}

#[test]
fn rejects_with_a_reason() {
    assert!(Event::decode(None)
        .unwrap_err()
        .to_string()
        .contains("empty"));
    assert!(Event::decode(Some(b"\xff\x00binary"))
        .unwrap_err()
        .to_string()
        .contains("not valid JSON"));
    assert!(Event::decode(Some(b"[1]"))
        .unwrap_err()
        .to_string()
        .contains("not a JSON object"));
    for field in [
        "event",
        "event_id",
        "account_id",
        "occurred_at",
        "monitor",
        "alert",
    ] {
        let mut v = seed();
        v.as_object_mut().unwrap().remove(field);
        let err = decode(v).unwrap_err();
        assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
    }
    let mut v = seed();
    v["monitor"].as_object_mut().unwrap().remove("id");
    assert!(decode(v).unwrap_err().to_string().contains("monitor.id"));
    let mut v = seed();
    v["occurred_at"] = json!("yesterday");
    assert!(decode(v).unwrap_err().to_string().contains("RFC 3339"));
    let recovered = |alert: Value| {
        json!({"event": "server.recovered", "event_id": "e", "account_id": "a",
            "occurred_at": "2025-01-15T10:30:00Z", "server": {"id": "s", "name": "n"},
            "alert": alert})
    };
    let err = decode(recovered(json!({}))).unwrap_err();
    assert!(
        err.contains("`alert.condition` `offline` or `anomaly`"),
        "{err}"
    );
    assert!(decode(recovered(json!({"condition": "disk"}))).is_err());
    assert_eq!(
        decode(recovered(json!({"condition": "offline"})))
            .unwrap()
            .resolves(),
        ["server.offline"],
        "it resolves the one incident it names"
    );
    let big = vec![b' '; MAX_EVENT_BYTES + 1];
    assert!(Event::decode(Some(&big))
        .unwrap_err()
        .to_string()
        .contains("larger than"));
}

#[test]
fn severities_follow_the_contract_table() {
    let cases = [
        ("monitor.degraded", json!({}), Severity::Warning),
        ("monitor.recovered", json!({}), Severity::Info),
        (
            "monitor.ssl_expiring",
            json!({"days_remaining": 10}),
            Severity::Warning,
        ),
        (
            "monitor.ssl_expiring",
            json!({"days_remaining": 3}),
            Severity::Critical,
        ),
        (
            "server.anomaly",
            json!({"severity": "critical"}),
            Severity::Critical,
        ),
        ("server.anomaly", json!({}), Severity::Warning),
        ("server.offline", json!({}), Severity::Critical),
        (
            "server.recovered",
            json!({"condition": "offline"}),
            Severity::Info,
        ),
        ("cron.missed", json!({"severity": "info"}), Severity::Info),
        ("cron.missed", json!({}), Severity::Warning),
    ];
    for (kind, alert, expected) in cases {
        let product = kind.split('.').next().unwrap();
        let v = json!({"event": kind, "event_id": "e", "account_id": "a",
            "occurred_at": "2025-01-15T10:30:00Z", product: {"id": "x", "name": "n"}, "alert": alert});
        assert_eq!(decode(v).unwrap().severity(), expected, "{kind}");
    }
}

#[test]
fn unknown_fields_are_kept() {
    let mut v = seed();
    v["trace"] = json!({"x": 1});
    v["alert"]["extra"] = json!(true);
    let event = decode(v.clone()).unwrap();
    assert_eq!(serde_json::to_value(&event).unwrap(), v);
    assert_eq!(
        serde_json::to_value(event.webhook_body()).unwrap()["alert"]["extra"],
        json!(true)
    );
}

#[test]
fn a_webhook_body_names_each_key_once() {
    // `alert.fired`: the product object and the alert are one field.
    let v = json!({"event": "alert.fired", "event_id": "e", "account_id": "a",
        "occurred_at": "2025-01-15T10:30:00Z", "alert": {"id": "x", "level": 2}});
    let event = decode(v).unwrap();
    let body = serde_json::to_string(&event.webhook_body()).unwrap();
    assert_eq!(
        body,
        r#"{"event":"alert.fired","alert":{"id":"x","level":2}}"#
    );
}
