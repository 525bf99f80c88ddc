//! Sending one delivery to its provider. Each channel type is one file with a `send`
//! function returning an [`Outcome`]; `Channels::send` is the only place that dispatches.

pub mod http;
pub mod outcome;
pub mod webhook;

use std::time::Duration;

pub use outcome::Outcome;

use crate::config::Settings;
use crate::model::{Channel, ChannelKind, DeliveryRecord};

/// Shared resources of every channel: the HTTP client and the settings they need.
pub struct Channels {
    pub http: reqwest::Client,
    pub timeout: Duration,
    pub allow_private_targets: bool,
}

impl Channels {
    pub fn new(settings: &Settings) -> Self {
        Self {
            http: http::client(settings.delivery.timeout),
            timeout: settings.delivery.timeout,
            allow_private_targets: settings.delivery.allow_private_targets,
        }
    }

    /// Whether this version delivers to the channel's type; the router routes only to those.
    pub fn supports(kind: &ChannelKind) -> bool {
        match kind {
            ChannelKind::Webhook { .. } => true,
            ChannelKind::Slack { .. }
            | ChannelKind::Discord { .. }
            | ChannelKind::Email { .. }
            | ChannelKind::PagerDuty { .. } => false,
        }
    }

    /// Makes one attempt; never panics on what a provider answers.
    pub async fn send(&self, channel: &Channel, record: &DeliveryRecord) -> Outcome {
        match &channel.kind {
            ChannelKind::Webhook {
                url,
                headers,
                secret,
            } => webhook::send(self, record, url, headers, secret.as_ref()).await,
            ChannelKind::Slack { .. }
            | ChannelKind::Discord { .. }
            | ChannelKind::Email { .. }
            | ChannelKind::PagerDuty { .. } => Outcome::permanent(format!(
                "channel type `{}` is not delivered by this version of sysmos-notify",
                channel.kind.name()
            )),
        }
    }
}
