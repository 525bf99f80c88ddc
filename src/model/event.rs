//! Alert events produced upstream (CONTRACT §3): validation into a typed view that keeps
//! every field of the original JSON, in order, so unknown fields are passed on untouched.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::incident::Condition;

/// Larger events are rejected unread: an alert is small, a megabyte is a mistake or an attack.
pub const MAX_EVENT_BYTES: usize = 1_000_000;

/// How bad an alert is; ordered so `min_severity` filters compare directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// Why an event is rejected: the reason `P.rejected` records with its bytes.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("empty payload: an event must be a JSON object")]
    Empty,
    #[error("event of {0} bytes is larger than the limit of {MAX_EVENT_BYTES} bytes")]
    TooLarge(usize),
    #[error("not valid JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("missing required field `{0}`")]
    Missing(String),
    #[error("field `{0}` must not be empty")]
    EmptyField(&'static str),
    #[error("field `{field}` must be {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
    #[error("field `event` must look like `product.name`, got `{0}`")]
    BadKind(String),
    #[error("field `occurred_at` is not an RFC 3339 time: {0}")]
    BadTime(#[from] chrono::ParseError),
    #[error(
        "a `server.recovered` event needs `alert.condition` `offline` or `anomaly` (the \
         incident it ends), got {0}"
    )]
    BadCondition(String),
}

fn wrong_type(field: impl Into<String>, expected: &'static str) -> Rejected {
    Rejected::WrongType {
        field: field.into(),
        expected,
    }
}

/// A validated event. `raw` is the event exactly as received (field order preserved),
/// shared: the delivery records of one event, one per channel, hold the same map, so routing
/// an event to K channels does not copy it K times (BENCHMARKS.md, "Provider bodies written
/// directly").
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "Map<String, Value>")]
pub struct Event {
    raw: Arc<Map<String, Value>>,
    condition: Condition,
}

/// Written as the map it holds, by reference: serde's `into` would clone the whole event for
/// every delivery record written (BENCHMARKS.md, "The fetch back-off and the attempt slot").
impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }
}

impl Event {
    /// Decodes and validates an event's bytes; the error is the reason it is rejected.
    pub fn decode(payload: Option<&[u8]>) -> Result<Self, Rejected> {
        let bytes = payload.unwrap_or_default();
        if bytes.is_empty() {
            return Err(Rejected::Empty);
        }
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(Rejected::TooLarge(bytes.len()));
        }
        match serde_json::from_slice(bytes)? {
            Value::Object(raw) => Self::try_from(raw),
            _ => Err(Rejected::NotAnObject),
        }
    }

    /// The event type, e.g. `monitor.down`.
    pub fn kind(&self) -> &str {
        self.str_field("event")
    }

    pub fn event_id(&self) -> &str {
        self.str_field("event_id")
    }

    pub fn account_id(&self) -> &str {
        self.str_field("account_id")
    }

    /// The key of the product object: `monitor`, `server`, or a future product's name.
    pub fn product_key(&self) -> &str {
        product_key(self.kind())
    }

    /// The product object (`monitor`, `server`, ...).
    pub fn product(&self) -> &Map<String, Value> {
        self.raw[self.product_key()].as_object().expect("validated")
    }

    /// The id of the monitor or server the event is about.
    pub fn resource_id(&self) -> &str {
        self.product()["id"].as_str().expect("validated")
    }

    pub fn alert(&self) -> &Map<String, Value> {
        self.raw["alert"].as_object().expect("validated")
    }

    pub fn raw(&self) -> &Map<String, Value> {
        &self.raw
    }

    /// Severity per the table of CONTRACT §3; unknown types use `alert.severity`, else warning.
    pub fn severity(&self) -> Severity {
        let alert = self.alert();
        let given = alert
            .get("severity")
            .and_then(Value::as_str)
            .and_then(Severity::parse);
        match self.kind() {
            "monitor.down" | "server.offline" => Severity::Critical,
            "monitor.degraded" => Severity::Warning,
            "monitor.recovered" | "server.recovered" => Severity::Info,
            "monitor.ssl_expiring" => match alert.get("days_remaining").and_then(Value::as_f64) {
                Some(days) if days <= 3.0 => Severity::Critical,
                _ => Severity::Warning,
            },
            _ => given.unwrap_or(Severity::Warning),
        }
    }

    /// When it happened upstream (validated RFC 3339).
    pub fn occurred_at(&self) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(self.str_field("occurred_at"))
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    /// Recoveries resolve incidents instead of opening them.
    pub fn is_recovery(&self) -> bool {
        self.kind().ends_with(".recovered")
    }

    /// The problem event types a recovery resolves (CONTRACT §4); none for other events.
    pub fn resolves(&self) -> &'static [&'static str] {
        self.condition.resolved_by(self.kind())
    }

    /// What the event is about on its resource: its incident's condition.
    pub fn condition(&self) -> &Condition {
        &self.condition
    }

    /// The webhook body of the product page: `{"event", "<product>", "alert"}`, nothing else;
    /// written from the event by reference.
    pub fn webhook_body(&self) -> WebhookBody<'_> {
        WebhookBody(self)
    }

    fn str_field(&self, name: &str) -> &str {
        self.raw[name].as_str().expect("validated")
    }
}

