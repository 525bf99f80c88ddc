//! PagerDuty Events API v2 body: `trigger` for problems, `resolve` for recoveries, and a
//! `dedup_key` per incident so a recovery resolves exactly what its alert opened.
//! The routing key is added by the sender; nothing secret is rendered here.

use serde::ser::SerializeMap;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::text::cut;
use super::Alert;
use crate::model::{Event, Severity};

/// PagerDuty's limits: `dedup_key` 255 characters, `summary` 1024.
const DEDUP_KEY: usize = 255;
const SUMMARY: usize = 1024;
/// Each custom detail value is cut here; the whole event must stay far below 512 KB.
const DETAIL: usize = 2048;

/// The incident an event belongs to, on its resource: a monitor's availability (down,
/// degraded and their recovery) and its certificate are two incidents; a server's offline
/// state and each anomaly metric are distinct.
pub fn condition(event: &Event) -> String {
    let fields = event.alert();
    let get = |k: &str| fields.get(k).and_then(Value::as_str).unwrap_or_default();
    let kind = event.kind();
    let (_, name) = kind.split_once('.').unwrap_or((kind, kind));
    match kind {
        "monitor.down" | "monitor.degraded" | "monitor.recovered" => "availability".into(),
        "monitor.ssl_expiring" => "ssl".into(),
        "server.offline" => "offline".into(),
        "server.anomaly" => format!("anomaly:{}", get("metric")),
        _ if event.is_recovery() => match (get("condition"), get("metric")) {
            ("anomaly", metric) => format!("anomaly:{metric}"),
            ("", _) => "availability".into(),
            (condition, _) => condition.to_owned(),
        },
        _ => name.to_owned(),
    }
}

/// `sysmos:{account}:{product}:{resource}:{condition}`: the same for an alert and its
/// recovery, different for different incidents, stable across retries and restarts.
/// Coordinates too long for PagerDuty's 255 characters are hashed instead. Every channel
/// uses it to name the incident an event opens or resolves (see `crate::ledger`).
pub fn dedup_key(event: &Event) -> String {
    let readable = format!(
        "sysmos:{}:{}:{}:{}",
        event.account_id(),
        event.product_key(),
        event.resource_id(),
        condition(event)
    );
    if readable.chars().count() <= DEDUP_KEY {
        return readable;
    }
    let digest = Sha256::digest(readable.as_bytes());
    format!("sysmos:{}", crate::hex::hex(&digest))
}

fn severity(alert: &Alert<'_>) -> &'static str {
    match alert.severity {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

/// An Events API v2 body without `routing_key`, written straight to JSON: no
/// `serde_json::Value` tree is built for every PagerDuty delivery (BENCHMARKS.md, "Provider
/// bodies written directly").
#[derive(Debug, Serialize)]
pub struct Body<'a> {
    event_action: &'static str,
    dedup_key: String,
    payload: Payload<'a>,
    links: [Link<'a>; 1],
    client: &'static str,
    client_url: &'a str,
}

/// An Events API v2 body without `routing_key` that only resolves an incident.
#[derive(Debug, Serialize)]
pub struct Resolve<'a> {
    event_action: &'static str,
    dedup_key: &'a str,
}

#[derive(Debug, Serialize)]
struct Payload<'a> {
    summary: String,
    source: String,
    severity: &'static str,
    timestamp: String,
    component: String,
    group: &'a str,
    class: &'a str,
    custom_details: Details<'a>,
}

#[derive(Debug, Serialize)]
struct Link<'a> {
    href: &'a str,
    text: &'static str,
}

/// The event's alert fields, each string (or nested value, as JSON text) cut at [`DETAIL`].
#[derive(Debug)]
struct Details<'a>(&'a Map<String, Value>);

impl Serialize for Details<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            match value {
                Value::String(s) => map.serialize_entry(key, &cut(s, DETAIL))?,
                Value::Array(_) | Value::Object(_) => {
                    let text = value.to_string();
                    if text.len() > DETAIL {
                        map.serialize_entry(key, &cut(&text, DETAIL))?
                    } else {
                        map.serialize_entry(key, value)?
                    }
                }
                other => map.serialize_entry(key, other)?,
            }
        }
        map.end()
    }
}

/// The Events API v2 body without `routing_key`.
pub fn event<'a>(alert: &'a Alert<'_>) -> Body<'a> {
    let source = alert.target.as_deref().unwrap_or(&alert.name);
    Body {
        event_action: if alert.recovery { "resolve" } else { "trigger" },
        dedup_key: dedup_key(alert.event),
        payload: Payload {
            summary: cut(
                &format!("[{}] {}", alert.tag, alert.summary.trim_end_matches('.')),
                SUMMARY,
            ),
            source: cut(source, SUMMARY),
            severity: severity(alert),
            timestamp: alert.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            component: cut(&alert.name, SUMMARY),
            group: alert.event.product_key(),
            class: alert.event.kind(),
            custom_details: Details(alert.event.alert()),
        },
        links: [Link {
            href: &alert.link,
            text: "View in Sysmos",
        }],
        client: "Sysmos",
        client_url: &alert.link,
    }
}

/// The Events API v2 body without `routing_key` that resolves the incident `dedup_key`:
/// sent again when a recovery overtook its alert (see `crate::ledger`).
pub fn resolve(dedup_key: &str) -> Resolve<'_> {
    Resolve {
        event_action: "resolve",
        dedup_key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Event;
    use serde_json::json;

    fn key_of(resource: &str, kind: &str, alert: Value) -> String {
        let event = json!({"event": kind, "event_id": "e", "account_id": "acc",
            "occurred_at": "2025-01-15T10:30:00Z",
            "server": {"id": resource, "name": "n"}, "alert": alert});
        let event = Event::decode(Some(event.to_string().as_bytes())).unwrap();
        dedup_key(&event)
    }

    #[test]
    fn long_coordinates_are_hashed_stably() {
        let long = "r".repeat(400);
        let key = key_of(&long, "server.offline", json!({}));
        assert!(key.starts_with("sysmos:") && key.len() == 7 + 64, "{key}");
        assert_eq!(
            key,
            key_of(&long, "server.recovered", json!({"condition": "offline"}))
        );
        assert_ne!(
            key,
            key_of(&long, "server.anomaly", json!({"metric": "cpu"}))
        );
        assert_eq!(
            key_of("srv", "server.anomaly", json!({"metric": "cpu"})),
            "sysmos:acc:server:srv:anomaly:cpu"
        );
    }
}
