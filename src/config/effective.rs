//! The effective configuration as logged at start-up: every key with its value after
//! defaults, file and environment, with anything secret masked.

use serde_json::{json, Value};

use super::Config;

const MASK: &str = "***";

/// librdkafka properties whose values are credentials (`sasl.password`,
/// `sasl.oauthbearer.client.secret`, `ssl.key.password`, `sasl.jaas.config`, ...).
fn is_secret_property(name: &str) -> bool {
    ["password", "secret", "jaas", "token", "key"]
        .iter()
        .any(|word| name.contains(word))
}

impl Config {
    /// Every key and value, secrets masked: safe to log and print.
    pub fn effective(&self) -> Value {
        let client: serde_json::Map<String, Value> = self
            .kafka
            .client
            .iter()
            .map(|(name, value)| {
                let shown = if is_secret_property(name) {
                    MASK
                } else {
                    value
                };
                (name.clone(), Value::from(shown))
            })
            .collect();
        let delays: Vec<String> = self.retry.delays.iter().map(|d| format!("{d:?}")).collect();
        json!({
            "kafka": {
                "brokers": self.kafka.brokers,
                "group_id": self.kafka.group_id,
                "event_topics": self.kafka.event_topics,
                "topic_prefix": self.kafka.topic_prefix,
                "partitions": self.kafka.partitions,
                "client": client,
            },
            "retry": {"delays": delays},
            "delivery": {
                "timeout": format!("{:?}", self.delivery.timeout),
                "max_in_flight": self.delivery.max_in_flight,
                "allow_private_targets": self.delivery.allow_private_targets,
                "allow_http": self.delivery.allow_http,
                "max_in_flight_per_destination": self.delivery.max_in_flight_per_destination,
                "breaker_threshold": self.delivery.breaker_threshold,
                "breaker_cooldown": format!("{:?}", self.delivery.breaker_cooldown),
                "dedup_window": format!("{:?}", self.delivery.dedup_window),
                "dedup_capacity": self.delivery.dedup_capacity,
                "ca_file": self.delivery.ca_file.as_ref().map(|ca| ca.path.display().to_string()),
                "max_pending": format!("{:?}", self.delivery.max_pending),
            },
            "http": {"listen": self.http.listen.to_string()},
            "dashboard": {"base_url": self.dashboard.base_url.as_str()},
            "channels": {
                "slack": {
                    "api_base_url": self.channels.slack.api_base_url.as_str(),
                    "rate": self.channels.slack.rate.to_string(),
                    "burst": self.channels.slack.burst,
                },
                "discord": {
                    "rate": self.channels.discord.rate.to_string(),
                    "burst": self.channels.discord.burst,
                },
                "pagerduty": {
                    "events_url": self.channels.pagerduty.events_url.as_str(),
                    "rate": self.channels.pagerduty.rate.to_string(),
                    "burst": self.channels.pagerduty.burst,
                },
                "email": {
                    "smtp_url": self.channels.email.smtp_url.masked(),
                    "from": self.channels.email.from.to_string(),
                    "rate": self.channels.email.rate.to_string(),
                    "burst": self.channels.email.burst,
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_and_the_rest_shown() {
        let file = "[kafka.client]\n\"sasl.password\" = \"hunter2-kafka\"\n\
                    \"sasl.username\" = \"svc\"\n\"ssl.key.password\" = \"hunter2-key\"\n\
                    [channels.email]\nsmtp_url = \"smtps://alerts:hunter2-smtp@mail.example.com:465\"\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, file).unwrap();
        let settings = Config::load_with_env(Some(&path), std::iter::empty()).unwrap();
        let shown = settings.effective().to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("\"sasl.username\":\"svc\""), "{shown}");
        assert!(
            shown.contains("smtps://alerts:***@mail.example.com:465"),
            "{shown}"
        );
        assert!(
            shown.contains("\"delays\":[\"15s\",\"60s\",\"240s\"]"),
            "{shown}"
        );
    }
}
