//! Slack `chat.postMessage` body: Block Kit (header, summary, fields, a "View in Sysmos"
//! button, context) with a fallback `text`, within Slack's documented limits.

use serde::Serialize;

use super::text::{cut, fit, slack as mrkdwn};
use super::Alert;
use crate::model::Severity;

/// Slack's limits: header text 150, section text 3000, 10 fields of 2000, button URL 3000.
const HEADER: usize = 150;
const SECTION: usize = 3000;
const FIELDS: usize = 10;
const FIELD: usize = 2000;
const URL: usize = 3000;
/// The fallback shows in notifications; Slack truncates past 40,000, readers much earlier.
const FALLBACK: usize = 3000;

fn icon(alert: &Alert<'_>) -> &'static str {
    if alert.recovery {
        return "✅";
    }
    match alert.severity {
        Severity::Critical => "🔴",
        Severity::Warning => "🟠",
        Severity::Info => "🔵",
    }
}

/// A `chat.postMessage` body, written straight to JSON: no `serde_json::Value` tree is built
/// and dropped for every Slack delivery (BENCHMARKS.md, "Provider bodies written
/// directly").
#[derive(Debug, Serialize)]
pub struct Message<'a> {
    channel: &'a str,
    text: String,
    blocks: Vec<Block<'a>>,
    unfurl_links: bool,
    unfurl_media: bool,
    metadata: Metadata,
}

/// Every message says which alerts it covers (CONTRACT §5a), so a reader of the channel's
/// history (or a Slack app) can tell a digest's alerts apart from a lone alert's.
#[derive(Debug, Serialize)]
struct Metadata {
    event_type: &'static str,
    event_payload: Covered,
}

#[derive(Debug, Serialize)]
struct Covered {
    /// Comma-separated event ids.
    event_ids: String,
    count: usize,
}

impl Metadata {
    fn covering<'e>(event_ids: impl IntoIterator<Item = &'e str>) -> Self {
        let ids: Vec<&str> = event_ids.into_iter().collect();
        Self {
            event_type: "sysmos_alerts",
            event_payload: Covered {
                count: ids.len(),
                event_ids: ids.join(","),
            },
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Header {
        text: Text,
    },
    Section {
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<Text>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        fields: Vec<Text>,
    },
    Actions {
        elements: [Button<'a>; 1],
    },
    Context {
        elements: [Text; 1],
    },
}

#[derive(Debug, Serialize)]
#[serde(tag = "type")]
enum Text {
    #[serde(rename = "plain_text")]
    Plain {
        text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        emoji: Option<bool>,
    },
    /// `verbatim`: event text never becomes a link, a channel name or a mention.
    #[serde(rename = "mrkdwn")]
    Mrkdwn { text: String, verbatim: bool },
}

impl Text {
    fn mrkdwn(text: String) -> Self {
        Text::Mrkdwn {
            text,
            verbatim: true,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "button")]
struct Button<'a> {
    text: Text,
    url: &'a str,
    action_id: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    style: Option<&'static str>,
}

/// The JSON body for `channel`.
pub fn message<'a>(alert: &'a Alert<'_>, channel: &'a str) -> Message<'a> {
    let header = cut(&format!("{} {}", icon(alert), alert.title), HEADER);
    let summary = fit(&alert.summary, SECTION, mrkdwn);
    let fields: Vec<Text> = alert
        .facts
        .iter()
        .take(FIELDS)
        .map(|f| {
            // `*label*\nvalue`. An unknown event type's labels are its alert keys: escaped
            // too (found by fuzzing: a key `<!channel>` would have notified the channel).
            let label = format!("*{}*\n", fit(&f.label.replace('*', ""), 100, mrkdwn));
            let room = FIELD - label.chars().count();
            Text::mrkdwn(label + &fit(&f.value, room, mrkdwn))
        })
        .collect();
    let mut blocks = vec![
        Block::Header {
            text: Text::Plain {
                text: header,
                emoji: Some(true),
            },
        },
        Block::Section {
            text: Some(Text::mrkdwn(summary)),
            fields: Vec::new(),
        },
    ];
    if !fields.is_empty() {
        blocks.push(Block::Section { text: None, fields });
    }
    if alert.link.chars().count() <= URL {
        let danger = !alert.recovery && alert.severity == Severity::Critical;
        blocks.push(Block::Actions {
            elements: [Button {
                text: Text::Plain {
                    text: "View in Sysmos".into(),
                    emoji: None,
                },
                url: &alert.link,
                action_id: "view_in_sysmos",
                style: danger.then_some("danger"),
            }],
        });
    }
    let context = format!(
        "{} · {} · {} · Sysmos",
        alert.event.kind(),
        alert.severity_label(),
        alert.when()
    );
    blocks.push(Block::Context {
        elements: [Text::mrkdwn(fit(&context, SECTION, mrkdwn))],
    });
    Message {
        channel,
        text: fit(
            &format!("[{}] {} — {}", alert.tag, alert.title, alert.summary),
            FALLBACK,
            mrkdwn,
        ),
        blocks,
        unfurl_links: false,
        unfurl_media: false,
        metadata: Metadata::covering([alert.event.event_id()]),
    }
}
