//! What each event type says (CONTRACT §3): its status word, title, one-sentence summary,
//! the detail that sets an email subject apart, and the facts listed with it. An event type
//! this version does not know lists its alert fields.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{capitalize, human_duration, list, parse_time, scalar, Fact};
use crate::model::Condition;

/// The type-specific words of an alert; plain text, unescaped.
#[derive(Debug, Default)]
pub(super) struct Words {
    pub tag: String,
    pub title: String,
    pub summary: String,
    pub detail: Option<String>,
    pub facts: Vec<Fact>,
}

impl Words {
    fn fact(&mut self, label: &str, value: Option<String>) {
        Fact::push(&mut self.facts, label, value);
    }
}

/// What the describers know about the event.
pub(super) struct Subject<'a> {
    pub kind: &'a str,
    /// `Monitor`, `Server`, or a future product's name.
    pub product: &'a str,
    pub name: &'a str,
    pub target: Option<&'a str>,
    pub recovery: bool,
    pub at: DateTime<Utc>,
    pub alert: &'a Map<String, Value>,
    pub condition: &'a Condition,
}

impl Subject<'_> {
    fn get(&self, key: &str) -> Option<String> {
        self.alert.get(key).and_then(scalar)
    }
}

pub(super) fn describe(s: &Subject<'_>) -> Words {
    let mut words = match s.kind {
        "monitor.down" => failing(s, true),
        "monitor.degraded" => failing(s, false),
        "monitor.ssl_expiring" => ssl_expiring(s),
        "server.anomaly" => anomaly(s),
        "server.offline" => offline(s),
        _ if s.recovery => recovered(s),
        _ => generic(s),
    };
    if matches!(
        s.kind,
        "monitor.down" | "monitor.degraded" | "monitor.recovered"
    ) {
        words.fact("Region", s.get("region"));
        words.fact("Response time", response_time(s));
        words.fact("Status code", s.get("status_code"));
    }
    words
}

fn response_time(s: &Subject<'_>) -> Option<String> {
    s.get("response_time_ms").map(|v| format!("{v} ms"))
}

/// `HTTP 503 from us-east-1 after 5023 ms`, from whichever of the three the alert has.
fn check(s: &Subject<'_>) -> String {
    let parts = [
        s.get("status_code").map(|c| format!("HTTP {c}")),
        s.get("region").map(|r| format!("from {r}")),
        response_time(s).map(|ms| format!("after {ms}")),
    ];
    parts.into_iter().flatten().collect::<Vec<_>>().join(" ")
}

fn failing(s: &Subject<'_>, down: bool) -> Words {
    let name = s.name;
    let failing = s.alert.get("regions_failing").and_then(list);
    let scope = match (&failing, down) {
        (_, true) => " from all regions".to_owned(),
        (Some(f), false) => format!(" in {f}"),
        (None, false) => " in some regions".to_owned(),
    };
    let head = format!("{name} is failing{scope}");
    let check = check(s);
    let mut words = Words {
        tag: if down { "DOWN" } else { "DEGRADED" }.into(),
        title: format!("{name} is {}", if down { "down" } else { "degraded" }),
        summary: if check.is_empty() {
            format!("{head}.")
        } else {
            format!("{head}: {check}.")
        },
        detail: s.get("region"),
        facts: Vec::new(),
    };
    words.fact("Regions failing", failing);
    words
}

fn ssl_expiring(s: &Subject<'_>) -> Words {
    let name = s.name;
    let days = s.get("days_remaining");
    let title = match &days {
        Some(d) => format!("SSL certificate of {name} expires in {d} {}", plural(d)),
        None => format!("SSL certificate of {name} expires soon"),
    };
    let summary = match s.get("expires_at").as_deref().and_then(parse_time) {
        Some(t) => format!(
            "The certificate of {name} expires on {}.",
            t.format("%Y-%m-%d %H:%M UTC")
        ),
        None => format!("{title}."),
    };
    let mut words = Words {
        tag: "SSL EXPIRING".into(),
        title,
        summary,
        detail: days.as_ref().map(|d| format!("{d} {} left", plural(d))),
        facts: Vec::new(),
    };
    words.fact("Expires at", s.get("expires_at"));
    words.fact("Days remaining", days);
    words
}

