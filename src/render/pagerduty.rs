//! PagerDuty Events API v2 body: `trigger` for problems, `resolve` for recoveries, and a
//! `dedup_key` per incident so a recovery resolves exactly what its alert opened.
//! The routing key is added by the sender; nothing secret is rendered here.

use serde::ser::SerializeMap;
use serde::Serialize;
use serde_json::{Map, Value};

use super::text::cut;
use super::Alert;
use crate::model::{incident_key, Severity};

/// PagerDuty's limit on `summary` (the incident key keeps to its `dedup_key` limit itself).
const SUMMARY: usize = 1024;
/// Each custom detail value is cut here; the whole event must stay far below 512 KB.
const DETAIL: usize = 2048;

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
        dedup_key: incident_key(alert.event),
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
