//! What every rendering must satisfy, whatever the event says: each provider's limits, and
//! event text inert in every markup. Shared by the rendering tests and the fuzz target
//! `render` (`fuzz/fuzz_targets/render.rs` includes this file), so a fuzzed input is held to
//! exactly what the fixtures are.

use serde_json::Value;
use sysmos_notify::model::Event;
use sysmos_notify::render::{discord, email, pagerduty, slack, Alert};

fn chars(v: &Value) -> usize {
    v.as_str().map_or(0, |s| s.chars().count())
}

fn blank(v: &Value) -> bool {
    v.as_str().is_none_or(|s| s.trim().is_empty())
}

/// Every `mrkdwn` text of a Slack message (where `<!channel>` or a link would take effect).
pub fn collect_mrkdwn(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(o) if o.get("type") == Some(&Value::from("mrkdwn")) => {
            out.push(o["text"].as_str().unwrap().to_owned())
        }
        Value::Object(o) => o.values().for_each(|v| collect_mrkdwn(v, out)),
        Value::Array(a) => a.iter().for_each(|v| collect_mrkdwn(v, out)),
        _ => {}
    }
}

/// Panics, naming `name`, when a rendering of `event` breaks a provider limit or lets
/// event text act as markup.
pub fn assert_renderings_hold(name: &str, event: &Event, dashboard: &str) {
    let alert = Alert::new(event, dashboard);

    let s = serde_json::to_value(slack::message(&alert, "C1")).unwrap();
    let blocks = s["blocks"].as_array().unwrap();
    assert!(blocks.len() <= 50, "{name}");
    assert!(chars(&s["text"]) <= 3000, "{name}: fallback text");
    for block in blocks {
        match block["type"].as_str().unwrap() {
            "header" => assert!(chars(&block["text"]["text"]) <= 150, "{name}: header"),
            "section" => {
                assert!(chars(&block["text"]["text"]) <= 3000, "{name}: section");
                let fields = block["fields"].as_array().map_or(&[][..], |f| f.as_slice());
                assert!(fields.len() <= 10, "{name}: fields");
                for f in fields {
                    assert!(chars(&f["text"]) <= 2000, "{name}: field");
                }
            }
            "actions" => assert!(chars(&block["elements"][0]["url"]) <= 3000, "{name}: url"),
            "context" => assert!(chars(&block["elements"][0]["text"]) <= 3000, "{name}"),
            other => panic!("{name}: unexpected block {other}"),
        }
    }
    let mut mrkdwn: Vec<String> = vec![s["text"].as_str().unwrap().to_owned()];
    collect_mrkdwn(&s["blocks"], &mut mrkdwn);
    for text in &mrkdwn {
        assert!(
            !text.contains('<') && !text.contains('>'),
            "{name}: raw markup in Slack mrkdwn: {text}"
        );
    }

    let d = discord::message(&alert);
    let embed = &d["embeds"][0];
    assert!(chars(&embed["title"]) <= 256, "{name}: title");
    assert!(chars(&embed["description"]) <= 4096, "{name}: description");
    assert!(chars(&embed["footer"]["text"]) <= 2048, "{name}: footer");
    let fields = embed["fields"].as_array().unwrap();
    assert!(fields.len() <= 25, "{name}: fields");
    for f in fields {
        assert!(
            chars(&f["name"]) <= 256 && chars(&f["value"]) <= 1024,
            "{name}"
        );
        assert!(
            !blank(&f["name"]) && !blank(&f["value"]),
            "{name}: Discord refuses blank field names and values: {f}"
        );
    }
    assert!(discord::embed_size(&d) <= 6000, "{name}: embed total");
    assert_eq!(d["allowed_mentions"]["parse"], serde_json::json!([]));

    let p = serde_json::to_value(pagerduty::event(&alert)).unwrap();
    assert!(chars(&p["payload"]["summary"]) <= 1024, "{name}: summary");
    assert!(chars(&p["dedup_key"]) <= 255, "{name}: dedup_key");
    assert!(["critical", "warning", "info"].contains(&p["payload"]["severity"].as_str().unwrap()));
    assert!(
        serde_json::to_vec(&p).unwrap().len() < 512 * 1024,
        "{name}: PD size"
    );

    let mail = email::alert(&alert);
    assert!(
        !mail.subject.contains('\n') && !mail.subject.contains('\r'),
        "{name}: header injection in the subject"
    );
    assert!(
        !mail.html.contains("<script") && !mail.html.contains("<img"),
        "{name}: event markup in the HTML part"
    );
}