fn anomaly(s: &Subject<'_>) -> Words {
    let name = s.name;
    let (metric, value, threshold) = (s.get("metric"), s.get("value"), s.get("threshold"));
    let metric_name = metric.clone().unwrap_or_else(|| "metric".into());
    let mut words = Words {
        tag: "ANOMALY".into(),
        title: format!("{metric_name} anomaly on {name}"),
        summary: match (&value, &threshold) {
            (Some(v), Some(t)) => format!("{metric_name} is {v} on {name} (threshold {t})."),
            (Some(v), None) => format!("{metric_name} is {v} on {name}."),
            _ => format!("Anomaly detected in {metric_name} on {name}."),
        },
        detail: metric.clone(),
        facts: Vec::new(),
    };
    words.fact("Metric", metric);
    words.fact("Value", value);
    words.fact("Threshold", threshold);
    words
}

fn offline(s: &Subject<'_>) -> Words {
    let name = s.name;
    let last_seen = s.get("last_seen_at");
    let mut words = Words {
        tag: "OFFLINE".into(),
        title: format!("{name} is offline"),
        summary: match last_seen.as_deref().and_then(parse_time) {
            Some(t) => format!(
                "The agent on {name} stopped reporting; last seen {}.",
                t.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            None => format!("The agent on {name} stopped reporting."),
        },
        detail: s.target.map(str::to_owned),
        facts: Vec::new(),
    };
    words.fact("Last seen", last_seen);
    words
}

/// What recovered (`condition`, `metric`) and, with `down_since`, how long it was down.
fn recovered(s: &Subject<'_>) -> Words {
    let name = s.name;
    let (condition, metric) = (s.get("condition"), s.get("metric"));
    let what = match s.condition {
        Condition::Anomaly { metric } if !metric.is_empty() => {
            format!("{metric} on {name} is back to normal")
        }
        Condition::Offline => format!("{name} is reporting again"),
        Condition::Availability if s.kind == "monitor.recovered" => format!("{name} is up again"),
        Condition::Availability
        | Condition::Certificate
        | Condition::Anomaly { .. }
        | Condition::Other(_) => format!("{name} has recovered"),
    };
    let down_since = s.get("down_since");
    let lasted = down_since
        .as_deref()
        .and_then(parse_time)
        .map(|since| human_duration(s.at - since));
    let mut words = Words {
        tag: "RECOVERED".into(),
        title: format!("{name} has recovered"),
        summary: match &lasted {
            Some(d) => format!("{what} after {d} down."),
            None => format!("{what}."),
        },
        detail: if s.kind.starts_with("monitor.") {
            s.get("region")
        } else {
            metric.clone().or(s.target.map(str::to_owned))
        },
        facts: Vec::new(),
    };
    words.fact("Recovered from", condition);
    words.fact("Metric", metric);
    words.fact("Down for", lasted);
    words.fact("Down since", down_since);
    words
}

/// An event type this version does not know: its name as the status, every alert field.
fn generic(s: &Subject<'_>) -> Words {
    let word = s
        .kind
        .split_once('.')
        .map_or(s.kind, |(_, w)| w)
        .replace('_', " ");
    let mut words = Words {
        tag: word.to_uppercase(),
        title: format!("{}: {word}", s.name),
        summary: format!("{} {} reported {}.", s.product, s.name, s.kind),
        detail: None,
        facts: Vec::new(),
    };
    if words.tag.is_empty() {
        words.tag = "ALERT".into();
    }
    for (key, value) in s.alert {
        if !matches!(key.as_str(), "triggered_at" | "severity") {
            let text = scalar(value)
                .or_else(|| list(value))
                .unwrap_or_else(|| value.to_string());
            // Discord refuses a field without a name: an empty or blank key gets one (found
            // by fuzzing).
            let label = super::text::one_line(&key.replace('_', " "));
            let label = match label.trim() {
                "" => "(unnamed field)".to_owned(),
                named => capitalize(named),
            };
            words.fact(&label, Some(text));
        }
    }
    words
}

fn plural(count: &str) -> &'static str {
    if count == "1" {
        "day"
    } else {
        "days"
    }
}
