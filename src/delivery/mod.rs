//! Sending one delivery to its provider. Each channel type is one file with a `send`
//! function returning what happened; [`Dispatcher::send`] is the only place that dispatches.
//! What a message says is decided in `crate::render`; these files only do the I/O.

pub mod breaker;
pub mod discord;
pub mod email;
pub mod guard;
pub mod http;
pub mod outcome;
pub mod pagerduty;
pub mod slack;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

pub use breaker::{Opened, Skipped};
pub use outcome::{Outcome, Silence};

use crate::config::Config;
use crate::model::{Channel, ChannelKind, DeliveryRecord};
use crate::render::digest::Digest;
use crate::render::{self, Alert};

/// What one attempt came to, and for email which recipients it reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempted {
    pub outcome: Outcome,
    pub reached: Vec<String>,
    /// What this attempt's failure opened: its endpoint's circuit, or its host's hold.
    pub opened: Option<Opened>,
    /// The provider said its next request to this bucket must wait this long (Discord's
    /// `X-RateLimit-Remaining: 0` with `X-RateLimit-Reset-After`).
    pub hold: Option<Duration>,
}

impl From<Outcome> for Attempted {
    fn from(outcome: Outcome) -> Self {
        Self {
            outcome,
            reached: Vec::new(),
            opened: None,
            hold: None,
        }
    }
}

/// What every channel's requests share: the HTTP clients, the SMTP pool, each destination's
/// cap and circuit, and the provider endpoints.
pub struct Dispatcher {
    /// For the operator's endpoints (Slack API, PagerDuty Events API).
    pub http: http::Clients,
    /// For user-supplied URLs (webhooks, Discord): resolves to public addresses only,
    /// unless `delivery.allow_private_targets` is set.
    pub user_http: http::Clients,
    pub mailer: Arc<email::Mailer>,
    pub destinations: breaker::Destinations,
    pub timeout: Duration,
    pub policy: guard::Policy,
    /// `dashboard.base_url` without a trailing slash.
    pub dashboard: String,
    /// `channels.slack.api_base_url` without a trailing slash.
    pub slack_api: String,
    pub pagerduty_events: reqwest::Url,
}

impl Dispatcher {
    /// Must run inside a Tokio runtime (the SMTP pool).
    /// Fails only on a `delivery.ca_file` certificate the TLS stack cannot use.
    pub fn new(config: &Config) -> reqwest::Result<Self> {
        let delivery = &config.delivery;
        let roots = delivery
            .ca_file
            .as_ref()
            .map_or(&[][..], |ca| &ca.certificates[..]);
        let per_destination = delivery.max_in_flight_per_destination;
        Ok(Self {
            http: http::Clients::new(per_destination, || {
                http::client(delivery.timeout, false, roots)
            })?,
            user_http: http::Clients::new(per_destination, || {
                http::client(delivery.timeout, !delivery.allow_private_targets, roots)
            })?,
            mailer: Arc::new(email::Mailer::new(&config.channels.email, delivery.timeout)),
            destinations: breaker::Destinations::new(
                per_destination,
                delivery.breaker_threshold,
                delivery.breaker_cooldown,
            ),
            timeout: delivery.timeout,
            policy: guard::Policy {
                allow_private: delivery.allow_private_targets,
                allow_http: delivery.allow_http,
            },
            dashboard: config.dashboard_base().to_owned(),
            slack_api: config
                .channels
                .slack
                .api_base_url
                .as_str()
                .trim_end_matches('/')
                .to_owned(),
            pagerduty_events: config.channels.pagerduty.events_url.clone(),
        })
    }

    /// Makes one attempt for `records` (one delivery, or the deliveries of one channel taken
    /// together into a digest, oldest first) if the destination lets it through, or says why
    /// it was skipped; never panics on what a provider answers.
    pub async fn send(
        &self,
        channel: &Channel,
        records: &[DeliveryRecord],
    ) -> Result<Attempted, Skipped> {
        let host = destination(&channel.kind);
        let endpoint = endpoint(channel, &records[0].account_id);
        let target = breaker::Target {
            host: &host,
            endpoint: &endpoint,
        };
        let ticket = self.destinations.admit(target).await?;
        let mut attempted = self.attempt(channel, records).await;
        attempted.opened = self.destinations.record(ticket, reach(&attempted.outcome));
        Ok(attempted)
    }

