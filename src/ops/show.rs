//! `settings show ACCOUNT`: the account's settings as the service caches them, secrets masked.

use std::fmt::Write;

use super::{mask_url, Ops};
use crate::model::{AccountSettings, Channel, ChannelKind};

/// Prints the account's settings; an error when the account has none.
pub fn settings(ops: &Ops, account: &str) -> anyhow::Result<()> {
    let cache = ops.settings_cache()?;
    let Some(settings) = cache.get(account) else {
        anyhow::bail!(
            "account {account} has no settings in {} ({} accounts cached)",
            ops.topics.config,
            cache.len()
        );
    };
    print!("{}", render(&settings));
    Ok(())
}

/// The text `settings show` prints.
pub fn render(settings: &AccountSettings) -> String {
    let mut out = format!(
        "account {}  version {}  {} channel(s)\n",
        settings.account_id,
        settings.version,
        settings.channels.len()
    );
    for channel in &settings.channels {
        let events = if channel.events.is_empty() {
            "all".to_owned()
        } else {
            channel.events.join(",")
        };
        let _ = writeln!(
            out,
            "\n  {}  ({})  {}  events: {}  min_severity: {}",
            channel.id,
            channel.kind.name(),
            if channel.enabled {
                "enabled"
            } else {
                "disabled"
            },
            events,
            channel.min_severity.as_str()
        );
        for line in details(channel) {
            let _ = writeln!(out, "    {line}");
        }
    }
    for reason in &settings.skipped {
        let _ = writeln!(out, "\n  skipped: {reason}");
    }
    out
}

/// The provider-specific settings, one per line, every secret masked.
fn details(channel: &Channel) -> Vec<String> {
    match &channel.kind {
        ChannelKind::Slack { channel, .. } => {
            vec![format!("channel: {channel}"), "bot_token: ***".into()]
        }
        ChannelKind::Discord { webhook_url } => {
            vec![format!("webhook_url: {}", mask_url(webhook_url.expose()))]
        }
        ChannelKind::PagerDuty { .. } => vec!["integration_key: ***".into()],
        ChannelKind::Webhook {
            url,
            headers,
            secret,
            rate,
        } => {
            let mut lines = vec![format!("url: {}", mask_url(url.expose()))];
            if let Some(rate) = rate {
                lines.push(format!("rate: {rate}"));
            }
            for (name, _) in headers {
                lines.push(format!("header {name}: ***"));
            }
            if secret.is_some() {
                lines.push("secret: *** (requests are signed)".into());
            }
            lines
        }
        ChannelKind::Email { recipients } => recipients
            .iter()
            .map(|r| {
                let state = match (r.verified, &r.verification_url) {
                    (true, _) => "verified",
                    (false, Some(_)) => "not verified; verification link ***",
                    (false, None) => "not verified; no verification link",
                };
                format!("recipient {} ({state})", r.address)
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_secret_is_masked() {
        let record = json!({"account_id":"acc_42","version":7,"channels":[
            {"id":"slack-ops","type":"slack","bot_token":"xoxb-SECRET","channel":"C0123ABC"},
            {"id":"discord","type":"discord","webhook_url":"https://discord.com/api/webhooks/1/SECRET"},
            {"id":"email","type":"email","recipients":[
                {"address":"owner@example.com","verified":true},
                {"address":"new@example.com","verified":false,"verification_url":"https://v?t=SECRET"}]},
            {"id":"pd","type":"pagerduty","integration_key":"SECRET0123456789abcdef0123456789","events":["monitor.*"]},
            {"id":"hook","type":"webhook","url":"https://hooks.example.com/SECRET","enabled":false,
             "headers":{"Authorization":"Bearer SECRET"},"secret":"whsec_SECRET"}]});
        let settings = AccountSettings::decode(record.to_string().as_bytes()).unwrap();
        let text = render(&settings);
        assert!(!text.contains("SECRET"), "{text}");
        for shown in [
            "account acc_42  version 7  5 channel(s)",
            "slack-ops  (slack)  enabled  events: all  min_severity: info",
            "channel: C0123ABC",
            "https://discord.com/***",
            "recipient new@example.com (not verified; verification link ***)",
            "pd  (pagerduty)  enabled  events: monitor.*",
            "hook  (webhook)  disabled",
            "header Authorization: ***",
        ] {
            assert!(text.contains(shown), "missing {shown:?} in\n{text}");
        }
    }
}
