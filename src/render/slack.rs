//! Slack `chat.postMessage` body: Block Kit (header, summary, fields, a "View in Sysmos"
//! button, context) with a fallback `text`, within Slack's documented limits.

use serde_json::{json, Value};

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

/// `verbatim`: event text never becomes a link, a channel name or a mention.
fn mrkdwn_text(text: String) -> Value {
    json!({"type": "mrkdwn", "text": text, "verbatim": true})
}

/// The JSON body for `channel`.
pub fn message(alert: &Alert<'_>, channel: &str) -> Value {
    let header = cut(&format!("{} {}", icon(alert), alert.title), HEADER);
    let summary = fit(&alert.summary, SECTION, mrkdwn);
    let fields: Vec<Value> = alert
        .facts
        .iter()
        .take(FIELDS)
        .map(|f| {
            // `*label*\nvalue`. An unknown event type's labels are its alert keys: escaped
            // too (found by fuzzing: a key `<!channel>` would have notified the channel).
            let label = format!("*{}*\n", fit(&f.label.replace('*', ""), 100, mrkdwn));
            let room = FIELD - label.chars().count();
            mrkdwn_text(label + &fit(&f.value, room, mrkdwn))
        })
        .collect();
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": header, "emoji": true}}),
        json!({"type": "section", "text": mrkdwn_text(summary)}),
    ];
    if !fields.is_empty() {
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    if alert.link.chars().count() <= URL {
        let mut button = json!({"type": "button", "text": {"type": "plain_text", "text": "View in Sysmos"},
            "url": alert.link, "action_id": "view_in_sysmos"});
        if !alert.recovery && alert.severity == Severity::Critical {
            button["style"] = json!("danger");
        }
        blocks.push(json!({"type": "actions", "elements": [button]}));
    }
    let context = format!(
        "{} · {} · {} · Sysmos",
        alert.event.kind(),
        alert.severity_label(),
        alert.when()
    );
    blocks.push(json!({"type": "context", "elements": [
        mrkdwn_text(fit(&context, SECTION, mrkdwn))]}));
    json!({
        "channel": channel,
        "text": fit(&format!("[{}] {} — {}", alert.tag, alert.title, alert.summary), FALLBACK, mrkdwn),
        "blocks": blocks,
        "unfurl_links": false,
        "unfurl_media": false,
    })
}
