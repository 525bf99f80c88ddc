//! What a notification says, whatever the channel: an [`Alert`] is derived purely from an
//! event (CONTRACT §3 and §5). Each channel module turns it into its provider's format,
//! escaping event text for its markup and cutting it to its limits.

mod describe;
pub mod digest;
pub mod discord;
pub mod email;
pub mod pagerduty;
pub mod slack;
pub mod text;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::model::{Event, Severity};

/// One labelled value shown with the alert: `Region: us-east-1`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fact {
    pub label: String,
    pub value: String,
}

impl Fact {
    /// Adds `label: value` to `facts` when there is a value that is not blank (Discord
    /// refuses blank field values).
    pub(crate) fn push(facts: &mut Vec<Fact>, label: &str, value: Option<String>) {
        if let Some(value) = value.filter(|v| !v.trim().is_empty()) {
            facts.push(Fact {
                label: label.to_owned(),
                value,
            });
        }
    }
}

/// The channel-independent content of one notification. Strings are plain text, unescaped.
#[derive(Debug, Clone)]
pub struct Alert<'a> {
    pub event: &'a Event,
    pub severity: Severity,
    pub recovery: bool,
    /// Short status word for subjects and headers: `DOWN`, `RECOVERED`, `SSL EXPIRING`.
    pub tag: String,
    /// `Monitor`, `Server`, or a future product's name.
    pub product: String,
    /// The monitor's or server's name.
    pub name: String,
    /// What it watches: the monitor's URL or the server's hostname.
    pub target: Option<String>,
    /// One line: `Production API is down`.
    pub title: String,
    /// One sentence with the numbers that matter.
    pub summary: String,
    /// What sets the email subject apart: region, hostname, days left, metric.
    pub detail: Option<String>,
    pub facts: Vec<Fact>,
    /// When it happened (the alert's `triggered_at`, else the event's `occurred_at`).
    pub at: DateTime<Utc>,
    /// `{dashboard}/monitors/{id}` or `/servers/{id}`.
    pub link: String,
}

impl<'a> Alert<'a> {
    /// `dashboard` is `dashboard.base_url` without a trailing slash.
    pub fn new(event: &'a Event, dashboard: &str) -> Self {
        let alert = event.alert();
        let product = event.product();
        let name = text::one_line(
            product
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or(event.resource_id()),
        );
        let target = ["url", "hostname"]
            .iter()
            .find_map(|k| product.get(*k).and_then(Value::as_str))
            .map(text::one_line);
        let at = alert
            .get("triggered_at")
            .and_then(Value::as_str)
            .and_then(parse_time)
            .or_else(|| parse_time(event.raw()["occurred_at"].as_str().unwrap_or_default()))
            .unwrap_or_default();
        let product_label = capitalize(event.product_key());
        let words = describe::describe(&describe::Subject {
            kind: event.kind(),
            product: &product_label,
            name: &name,
            target: target.as_deref(),
            recovery: event.is_recovery(),
            at,
            alert,
            condition: event.condition(),
        });
        let mut view = Alert {
            event,
            severity: event.severity(),
            recovery: event.is_recovery(),
            tag: words.tag,
            product: product_label,
            name,
            target,
            title: words.title,
            summary: words.summary,
            detail: words.detail,
            facts: Vec::new(),
            at,
            link: link(dashboard, event.product_key(), event.resource_id()),
        };
        // The resource first, then what the event type says, then severity and time.
        view.fact(&view.product.clone(), Some(view.name.clone()));
        if let Some(target) = view.target.clone() {
            let label = if product.contains_key("url") {
                "URL"
            } else {
                "Hostname"
            };
            view.fact(label, Some(target));
        }
        view.facts.extend(words.facts);
        view.fact("Severity", Some(view.severity_label().to_owned()));
        let time_label = if view.recovery {
            "Recovered at"
        } else {
            "Triggered at"
        };
        view.fact(time_label, Some(view.when()));
        view
    }

    fn fact(&mut self, label: &str, value: Option<String>) {
        Fact::push(&mut self.facts, label, value);
    }

    /// The time as people read it in a message: `2025-01-15 10:30:00 UTC`.
    pub fn when(&self) -> String {
        self.at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    }

    /// `Critical`, `Warning` or `Info`.
    pub fn severity_label(&self) -> &'static str {
        match self.severity {
            Severity::Critical => "Critical",
            Severity::Warning => "Warning",
            Severity::Info => "Info",
        }
    }
}

/// A string or number as text; other JSON values are not scalars.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(text::one_line(s)),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A list of scalars as `a, b, c`.
fn list(value: &Value) -> Option<String> {
    let items: Vec<String> = value.as_array()?.iter().filter_map(scalar).collect();
    (!items.is_empty()).then(|| items.join(", "))
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `12m 30s`, `2h 5m`, `3d 4h`: the two largest units, enough to read at a glance.
pub fn human_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds().max(0);
    let (days, hours, minutes, seconds) =
        (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, m) => format!("{m}m {seconds}s"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// The dashboard page of the resource; the id is a path segment, percent-encoded.
fn link(dashboard: &str, product: &str, id: &str) -> String {
    let section = match product {
        "monitor" => "monitors".to_owned(),
        "server" => "servers".to_owned(),
        other => format!("{other}s"),
    };
    let encoded: String = id
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{dashboard}/{section}/{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(v: Value) -> Event {
        Event::decode(Some(v.to_string().as_bytes())).unwrap()
    }

    #[test]
    fn durations_and_links() {
        let d = |s| human_duration(chrono::Duration::seconds(s));
        assert_eq!(d(45), "45s");
        assert_eq!(d(750), "12m 30s");
        assert_eq!(d(7500), "2h 5m");
        assert_eq!(d(273_600), "3d 4h");
        assert_eq!(d(-5), "0s");
        assert_eq!(
            link("https://app.sysmos.io", "monitor", "mon/../x y"),
            "https://app.sysmos.io/monitors/mon%2F..%2Fx%20y"
        );
        assert_eq!(link("https://a", "backup", "b1"), "https://a/backups/b1");
    }

    #[test]
    fn recovery_says_how_long_it_was_down() {
        let e = event(
            json!({"event":"monitor.recovered","event_id":"e","account_id":"a",
            "occurred_at":"2025-01-15T10:43:00Z","monitor":{"id":"m","name":"API"},
            "alert":{"status":"up","down_since":"2025-01-15T10:30:00Z","triggered_at":"2025-01-15T10:42:30Z"}}),
        );
        let a = Alert::new(&e, "https://d");
        assert_eq!(a.summary, "API is up again after 12m 30s down.");
        assert_eq!(a.tag, "RECOVERED");
        assert!(a.recovery);
    }
}
