//! The incident an event opens or resolves: the identity a recovery and its problem share.
//! PagerDuty receives it as `dedup_key`; the ledger uses it to recognise a problem whose
//! recovery was delivered first.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Event;

/// PagerDuty's limit on `dedup_key`, the strictest place the key goes.
const MAX_KEY_CHARS: usize = 255;

/// The condition an event is about on its resource: a monitor's availability (down,
/// degraded and their recovery) and its certificate are two incidents; a server's offline
/// state and each anomaly metric are distinct.
fn condition(event: &Event) -> String {
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
/// Coordinates too long for PagerDuty's 255 characters are hashed instead.
pub fn incident_key(event: &Event) -> String {
    let readable = format!(
        "sysmos:{}:{}:{}:{}",
        event.account_id(),
        event.product_key(),
        event.resource_id(),
        condition(event)
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
