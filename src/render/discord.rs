//! Discord webhook body: one embed with title, description, fields, timestamp, dashboard
//! URL, footer and a colour per severity (CONTRACT §5), within Discord's limits.

use serde_json::{json, Value};

use super::digest::{Digest, Line};
use super::text::{cut, discord as markdown, fit};
use super::Alert;
use crate::model::Severity;

/// Discord's embed limits.
const TITLE: usize = 256;
const DESCRIPTION: usize = 4096;
const FIELDS: usize = 25;
const FIELD_NAME: usize = 256;
const FIELD_VALUE: usize = 1024;
const FOOTER: usize = 2048;
/// Title, description, field names and values and footer together, over all of a message's
/// embeds.
const TOTAL: usize = 6000;
/// Embeds in one message: a digest covers at most this many alerts (CONTRACT §5a).
pub const DIGEST: usize = 10;

pub const RED: u32 = 15548997;
pub const YELLOW: u32 = 16705372;
pub const GREEN: u32 = 5763719;

/// Critical red, warning yellow, info and recoveries green.
pub fn color(alert: &Alert<'_>) -> u32 {
    match alert.severity {
        _ if alert.recovery => GREEN,
        Severity::Critical => RED,
        Severity::Warning => YELLOW,
        Severity::Info => GREEN,
    }
}

/// The JSON body posted to the webhook URL.
pub fn message(alert: &Alert<'_>) -> Value {
    let title = fit(&format!("{} — {}", alert.tag, alert.title), TITLE, markdown);
    let footer = cut(
        &format!(
            "Sysmos · {} · {}",
            alert.event.kind(),
            alert.severity_label()
        ),
        FOOTER,
    );
    let mut budget = TOTAL - title.chars().count() - footer.chars().count();
    let mut link = format!("\n\n[View in Sysmos]({})", alert.link);
    if link.chars().count() > DESCRIPTION / 2 {
        link.clear(); // an absurd id: the title still links to the dashboard
    }
    // Half of what is left is kept for the fields.
    let room = (DESCRIPTION - link.chars().count()).min(budget / 2);
    let description = fit(&alert.summary, room, markdown) + &link;
    budget = budget.saturating_sub(description.chars().count());
    let mut fields = Vec::new();
    for fact in alert.facts.iter().take(FIELDS) {
        let name = fit(&fact.label, FIELD_NAME, markdown);
        let value = fit(&fact.value, FIELD_VALUE, markdown);
        let size = name.chars().count() + value.chars().count();
        if size > budget {
            break; // the 6000-character total: later fields are left out, not the request
        }
        budget -= size;
        fields.push(
            json!({"name": name, "value": value, "inline": fact.value.chars().count() <= 40}),
        );
    }
    json!({
        "username": "Sysmos",
        "allowed_mentions": {"parse": []},
        "embeds": [{
            "title": title,
            "description": description,
            "url": alert.link,
            "color": color(alert),
            "fields": fields,
            "timestamp": alert.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "footer": {"text": footer},
        }],
    })
}

/// One message with an embed per alert of `digest` (at most [`DIGEST`]), coloured by
/// severity, oldest first. The embeds share Discord's 6,000 characters: each gets an equal
/// share for its description and fields, so they shrink to fit, never past the limit.
pub fn digest(digest: &Digest<'_>) -> Value {
    let lines = &digest.lines[..digest.lines.len().min(DIGEST)];
    let content = cut(&format!("**{}**", digest.headline()), 2000);
    let share = TOTAL / lines.len().max(1);
    let embeds: Vec<Value> = lines.iter().map(|line| digest_embed(line, share)).collect();
    json!({
        "username": "Sysmos",
        "allowed_mentions": {"parse": []},
        "content": content,
        "embeds": embeds,
    })
}

/// One alert of a digest within `share` characters of the message's 6,000.
fn digest_embed(line: &Line<'_>, share: usize) -> Value {
    let alert = &line.alert;
    let over = line.over();
    let footer = cut(
        &format!(
            "Sysmos · {} · {}",
            alert.event.kind(),
            alert.severity_label()
        ),
        (share / 6).min(FOOTER),
    );
    let title = fit(
        &format!("{} — {}", line.status(), alert.name),
        (share / 4).min(TITLE),
        markdown,
    );
    let mut budget = share.saturating_sub(title.chars().count() + footer.chars().count());
    let when = fit(&line.when(), budget / 2, markdown);
    budget -= when.chars().count();
    let description = fit(&alert.summary, budget.saturating_sub(1), markdown);
    let color = if over { GREEN } else { color(alert) };
    json!({
        "title": title,
        "description": format!("{description}\n{when}").trim().to_owned(),
        "url": alert.link,
        "color": color,
        "timestamp": alert.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "footer": {"text": footer},
    })
}

/// Characters Discord counts towards the 6000 total, over every embed of a message.
pub fn embed_size(body: &Value) -> usize {
    let len = |v: &Value| v.as_str().map_or(0, |s| s.chars().count());
    let embeds = body["embeds"].as_array().map_or(&[][..], |e| e.as_slice());
    embeds
        .iter()
        .map(|embed| {
            len(&embed["title"])
                + len(&embed["description"])
                + len(&embed["footer"]["text"])
                + embed["fields"].as_array().map_or(0, |f| {
                    f.iter().map(|f| len(&f["name"]) + len(&f["value"])).sum()
                })
        })
        .sum()
}
