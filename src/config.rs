//! Service configuration: built-in defaults, then a TOML file, then `SYSMOS_NOTIFY__…`
//! environment variables, then validation that names the offending key (CONTRACT §1).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use lettre::message::Mailbox;
use reqwest::Url;
use serde::Deserialize;

use crate::model::Rate;

const DEFAULTS: &str = include_str!("defaults.toml");
const ENV_PREFIX: &str = "SYSMOS_NOTIFY";

/// librdkafka properties the service sets itself; overriding them would break
/// at-least-once delivery or the group layout, so `kafka.client` may not name them.
const MANAGED_CLIENT_KEYS: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
];

/// Why a configuration was refused. Printed as is; the process exits with status 2.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn key(key: &str, reason: impl std::fmt::Display) -> Self {
        Self(format!("`{key}`: {reason}"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub retry: RetryConfig,
    pub delivery: DeliveryConfig,
    pub http: HttpConfig,
    pub dashboard: DashboardConfig,
    pub channels: ChannelsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group_id: String,
    pub event_topics: Vec<String>,
    pub topic_prefix: String,
    pub partitions: i32,
    /// librdkafka properties passed through verbatim, flattened to dotted names.
    #[serde(default, deserialize_with = "client_properties")]
    pub client: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(deserialize_with = "durations")]
    pub delays: Vec<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub allow_private_targets: bool,
    /// Lets user-supplied URLs use `http://` (implied by `allow_private_targets`).
    pub allow_http: bool,
    /// Requests in flight to one destination (a webhook host, a provider) at most.
    pub max_in_flight_per_destination: usize,
    /// Consecutive unanswered requests after which a destination's circuit opens.
    pub breaker_threshold: u32,
    /// How long an open circuit skips its destination before one probe is let through.
    #[serde(deserialize_with = "duration")]
    pub breaker_cooldown: Duration,
    /// How long what became of a delivery record is remembered (`P.handled`): repeats and
    /// problems superseded by a delivered recovery are recognised within it.
    #[serde(deserialize_with = "duration")]
    pub dedup_window: Duration,
    /// At most this many handled records are remembered; the oldest are forgotten first.
    pub dedup_capacity: usize,
    /// A PEM file of CA certificates trusted besides the public roots built in (a private CA
    /// of receivers inside the network), read when the configuration is loaded.
    #[serde(default)]
    pub ca_file: Option<CaFile>,
    /// A delivery that has waited this long only for its provider's rate limit is
    /// dead-lettered with that reason.
    #[serde(deserialize_with = "duration")]
    pub max_pending: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    #[serde(deserialize_with = "http_url")]
    pub base_url: Url,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelsConfig {
    pub slack: SlackConfig,
    pub discord: DiscordConfig,
    pub pagerduty: PagerDutyConfig,
    pub email: EmailConfig,
}

/// A provider bucket's pace (CONTRACT §5a): `rate` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub rate: Rate,
    pub burst: NonZeroU32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    #[serde(deserialize_with = "http_url")]
    pub api_base_url: Url,
    /// Sustained pace per Slack channel (bot token + channel).
    pub rate: Rate,
    pub burst: NonZeroU32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscordConfig {
    /// Sustained pace per webhook, until its `X-RateLimit-*` headers say otherwise.
    pub rate: Rate,
    pub burst: NonZeroU32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    #[serde(deserialize_with = "http_url")]
    pub events_url: Url,
    /// Sustained pace per integration key.
    pub rate: Rate,
    pub burst: NonZeroU32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub smtp_url: SmtpUrl,
    #[serde(deserialize_with = "mailbox")]
    pub from: Mailbox,
    /// Sustained pace of alert emails per recipient.
    pub rate: Rate,
    pub burst: NonZeroU32,
}

/// Every provider's bucket pace, from `channels.*.rate` and `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paces {
    pub slack: Pace,
    pub discord: Pace,
    pub pagerduty: Pace,
    pub email: Pace,
}

