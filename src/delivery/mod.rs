//! Sending one delivery to its provider. Each channel type is one file with a `send`
//! function returning what happened; `Channels::send` is the only place that dispatches.
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

pub use outcome::Outcome;

use crate::config::Settings;
use crate::model::{Channel, ChannelKind, DeliveryRecord};
use crate::render::Alert;

/// What one attempt came to, and for email which recipients it reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub outcome: Outcome,
    pub reached: Vec<String>,
    /// Set when no request was made: the destination was `busy` or its circuit `open`.
    pub skipped: Option<&'static str>,
    /// This attempt's failure opened the destination's circuit.
    pub opened_circuit: bool,
}

impl From<Outcome> for Sent {
    fn from(outcome: Outcome) -> Self {
        Self {
            outcome,
            reached: Vec::new(),
            skipped: None,
            opened_circuit: false,
        }
    }
}

/// Shared resources of every channel: the HTTP clients, the SMTP pool and the settings.
pub struct Channels {
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
    pub slack_api: String,
    pub pagerduty_events: String,
}

impl Channels {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let roots = match settings.delivery.ca_file.as_str() {
            "" => Vec::new(),
            path => http::roots(path).map_err(|e| anyhow::anyhow!("delivery.ca_file: {e}"))?,
        };
        let per_destination = settings.delivery.max_in_flight_per_destination;
        Ok(Self {
            http: http::Clients::new(per_destination, || {
                http::client(settings.delivery.timeout, false, &roots)
            })?,
            user_http: http::Clients::new(per_destination, || {
                http::client(
                    settings.delivery.timeout,
                    !settings.delivery.allow_private_targets,
                    &roots,
                )
            })?,
            mailer: Arc::new(email::Mailer::new(
                &settings.channels.email,
                settings.delivery.timeout,
            )?),
            destinations: breaker::Destinations::new(
                settings.delivery.max_in_flight_per_destination,
                settings.delivery.breaker_threshold,
                settings.delivery.breaker_cooldown,
            ),
            timeout: settings.delivery.timeout,
            policy: guard::Policy {
                allow_private: settings.delivery.allow_private_targets,
                allow_http: settings.delivery.allow_http,
            },
            dashboard: settings.dashboard_base().to_owned(),
            slack_api: settings
                .channels
                .slack
                .api_base_url
                .trim_end_matches('/')
                .to_owned(),
            pagerduty_events: settings.channels.pagerduty.events_url.clone(),
        })
    }

    /// Makes one attempt, if the destination lets it through; never panics on what a
    /// provider answers.
    pub async fn send(&self, channel: &Channel, record: &DeliveryRecord) -> Sent {
        let key = destination(&channel.kind);
        let ticket = match self.destinations.admit(&key).await {
            Ok(ticket) => ticket,
            Err(refused) => {
                return Sent {
                    skipped: Some(refused.label),
                    ..Outcome::retry(refused.reason).into()
                };
            }
        };
        let mut sent = self.attempt(channel, record).await;
        // Only a destination that did not answer (timeout, connection failure) trips the
        // breaker: one that answers, even 5xx or 429, answers fast and holds no capacity.
        let answered = !matches!(sent.outcome, Outcome::Retry { status: None, .. });
        sent.opened_circuit = self.destinations.record(ticket, answered);
        sent
    }

    async fn attempt(&self, channel: &Channel, record: &DeliveryRecord) -> Sent {
        // Webhooks carry the event's own fields; every other channel renders the alert view.
        let alert = || Alert::new(&record.event, &self.dashboard);
        match &channel.kind {
            ChannelKind::Webhook {
                url,
                headers,
                secret,
            } => webhook::send(self, record, url, headers, secret.as_ref())
                .await
                .into(),
            ChannelKind::Slack { bot_token, channel } => {
                slack::send(self, &alert(), bot_token, channel).await.into()
            }
            ChannelKind::Discord { webhook_url } => {
                discord::send(self, &alert(), webhook_url).await.into()
            }
            ChannelKind::PagerDuty { integration_key } => {
                pagerduty::send(self, &alert(), integration_key)
                    .await
                    .into()
            }
            ChannelKind::Email { recipients } => {
                email::send(&self.mailer, record, &alert(), recipients).await
            }
        }
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
