//! Slack `chat.postMessage` body: Block Kit (header, summary, fields, a "View in Sysmos"
//! button, context) with a fallback `text`, within Slack's documented limits.

use serde::Serialize;

use super::digest::Digest;
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
/// Blocks in one message.
const BLOCKS: usize = 50;
/// Alerts one digest message covers at most (CONTRACT §5a).
pub const DIGEST: usize = 100;
/// A resource name in a digest line; its link is left out past [`URL`] / 3.
const NAME: usize = 150;

fn icon(alert: &Alert<'_>) -> &'static str {
    icon_of(alert, alert.recovery)
}

fn icon_of(alert: &Alert<'_>, over: bool) -> &'static str {
    if over {
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

/// One message for the alerts of `digest`: a header with the count, one line per alert
/// (icon, resource linked to its dashboard page, status, time) in sections of at most
/// 3,000 characters, within 50 blocks; `text` summarises.
pub fn digest<'a>(digest: &Digest<'_>, channel: &'a str) -> Message<'a> {
    let open = digest.lines.iter().filter(|l| !l.over());
    let worst = open.map(|l| l.alert.severity).max();
    let header_icon = match worst {
        None => "✅",
        Some(Severity::Critical) => "🔴",
        Some(Severity::Warning) => "🟠",
        Some(Severity::Info) => "🔵",
    };
    let mut blocks = vec![Block::Header {
        text: Text::Plain {
            text: cut(&format!("{header_icon} {}", digest.headline()), HEADER),
            emoji: Some(true),
        },
    }];
    let room = BLOCKS - 2; // the header, and the context at the end
    let mut sections: Vec<String> = vec![String::new()];
    let mut left_out = 0;
    for line in &digest.lines {
        let name = fit(&line.alert.name, NAME, mrkdwn);
        let resource = if line.alert.link.chars().count() <= URL / 3 {
            format!("<{}|{name}>", link_target(&line.alert.link))
        } else {
            name
        };
        let text = format!(
            "{} {resource} — {} · {}",
            icon_of(&line.alert, line.over()),
            line.status(),
            line.when()
        );
        let current = sections.last_mut().expect("one section at least");
        if current.is_empty() {
            *current = text;
        } else if current.chars().count() + 1 + text.chars().count() <= SECTION {
            current.push('\n');
            current.push_str(&text);
        } else if sections.len() < room {
            sections.push(text);
        } else {
            left_out += 1;
        }
    }
    if left_out > 0 {
        let last = sections.last_mut().expect("one section at least");
        let more = format!("\n… and {left_out} more");
        while last.chars().count() + more.chars().count() > SECTION {
            last.truncate(last.rfind('\n').unwrap_or(0));
        }
        last.push_str(&more);
    }
    blocks.extend(sections.into_iter().map(|text| Block::Section {
        text: Some(Text::mrkdwn(text)),
        fields: Vec::new(),
    }));
    blocks.push(Block::Context {
        elements: [Text::mrkdwn(
            "Sysmos · alerts that arrived together while this channel was at Slack's rate limit"
                .into(),
        )],
    });
    let names: Vec<&str> = digest.lines.iter().map(|l| l.alert.name.as_str()).collect();
    Message {
        channel,
        text: fit(
            &format!("{} — {}", digest.headline(), names.join(", ")),
            FALLBACK,
            mrkdwn,
        ),
        blocks,
        unfurl_links: false,
        unfurl_media: false,
        metadata: Metadata::covering(digest.event_ids.iter().copied()),
    }
}

/// A URL inside `<url|text>`: `|` and `>` would end it early, `<` and `&` are mrkdwn's.
fn link_target(url: &str) -> String {
    url.replace('&', "&amp;")
        .replace('|', "%7C")
        .replace('<', "%3C")
        .replace('>', "%3E")
}