impl Config {
    /// Defaults, then `file` when given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Config::load`], with the environment given explicitly (tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "config file {} does not exist or is not a file",
                    path.display()
                )));
            }
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("kafka.event_topics")
                .with_list_parse_key("retry.delays")
                .try_parsing(true)
                .source(Some(env)),
        );
        let merged = builder.build().map_err(|e| ConfigError(e.to_string()))?;
        let config: Config = serde_path_to_error::deserialize(merged).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::key(&path, e.into_inner())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot: ranges, syntax of URLs, regexes and addresses.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        non_empty("kafka.brokers", &k.brokers)?;
        non_empty("kafka.group_id", &k.group_id)?;
        if k.event_topics.is_empty() {
            return Err(ConfigError::key(
                "kafka.event_topics",
                "at least one topic or regex is required",
            ));
        }
        for (i, topic) in k.event_topics.iter().enumerate() {
            let key = format!("kafka.event_topics[{i}]");
            if topic.starts_with('^') {
                regex::Regex::new(topic)
                    .map_err(|e| ConfigError::key(&key, format!("invalid regex: {e}")))?;
            } else {
                topic_name(&key, topic)?;
            }
        }
        topic_name("kafka.topic_prefix", &k.topic_prefix)?;
        if k.partitions < 1 {
            return Err(ConfigError::key("kafka.partitions", "must be at least 1"));
        }
        for (name, value) in &k.client {
            if MANAGED_CLIENT_KEYS.contains(&name.as_str()) {
                return Err(ConfigError::key(
                    &format!("kafka.client.\"{name}\""),
                    "is set by sysmos-notify itself and cannot be overridden (see kafka.brokers / kafka.group_id)",
                ));
            }
            if value.is_empty() {
                return Err(ConfigError::key(
                    &format!("kafka.client.\"{name}\""),
                    "must not be empty",
                ));
            }
        }
        for (i, d) in self.retry.delays.iter().enumerate() {
            if d.is_zero() {
                return Err(ConfigError::key(
                    &format!("retry.delays[{i}]"),
                    "must be greater than zero",
                ));
            }
        }
        if self.delivery.timeout.is_zero() {
            return Err(ConfigError::key(
                "delivery.timeout",
                "must be greater than zero",
            ));
        }
        let counts = [
            ("delivery.max_in_flight", self.delivery.max_in_flight),
            (
                "delivery.max_in_flight_per_destination",
                self.delivery.max_in_flight_per_destination,
            ),
            (
                "delivery.breaker_threshold",
                self.delivery.breaker_threshold as usize,
            ),
            ("delivery.dedup_capacity", self.delivery.dedup_capacity),
        ];
        if let Some((key, _)) = counts.iter().find(|(_, count)| *count == 0) {
            return Err(ConfigError::key(key, "must be at least 1"));
        }
        let retrying: Duration = self.retry.delays.iter().sum();
        if self.delivery.dedup_window <= retrying {
            return Err(ConfigError::key(
                "delivery.dedup_window",
                format!(
                    "must be longer than the retry delays together ({retrying:?}), or a retried \
                     problem could outlive the memory of its recovery"
                ),
            ));
        }
        Ok(())
    }

    /// The pace of each provider's buckets.
    pub fn paces(&self) -> Paces {
        let c = &self.channels;
        let pace = |rate, burst| Pace { rate, burst };
        Paces {
            slack: pace(c.slack.rate, c.slack.burst),
            discord: pace(c.discord.rate, c.discord.burst),
            pagerduty: pace(c.pagerduty.rate, c.pagerduty.burst),
            email: pace(c.email.rate, c.email.burst),
        }
    }

    /// The dashboard URL without a trailing slash, ready for `/monitors/{id}`.
    pub fn dashboard_base(&self) -> &str {
        self.dashboard.base_url.as_str().trim_end_matches('/')
    }
}

fn non_empty(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::key(key, "must not be empty"));
    }
    Ok(())
}

fn topic_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(ConfigError::key(
            key,
            format!("`{name}` is not a valid Kafka topic name (letters, digits, '.', '_', '-')"),
        ));
    }
    Ok(())
}

mod effective;
mod values;

use values::{client_properties, duration, durations, http_url, mailbox};
pub use values::{parse_duration, CaFile, InvalidSmtpUrl, SmtpUrl};

#[cfg(test)]
mod tests;
