//! Account notification settings as the settings app writes them to the compacted config
//! topic (CONTRACT §4). Secrets are wrapped so they cannot reach a log by accident.

use std::fmt;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::event::{Event, Severity};
use super::Rate;

/// A credential or private URL: shown as `***` by `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One account's whole notification settings. A newer `version` replaces an older one.
#[derive(Debug, Clone)]
pub struct AccountSettings {
    pub account_id: String,
    pub version: u64,
    pub channels: Vec<Channel>,
    /// Channels that could not be read, with the reason (secrets removed), for the logs.
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawSettings {
    account_id: String,
    version: u64,
    #[serde(default)]
    channels: Vec<Value>,
}

/// Why a settings record cannot be read; the text holds no secret.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSettings(String);

impl AccountSettings {
    /// Decodes a settings record. A channel that cannot be read (an unknown type from a newer
    /// settings app, a missing field) is skipped with its reason; the others still deliver.
    pub fn decode(bytes: &[u8]) -> Result<Self, InvalidSettings> {
        let raw: RawSettings =
            serde_json::from_slice(bytes).map_err(|e| InvalidSettings(redact(&e.to_string())))?;
        let mut channels = Vec::with_capacity(raw.channels.len());
        let mut skipped = Vec::new();
        for (i, value) in raw.channels.into_iter().enumerate() {
            let id = value
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned();
            match Channel::deserialize(value) {
                Ok(channel) if channels.iter().any(|c: &Channel| c.id == channel.id) => {
                    skipped.push(format!("channels[{i}] ({id}): duplicate channel id"))
                }
                Ok(channel) => channels.push(channel),
                Err(e) => skipped.push(format!("channels[{i}] ({id}): {}", redact(&e.to_string()))),
            }
        }
        Ok(Self {
            account_id: raw.account_id,
            version: raw.version,
            channels,
            skipped,
        })
    }

    pub fn channel(&self, id: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.id == id)
    }
}

/// serde messages quote the offending value, which may be a token: drop every quoted part.
fn redact(message: &str) -> String {
    static QUOTED: OnceLock<regex::Regex> = OnceLock::new();
    let re = QUOTED.get_or_init(|| regex::Regex::new(r#""[^"]*""#).expect("static regex"));
    re.replace_all(message, "\"…\"").into_owned()
}

fn yes() -> bool {
    true
}

fn info() -> Severity {
    Severity::Info
}

/// A connected channel: common filters plus the provider-specific part.
#[derive(Debug, Clone, Deserialize)]
pub struct Channel {
    pub id: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Event types or globs (`monitor.*`); empty means every event.
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default = "info")]
    pub min_severity: Severity,
    #[serde(flatten)]
    pub kind: ChannelKind,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ChannelKind {
    Slack {
        bot_token: Secret,
        channel: String,
    },
    Discord {
        webhook_url: Secret,
    },
    Email {
        recipients: Vec<Recipient>,
    },
    #[serde(rename = "pagerduty")]
    PagerDuty {
        integration_key: Secret,
    },
    Webhook {
        url: Secret,
        #[serde(default, deserialize_with = "header_pairs")]
        headers: Vec<(String, Secret)>,
        #[serde(default)]
        secret: Option<Secret>,
        /// The channel's own pace (CONTRACT §4, §5a), e.g. `"10/1s"`; unlimited when unset.
        #[serde(default)]
        rate: Option<Rate>,
    },
}

/// Custom headers as a JSON object, kept in the order the user wrote them.
fn header_pairs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(String, Secret)>, D::Error> {
    let map = serde_json::Map::<String, Value>::deserialize(d)?;
    map.into_iter()
        .map(|(name, value)| match value {
            Value::String(v) => Ok((name, Secret(v))),
            _ => Err(serde::de::Error::custom(format!(
                "header `{name}` must have a string value"
            ))),
        })
        .collect()
}

#[derive(Debug, Clone, Deserialize)]
pub struct Recipient {
    pub address: String,
    #[serde(default)]
    pub verified: bool,
    #[serde(default)]
    pub verification_url: Option<Secret>,
}

impl ChannelKind {
    /// The channel type as written in settings and used as the `channel` metric label.
    pub fn name(&self) -> &'static str {
        match self {
            ChannelKind::Slack { .. } => "slack",
            ChannelKind::Discord { .. } => "discord",
            ChannelKind::Email { .. } => "email",
            ChannelKind::PagerDuty { .. } => "pagerduty",
            ChannelKind::Webhook { .. } => "webhook",
        }
    }
}

impl Channel {
    /// Whether the channel can receive anything now: enabled and, for email, with at least
    /// one verified recipient (unverified ones get no alerts until verified).
    pub fn deliverable(&self) -> bool {
        self.enabled
            && match &self.kind {
                ChannelKind::Email { recipients } => recipients.iter().any(|r| r.verified),
                _ => true,
            }
    }

