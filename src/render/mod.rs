//! What a notification says, whatever the channel: an [`Alert`] is derived purely from an
//! event (CONTRACT §3 and §5). Each channel module turns it into its provider's format,
//! escaping event text for its markup and cutting it to its limits.

pub mod discord;
pub mod email;
pub mod pagerduty;
pub mod slack;
pub mod text;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::model::{Event, Severity};

/// One labelled value shown with the alert: `Region: us-east-1`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fact {
    pub label: String,
    pub value: String,
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
        let at = ["triggered_at"]
            .iter()
            .find_map(|k| alert.get(*k).and_then(Value::as_str))
            .and_then(parse_time)
            .or_else(|| parse_time(event.raw()["occurred_at"].as_str().unwrap_or_default()))
            .unwrap_or_default();
        let product_label = capitalize(event.product_key());
        let mut view = Alert {
            event,
            severity: event.severity(),
            recovery: event.is_recovery(),
            tag: String::new(),
            product: product_label,
            name,
            target,
            title: String::new(),
            summary: String::new(),
            detail: None,
            facts: Vec::new(),
            at,
            link: link(dashboard, event.product_key(), event.resource_id()),
        };
        describe(&mut view, alert);
        view
    }

    fn fact(&mut self, label: &str, value: Option<String>) {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            self.facts.push(Fact {
                label: label.to_owned(),
                value,
            });
        }
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

/// Title, summary, detail and facts per event type; unknown types list their alert fields.
fn describe(view: &mut Alert<'_>, alert: &Map<String, Value>) {
    let get = |k: &str| alert.get(k).and_then(scalar);
    let name = view.name.clone();
    let kind = view.event.kind().to_owned();
    view.fact(&view.product.clone(), Some(name.clone()));
    if let Some(target) = view.target.clone() {
        let label = if view.event.product().contains_key("url") {
            "URL"
        } else {
            "Hostname"
        };
        view.fact(label, Some(target));
    }
    let region = get("region");
    let code = get("status_code");
    let ms = get("response_time_ms").map(|v| format!("{v} ms"));
    let check = || {
        let mut parts = Vec::new();
        if let Some(code) = &code {
            parts.push(format!("HTTP {code}"));
        }
        if let Some(region) = &region {
            parts.push(format!("from {region}"));
        }
        if let Some(ms) = &ms {
            parts.push(format!("after {ms}"));
        }
        parts.join(" ")
    };
    let sentence = |head: String, tail: String| {
        if tail.is_empty() {
            format!("{head}.")
        } else {
            format!("{head}: {tail}.")
        }
    };
    match kind.as_str() {
        "monitor.down" | "monitor.degraded" => {
            let down = kind == "monitor.down";
            view.tag = if down { "DOWN" } else { "DEGRADED" }.into();
            view.title = format!("{name} is {}", if down { "down" } else { "degraded" });
            let failing = alert.get("regions_failing").and_then(list);
            let scope = match (&failing, down) {
                (_, true) => " from all regions".to_owned(),
                (Some(f), false) => format!(" in {f}"),
                (None, false) => " in some regions".to_owned(),
            };
            view.summary = sentence(format!("{name} is failing{scope}"), check());
            view.detail = region.clone();
            view.fact("Regions failing", failing);
        }
        "monitor.ssl_expiring" => {
            let days = get("days_remaining");
            view.tag = "SSL EXPIRING".into();
            view.title = match &days {
                Some(d) => format!("SSL certificate of {name} expires in {d} {}", plural(d)),
                None => format!("SSL certificate of {name} expires soon"),
            };
            view.summary = match get("expires_at").and_then(|t| parse_time(&t)) {
                Some(t) => format!(
                    "The certificate of {name} expires on {}.",
                    t.format("%Y-%m-%d %H:%M UTC")
                ),
                None => format!("{}.", view.title),
            };
            view.detail = days.as_ref().map(|d| format!("{d} {} left", plural(d)));
            view.fact("Expires at", get("expires_at"));
            view.fact("Days remaining", days);
        }
        "server.anomaly" => {
            let (metric, value, threshold) = (get("metric"), get("value"), get("threshold"));
            let metric_name = metric.clone().unwrap_or_else(|| "metric".into());
            view.tag = "ANOMALY".into();
            view.title = format!("{metric_name} anomaly on {name}");
            view.summary = match (&value, &threshold) {
                (Some(v), Some(t)) => format!("{metric_name} is {v} on {name} (threshold {t})."),
                (Some(v), None) => format!("{metric_name} is {v} on {name}."),
                _ => format!("Anomaly detected in {metric_name} on {name}."),
            };
            view.detail = metric.clone();
            view.fact("Metric", metric);
            view.fact("Value", value);
            view.fact("Threshold", threshold);
        }
        "server.offline" => {
            view.tag = "OFFLINE".into();
            view.title = format!("{name} is offline");
            let last_seen = get("last_seen_at");
            view.summary = match last_seen.as_deref().and_then(parse_time) {
                Some(t) => format!(
                    "The agent on {name} stopped reporting; last seen {}.",
                    t.format("%Y-%m-%d %H:%M:%S UTC")
                ),
                None => format!("The agent on {name} stopped reporting."),
            };
            view.detail = view.target.clone();
            view.fact("Last seen", last_seen);
        }
        _ if view.recovery => {
            view.tag = "RECOVERED".into();
            view.title = format!("{name} has recovered");
            let condition = get("condition");
            let metric = get("metric");
            let what = match (condition.as_deref(), &metric) {
                (Some("anomaly"), Some(m)) => format!("{m} on {name} is back to normal"),
                (Some("offline"), _) => format!("{name} is reporting again"),
                _ if kind == "monitor.recovered" => format!("{name} is up again"),
                _ => format!("{name} has recovered"),
            };
            let down_since = get("down_since");
            let lasted = down_since
                .as_deref()
                .and_then(parse_time)
                .map(|since| human_duration(view.at - since));
            view.summary = match &lasted {
                Some(d) => format!("{what} after {d} down."),
                None => format!("{what}."),
            };
            view.detail = if view.event.product_key() == "monitor" {
                region.clone()
            } else {
                metric.clone().or(view.target.clone())
            };
            view.fact("Recovered from", condition);
            view.fact("Metric", metric);
            view.fact("Down for", lasted);
            view.fact("Down since", down_since);
        }
        _ => {
            let word = kind.split_once('.').map_or(kind.as_str(), |(_, w)| w);
            view.tag = word.replace('_', " ").to_uppercase();
            view.title = format!("{name}: {}", word.replace('_', " "));
            view.summary = format!("{} {name} reported {kind}.", view.product);
            for (key, value) in alert {
                if !matches!(key.as_str(), "triggered_at" | "severity") {
                    let label = capitalize(&key.replace('_', " "));
                    view.fact(
                        &label,
                        scalar(value)
                            .or_else(|| list(value))
                            .or_else(|| Some(value.to_string())),
                    );
                }
            }
        }
    }
    if matches!(
        kind.as_str(),
        "monitor.down" | "monitor.degraded" | "monitor.recovered"
    ) {
        view.fact("Region", region);
        view.fact("Response time", ms);
        view.fact("Status code", code);
    }
    if view.tag.is_empty() {
        view.tag = "ALERT".into();
    }
    let severity = view.severity_label().to_owned();
    view.fact("Severity", Some(severity));
    let when = view.when();
    view.fact(
        if view.recovery {
            "Recovered at"
        } else {
            "Triggered at"
        },
        Some(when),
    );
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

fn plural(count: &str) -> &'static str {
    if count == "1" {
        "day"
    } else {
        "days"
    }
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