/// See [`Event::webhook_body`].
pub struct WebhookBody<'a>(&'a Event);

impl Serialize for WebhookBody<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let event = self.0;
        // An `alert.*` event's product object is its `alert`: written once, as a map would.
        let product = Some(event.product_key()).filter(|key| *key != "alert");
        let mut body = serializer.serialize_map(Some(2 + usize::from(product.is_some())))?;
        body.serialize_entry("event", event.kind())?;
        if let Some(key) = product {
            body.serialize_entry(key, event.product())?;
        }
        body.serialize_entry("alert", event.alert())?;
        body.end()
    }
}

fn product_key(kind: &str) -> &str {
    kind.split('.').next().unwrap_or(kind)
}

impl TryFrom<Map<String, Value>> for Event {
    type Error = Rejected;

    fn try_from(raw: Map<String, Value>) -> Result<Self, Rejected> {
        for field in ["event", "event_id", "account_id", "occurred_at"] {
            match raw.get(field) {
                None | Some(Value::Null) => return Err(Rejected::Missing(field.to_owned())),
                Some(Value::String(s)) if s.trim().is_empty() => {
                    return Err(Rejected::EmptyField(field))
                }
                Some(Value::String(_)) => {}
                Some(_) => return Err(wrong_type(field, "a string")),
            }
        }
        let kind = raw["event"].as_str().unwrap_or_default();
        let mut parts = kind.splitn(2, '.');
        let (product, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if product.is_empty() || name.is_empty() {
            return Err(Rejected::BadKind(kind.to_owned()));
        }
        DateTime::parse_from_rfc3339(raw["occurred_at"].as_str().unwrap_or_default())?;
        let object = match raw.get(product) {
            Some(Value::Object(o)) => o,
            None | Some(Value::Null) => return Err(Rejected::Missing(product.to_owned())),
            Some(_) => return Err(wrong_type(product, "an object")),
        };
        let mut required = vec!["id"];
        if matches!(product, "monitor" | "server") {
            required.push("name");
        }
        for field in required {
            match object.get(field) {
                Some(Value::String(s)) if !s.is_empty() => {}
                Some(_) => {
                    return Err(wrong_type(
                        format!("{product}.{field}"),
                        "a non-empty string",
                    ))
                }
                None => return Err(Rejected::Missing(format!("{product}.{field}"))),
            }
        }
        let condition = match raw.get("alert") {
            Some(Value::Object(alert)) => Condition::parse(kind, alert)?,
            None | Some(Value::Null) => return Err(Rejected::Missing("alert".to_owned())),
            Some(_) => return Err(wrong_type("alert", "an object")),
        };
        Ok(Event {
            raw: Arc::new(raw),
            condition,
        })
    }
}

#[cfg(test)]
mod tests;
