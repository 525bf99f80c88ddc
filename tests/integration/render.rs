//! Rendering snapshots (issue 3 §1, §7): every channel × every event fixture in
//! `tests/fixtures/events/` is rendered and compared with the file checked in under
//! `tests/snapshots/`. `UPDATE_SNAPSHOTS=1` rewrites them; review the diff before committing.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sysmos_notify::model::Event;
use sysmos_notify::render::{discord, email, pagerduty, slack, Alert};

use crate::common::limits::{assert_renderings_hold, collect_mrkdwn};

const DASHBOARD: &str = "https://app.sysmos.io";

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// Every fixture, by name (`monitor.down`), decoded as the router would.
fn fixtures() -> Vec<(String, Event)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root().join("fixtures/events"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let event = Event::decode(Some(&std::fs::read(&path).unwrap()))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, event)
        })
        .collect()
}

/// Compares `actual` with the snapshot file, or writes it when updating.
pub(crate) fn check(relative: &str, actual: &str, failures: &mut Vec<String>) {
    let path = root().join("snapshots").join(relative);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    match std::fs::read_to_string(&path) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => failures.push(format!(
            "{relative} differs (UPDATE_SNAPSHOTS=1 to accept):\n--- expected\n{}\n--- actual\n{}",
            excerpt(&expected),
            excerpt(actual)
        )),
        Err(e) => failures.push(format!("{relative}: {e} (UPDATE_SNAPSHOTS=1 to create)")),
    }
}

fn excerpt(text: &str) -> String {
    text.chars().take(1500).collect()
}

pub(crate) fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap() + "\n"
}

#[test]
fn every_channel_renders_every_event_as_snapshotted() {
    let mut failures = Vec::new();
    for (name, event) in fixtures() {
        let alert = Alert::new(&event, DASHBOARD);
        check(
            &format!("slack/{name}.json"),
            &pretty(&serde_json::to_value(slack::message(&alert, "C0123ABC")).unwrap()),
            &mut failures,
        );
        check(
            &format!("discord/{name}.json"),
            &pretty(&discord::message(&alert)),
            &mut failures,
        );
        check(
            &format!("pagerduty/{name}.json"),
            &pretty(&serde_json::to_value(pagerduty::event(&alert)).unwrap()),
            &mut failures,
        );
        let mail = email::alert(&alert);
        check(
            &format!("email/{name}.txt"),
            &format!("Subject: {}\n\n{}", mail.subject, mail.text),
            &mut failures,
        );
        check(&format!("email/{name}.html"), &mail.html, &mut failures);
    }
    let verification = email::verification(
        "new@example.com",
        "https://app.sysmos.io/verify?t=abc&u=<1>",
    );
    check(
        "email/verification.txt",
        &format!("Subject: {}\n\n{}", verification.subject, verification.text),
        &mut failures,
    );
    check("email/verification.html", &verification.html, &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_rendering_stays_within_provider_limits() {
    for (name, event) in fixtures() {
        assert_renderings_hold(&name, &event, DASHBOARD);
    }
}

#[test]
fn hostile_event_text_is_inert_in_every_markup() {
    let (_, event) = fixtures()
        .into_iter()
        .find(|(n, _)| n == "monitor.down.hostile")
        .unwrap();
    let alert = Alert::new(&event, DASHBOARD);
    let mail = email::alert(&alert);
    for needle in ["<script", "<img", "onerror=alert(1)>", "<b>"] {
        assert!(!mail.html.contains(needle), "HTML keeps {needle}");
    }
    assert!(mail.html.contains("&lt;script&gt;"));
    assert!(!mail.subject.contains('\n') && !mail.subject.contains('\r'));
    // mrkdwn is where `<!channel>` would notify; plain_text (the header) shows it literally.
    let s = serde_json::to_value(slack::message(&alert, "C1")).unwrap();
    let mut mrkdwn: Vec<String> = vec![s["text"].as_str().unwrap().to_owned()];
    collect_mrkdwn(&s["blocks"], &mut mrkdwn);
    assert!(mrkdwn.len() > 3);
    for text in &mrkdwn {
        assert!(
            !text.contains('<') && !text.contains('>'),
            "raw markup in {text}"
        );
    }
    assert!(mrkdwn[0].contains("&lt;!channel&gt;"));
    let d = discord::message(&alert);
    let description = d["embeds"][0]["description"].as_str().unwrap();
    assert!(description.contains("\\*bold\\*") && description.contains("\\[link\\]"));
}

#[test]
fn recovery_resolves_the_incident_its_alert_opened() {
    let all = fixtures();
    let key = |n: &str| {
        let (_, e) = all.iter().find(|(name, _)| name == n).unwrap();
        let body = serde_json::to_value(pagerduty::event(&Alert::new(e, DASHBOARD))).unwrap();
        (
            body["dedup_key"].as_str().unwrap().to_owned(),
            body["event_action"].as_str().unwrap().to_owned(),
        )
    };
    let (down, trigger) = key("monitor.down");
    assert_eq!(trigger, "trigger");
    assert_eq!(
        key("monitor.degraded").0,
        down,
        "down and degraded are one incident"
    );
    assert_eq!(key("monitor.recovered"), (down.clone(), "resolve".into()));
    assert_ne!(
        key("monitor.ssl_expiring").0,
        down,
        "SSL expiry is its own incident"
    );
    assert_eq!(key("server.recovered.offline").0, key("server.offline").0);
    assert_eq!(key("server.recovered.anomaly").0, key("server.anomaly").0);
    assert_ne!(key("server.anomaly").0, key("server.offline").0);
    assert_eq!(key("monitor.down"), key("monitor.down"), "stable");
}
