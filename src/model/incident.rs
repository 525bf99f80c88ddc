//! The incident an event opens or resolves: the identity a recovery and its problem share.
//! PagerDuty receives it as `dedup_key`; the ledger uses it to recognise a problem whose
//! recovery was delivered first.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::event::Rejected;
use super::Event;

/// PagerDuty's limit on `dedup_key`, the strictest place the key goes.
const MAX_KEY_CHARS: usize = 255;

/// The condition an event is about on its resource: one incident per resource and
/// condition. A monitor's availability (down, degraded and their recovery) and its
/// certificate are two; a server's offline state and each anomaly metric are distinct.
/// Parsed once, when the event is decoded; the incident key, what a recovery resolves and
/// the renderers read it here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Availability,
    Certificate,
    Offline,
    /// `metric` may be empty: an anomaly event that names none.
    Anomaly {
        metric: String,
    },
    /// An event type the contract does not list: its name (or, for its recovery, the
    /// `condition` it names).
    Other(String),
}

impl Condition {
    /// The condition of an event of type `kind` with these `alert` fields. A
    /// `server.recovered` must say which incident it ends (CONTRACT §3): without a
    /// `condition` of `offline` or `anomaly` it is rejected.
    pub fn parse(kind: &str, alert: &Map<String, Value>) -> Result<Self, Rejected> {
        let text = |key: &str| alert.get(key).and_then(Value::as_str).unwrap_or_default();
        let anomaly = || Condition::Anomaly {
            metric: text("metric").to_owned(),
        };
        Ok(match kind {
            "monitor.down" | "monitor.degraded" | "monitor.recovered" => Condition::Availability,
            "monitor.ssl_expiring" => Condition::Certificate,
            "server.offline" => Condition::Offline,
            "server.anomaly" => anomaly(),
            "server.recovered" => match alert.get("condition").and_then(Value::as_str) {
                Some("offline") => Condition::Offline,
                Some("anomaly") => anomaly(),
                Some(other) => return Err(Rejected::BadCondition(format!("`{other}`"))),
                None => return Err(Rejected::BadCondition("none".to_owned())),
            },
            _ if kind.ends_with(".recovered") => match text("condition") {
                "" => Condition::Availability,
                "anomaly" => anomaly(),
                named => Condition::Other(named.to_owned()),
            },
            _ => Condition::Other(kind.split_once('.').map_or(kind, |(_, n)| n).to_owned()),
        })
    }

    /// The condition's part of the incident key.
    fn key(&self) -> String {
        match self {
            Condition::Availability => "availability".into(),
            Condition::Certificate => "ssl".into(),
            Condition::Offline => "offline".into(),
            Condition::Anomaly { metric } => format!("anomaly:{metric}"),
            Condition::Other(name) => name.clone(),
        }
    }

    /// The problem event types that a recovery (of type `kind`) of this condition resolves
    /// (CONTRACT §4); none for other events.
    pub fn resolved_by(&self, kind: &str) -> &'static [&'static str] {
        match (kind, self) {
            ("monitor.recovered", _) => &["monitor.down", "monitor.degraded"],
            ("server.recovered", Condition::Offline) => &["server.offline"],
            ("server.recovered", Condition::Anomaly { .. }) => &["server.anomaly"],
            _ => &[],
        }
    }
}

/// `sysmos:{account}:{product}:{resource}:{condition}`: the same for an alert and its
/// recovery, different for different incidents, stable across retries and restarts.
/// Coordinates too long for PagerDuty's 255 characters are hashed instead.
pub fn incident_key(event: &Event) -> String {
    let readable = format!(
        "sysmos:{}:{}:{}:{}",
        event.account_id(),
        event.product_key(),
        event.resource_id(),
        event.condition().key()
    );
    if readable.chars().count() <= MAX_KEY_CHARS {
        return readable;
    }
    let digest = Sha256::digest(readable.as_bytes());
    format!("sysmos:{}", hex::encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key_of(resource: &str, kind: &str, alert: Value) -> String {
        let event = json!({"event": kind, "event_id": "e", "account_id": "acc",
            "occurred_at": "2025-01-15T10:30:00Z",
            "server": {"id": resource, "name": "n"}, "alert": alert});
        let event = Event::decode(Some(event.to_string().as_bytes())).unwrap();
        incident_key(&event)
    }

    #[test]
    fn a_recovery_names_the_incident_of_its_problem() {
        assert_eq!(
            key_of("srv", "server.offline", json!({})),
            key_of("srv", "server.recovered", json!({"condition": "offline"}))
        );
        assert_eq!(
            key_of("srv", "server.anomaly", json!({"metric": "cpu"})),
            key_of(
                "srv",
                "server.recovered",
                json!({"condition": "anomaly", "metric": "cpu"})
            )
        );
        assert_ne!(
            key_of("srv", "server.offline", json!({})),
            key_of("srv", "server.anomaly", json!({"metric": "cpu"}))
        );
    }

    #[test]
    fn a_server_recovery_must_name_its_condition() {
        let alert = |v: Value| v.as_object().unwrap().clone();
        for given in [
            json!({}),
            json!({"condition": "cpu"}),
            json!({"condition": 3}),
        ] {
            let parsed = Condition::parse("server.recovered", &alert(given.clone()));
            assert!(
                matches!(parsed, Err(Rejected::BadCondition(_))),
                "{given}: {parsed:?}"
            );
        }
        let offline = Condition::parse("server.recovered", &alert(json!({"condition": "offline"})));
        assert_eq!(
            offline.unwrap().resolved_by("server.recovered"),
            ["server.offline"]
        );
        let cpu = Condition::parse(
            "server.recovered",
            &alert(json!({"condition": "anomaly", "metric": "cpu"})),
        )
        .unwrap();
        assert_eq!(
            cpu,
            Condition::Anomaly {
                metric: "cpu".into()
            }
        );
        assert_eq!(cpu.resolved_by("server.recovered"), ["server.anomaly"]);
        let down = Condition::parse("monitor.down", &alert(json!({}))).unwrap();
        assert_eq!(
            down.resolved_by("monitor.down"),
            [] as [&str; 0],
            "a problem resolves nothing"
        );
        assert_eq!(
            Condition::parse("billing.quota_exceeded", &alert(json!({}))).unwrap(),
            Condition::Other("quota_exceeded".into())
        );
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