    /// Whether this channel wants the event: enabled, type matches, severity high enough.
    /// A recovery follows its problem (CONTRACT §4): it ignores `min_severity`, and goes
    /// wherever `events` accepts it or any problem it resolves, so a channel told about a
    /// problem is always told when it is over.
    pub fn accepts(&self, event: &Event) -> bool {
        if !self.deliverable() {
            return false;
        }
        if event.is_recovery() {
            return self.wants(event.kind()) || event.resolves().iter().any(|k| self.wants(k));
        }
        event.severity() >= self.min_severity && self.wants(event.kind())
    }

    /// Whether `events` lets this event type through.
    fn wants(&self, kind: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|p| glob_match(p, kind))
    }
}

/// `*` matches any run of characters (dots included); everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs() {
        let cases = [
            ("monitor.*", "monitor.down", true),
            ("monitor.*", "server.offline", false),
            ("*", "anything.at_all", true),
            ("monitor.down", "monitor.down", true),
            ("monitor.down", "monitor.downs", false),
            ("*.recovered", "server.recovered", true),
            ("*.recovered", "server.offline", false),
            ("m*r.d*", "monitor.down", true),
            ("a*a", "a", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob_match(p, t), want, "{p} ~ {t}");
        }
    }

    #[test]
    fn contract_example_decodes_and_hides_secrets() {
        let record = json!({"account_id":"acc_42","version":7,"channels":[
            {"id":"slack-ops","type":"slack","bot_token":"xoxb-SECRET","channel":"C0123ABC"},
            {"id":"pd","type":"pagerduty","integration_key":"0123456789abcdef0123456789abcdef"},
            {"id":"hook","type":"webhook","url":"https://hooks.example.com/sysmos",
             "headers":{"Authorization":"Bearer s3cr3t"},"secret":"whsec_abc"},
            {"id":"fax","type":"fax","number":"SECRET-NUMBER"},
            {"id":"bad","type":"slack","bot_token":"xoxb-SECRET2"}]});
        let s = AccountSettings::decode(record.to_string().as_bytes()).unwrap();
        assert_eq!(s.version, 7);
        assert_eq!(s.channels.len(), 3);
        assert_eq!(s.skipped.len(), 2, "{:?}", s.skipped);
        let shown = format!("{s:?}");
        for secret in [
            "xoxb-SECRET",
            "0123456789abcdef",
            "s3cr3t",
            "whsec_abc",
            "SECRET-NUMBER",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        let ChannelKind::Webhook { headers, .. } = &s.channel("hook").unwrap().kind else {
            panic!("webhook")
        };
        assert_eq!(headers[0].0, "Authorization");
        assert_eq!(headers[0].1.expose(), "Bearer s3cr3t");
    }

    #[test]
    fn a_recovery_follows_its_problem() {
        let channel = |filters: Value| -> Channel {
            let mut c = json!({"id": "c", "type": "webhook", "url": "https://h.example"});
            c.as_object_mut()
                .unwrap()
                .extend(filters.as_object().unwrap().clone());
            serde_json::from_value(c).unwrap()
        };
        let event = |kind: &str, alert: Value| {
            let product = kind.split('.').next().unwrap();
            let e = json!({"event": kind, "event_id": "e", "account_id": "a",
                "occurred_at": "2025-01-15T10:30:00Z", product: {"id": "r", "name": "R"},
                "alert": alert});
            Event::decode(Some(e.to_string().as_bytes())).unwrap()
        };
        let up = event("monitor.recovered", json!({}));
        let back = |condition: &str| event("server.recovered", json!({"condition": condition}));
        let table = [
            (json!({"min_severity": "critical"}), &up, true),
            (json!({"events": ["monitor.down"]}), &up, true),
            (json!({"events": ["monitor.degraded"]}), &up, true),
            (json!({"events": ["monitor.*"]}), &up, true),
            (json!({"events": ["monitor.recovered"]}), &up, true),
            (json!({"events": ["server.*"]}), &up, false),
            (json!({"events": ["monitor.ssl_expiring"]}), &up, false),
            (
                json!({"events": ["monitor.down"], "enabled": false}),
                &up,
                false,
            ),
            (
                json!({"events": ["server.offline"]}),
                &back("offline"),
                true,
            ),
            (
                json!({"events": ["server.offline"]}),
                &back("anomaly"),
                false,
            ),
            (
                json!({"events": ["server.anomaly"]}),
                &back("anomaly"),
                true,
            ),
            (
                json!({"events": ["server.anomaly"], "min_severity": "critical"}),
                &back("anomaly"),
                true,
            ),
        ];
        for (filters, event, expected) in table {
            assert_eq!(
                channel(filters.clone()).accepts(event),
                expected,
                "{filters} for {}",
                event.kind()
            );
        }
        let down = event("monitor.down", json!({}));
        assert!(!channel(json!({"events": ["monitor.recovered"]})).accepts(&down));
        let degraded = event("monitor.degraded", json!({}));
        assert!(
            !channel(json!({"min_severity": "critical"})).accepts(&degraded),
            "problems still keep to min_severity"
        );
    }
}