    async fn attempt(&self, channel: &Channel, records: &[DeliveryRecord]) -> Attempted {
        let record = &records[0];
        // Webhooks carry the event's own fields; every other channel renders the alert view,
        // or the digest of several (CONTRACT §5a: never PagerDuty or webhooks).
        match &channel.kind {
            ChannelKind::Webhook {
                url,
                headers,
                secret,
                ..
            } => webhook::send(self, record, url, headers, secret.as_ref())
                .await
                .into(),
            ChannelKind::Slack { bot_token, channel } => {
                let body = self.render(
                    records,
                    |alert| serde_json::to_vec(&render::slack::message(alert, channel)),
                    |digest| serde_json::to_vec(&render::slack::digest(digest, channel)),
                );
                let body = body.expect("Slack bodies serialize");
                slack::send(self, body, bot_token).await.into()
            }
            ChannelKind::Discord { webhook_url } => {
                let body = self.render(records, render::discord::message, render::discord::digest);
                discord::send(self, &body, webhook_url).await
            }
            ChannelKind::PagerDuty { integration_key } => {
                let alert = Alert::new(&record.event, &self.dashboard);
                pagerduty::send(self, &alert, integration_key).await.into()
            }
            ChannelKind::Email { recipients } => {
                let content = self.render(records, render::email::alert, render::email::summary);
                email::send(&self.mailer, record, &content, recipients).await
            }
        }
    }

    /// What `records` say: one alert's rendering, or several records' digest.
    fn render<T>(
        &self,
        records: &[DeliveryRecord],
        one: impl FnOnce(&Alert<'_>) -> T,
        digest: impl FnOnce(&Digest<'_>) -> T,
    ) -> T {
        match records {
            [record] => one(&Alert::new(&record.event, &self.dashboard)),
            _ => digest(&Digest::new(
                records
                    .iter()
                    .map(|record| Alert::new(&record.event, &self.dashboard))
                    .collect(),
            )),
        }
    }
}

/// How an attempt reached its destination, as the breakers count it (see `breaker`).
fn reach(outcome: &Outcome) -> breaker::Reach {
    match outcome {
        Outcome::Unanswered {
            silence: Silence::Unreachable,
            ..
        } => breaker::Reach::Unreachable,
        Outcome::Unanswered {
            silence: Silence::NoAnswer,
            ..
        } => breaker::Reach::NoAnswer,
        // Refused by the guard or not buildable: no request was made.
        Outcome::Permanent { status: None, .. } => breaker::Reach::Nothing,
        Outcome::Retry { .. } => breaker::Reach::Failing,
        Outcome::Delivered { .. } | Outcome::Permanent { .. } | Outcome::RateLimited { .. } => {
            breaker::Reach::Answered
        }
    }
}

/// The key of a channel's own endpoint, whose circuit opens alone: its URL (webhooks,
/// Discord), its bucket (Slack, PagerDuty), or the channel (email, whose server is the
/// operator's).
pub fn endpoint(channel: &Channel, account: &str) -> String {
    use crate::pacing::hashed;
    match &channel.kind {
        ChannelKind::Webhook { url, .. } => hashed(&["webhook", url.expose()]),
        ChannelKind::Discord { webhook_url } => hashed(&["discord", webhook_url.expose()]),
        ChannelKind::Slack { bot_token, channel } => {
            hashed(&["slack", bot_token.expose(), channel])
        }
        ChannelKind::PagerDuty { integration_key } => {
            hashed(&["pagerduty", integration_key.expose()])
        }
        ChannelKind::Email { .. } => hashed(&["email", account, &channel.id]),
    }
}

/// Where a channel's requests go: the host and port of a user-supplied URL, or the provider.
pub fn destination(kind: &ChannelKind) -> String {
    let host_of = |raw: &str| match reqwest::Url::parse(raw) {
        Ok(url) => format!(
            "{}:{}",
            url.host_str().unwrap_or("?"),
            url.port_or_known_default().unwrap_or(0)
        ),
        Err(_) => "invalid-url".to_owned(),
    };
    match kind {
        ChannelKind::Webhook { url, .. } => host_of(url.expose()),
        ChannelKind::Discord { webhook_url } => host_of(webhook_url.expose()),
        ChannelKind::Slack { .. } => "slack".into(),
        ChannelKind::PagerDuty { .. } => "pagerduty".into(),
        ChannelKind::Email { .. } => "smtp".into(),
    }
}
