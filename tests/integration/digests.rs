//! Digest renderings (issue 17 §1–3, §6, CONTRACT §5a): the alerts that waited for one
//! channel, as one Slack message, one Discord message, one summary email. Snapshots of 2, 10
//! and 100 alerts (hostile names, mixed severities, recoveries), and each provider's limits
//! asserted on 2, 10, 100 and 101.

use chrono::{Duration, TimeZone, Utc};
use serde_json::{json, Value};
use sysmos_notify::model::Event;
use sysmos_notify::render::digest::Digest;
use sysmos_notify::render::{discord, email, slack, Alert};

use crate::common::limits::collect_mrkdwn;
use crate::render::{check, pretty};

const DASHBOARD: &str = "https://app.sysmos.io";
const HOSTILE: &str =
    "<!channel> *bold* [x](https://evil.test) & <script>alert(1)</script> @everyone";

/// `n` events for one account, a second apart: monitors down (critical), degraded
/// (warning), SSL expiring (info), servers offline; every 5th name hostile; every 7th a
/// recovery of the monitor that went down 2 alerts before.
fn events(n: usize) -> Vec<Event> {
    let start = Utc.with_ymd_and_hms(2025, 1, 15, 10, 30, 0).unwrap();
    (0..n)
        .map(|i| {
            let at = (start + Duration::seconds(i as i64)).to_rfc3339();
            let id = format!("evt_{i:03}");
            let name = if i % 5 == 4 {
                format!("{HOSTILE} {i}")
            } else {
                format!("API {i}")
            };
            let monitor = |kind: &str, mon: usize, alert: Value| {
                json!({"event": kind, "event_id": id, "account_id": "acc_42", "occurred_at": at,
                    "monitor": {"id": format!("mon_{mon}"), "name": name, "url": format!("https://api{mon}.example.com")},
                    "alert": alert})
            };
            let v = match i % 7 {
                6 => monitor(
                    "monitor.recovered",
                    i - 2,
                    json!({"status": "up", "down_since": start.to_rfc3339(), "triggered_at": at}),
                ),
                _ => match i % 4 {
                    0 => monitor("monitor.down", i, json!({"status": "down", "region": "us-east-1", "status_code": 503, "triggered_at": at})),
                    1 => monitor("monitor.degraded", i, json!({"status": "degraded", "response_time_ms": 2400, "threshold_ms": 1000, "triggered_at": at})),
                    2 => monitor("monitor.ssl_expiring", i, json!({"status": "ssl_expiring", "days_left": 12, "triggered_at": at})),
                    _ => json!({"event": "server.offline", "event_id": id, "account_id": "acc_42", "occurred_at": at,
                        "server": {"id": format!("srv_{i}"), "name": name, "hostname": format!("web-{i}.internal")},
                        "alert": {"status": "offline", "last_seen": at}}),
                },
            };
            Event::decode(Some(v.to_string().as_bytes())).expect("a valid event")
        })
        .collect()
}

fn alerts(events: &[Event]) -> Vec<Alert<'_>> {
    events.iter().map(|e| Alert::new(e, DASHBOARD)).collect()
}

/// How the alerts of one channel's storm are split into digests of at most `per`.
fn digests(events: &[Event], per: usize) -> Vec<Digest<'_>> {
    let all = alerts(events);
    all.chunks(per).map(|c| Digest::new(c.to_vec())).collect()
}

#[test]
fn digests_render_as_snapshotted() {
    let mut failures = Vec::new();
    for n in [2, 10, 100] {
        let events = events(n);
        let digest = Digest::new(alerts(&events));
        let body = serde_json::to_value(slack::digest(&digest, "C0123ABC")).unwrap();
        check(
            &format!("slack/digest.{n}.json"),
            &pretty(&body),
            &mut failures,
        );
        if n <= discord::DIGEST {
            check(
                &format!("discord/digest.{n}.json"),
                &pretty(&discord::digest(&digest)),
                &mut failures,
            );
            let mail = email::summary(&digest);
            let text = format!("Subject: {}\n\n{}", mail.subject, mail.text);
            check(&format!("email/digest.{n}.txt"), &text, &mut failures);
            check(&format!("email/digest.{n}.html"), &mail.html, &mut failures);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn slack_digests_keep_to_block_kit_and_cover_every_alert() {
    for n in [2, 10, 100, 101] {
        let events = events(n);
        let parts = digests(&events, slack::DIGEST);
        assert_eq!(
            parts.len(),
            n.div_ceil(100),
            "{n} alerts: messages of up to 100"
        );
        let mut covered = Vec::new();
        for digest in &parts {
            let body = serde_json::to_value(slack::digest(digest, "C1")).unwrap();
            let blocks = body["blocks"].as_array().unwrap();
            assert!(blocks.len() <= 50, "{n}: {} blocks", blocks.len());
            assert!(
                body["blocks"][0]["text"]["text"]
                    .as_str()
                    .unwrap()
                    .chars()
                    .count()
                    <= 150
            );
            for block in &blocks[1..blocks.len() - 1] {
                let text = block["text"]["text"].as_str().unwrap();
                assert!(
                    text.chars().count() <= 3000,
                    "{n}: a section of {}",
                    text.chars().count()
                );
            }
            assert!(body["text"].as_str().unwrap().chars().count() <= 3000);
            let lines: usize = blocks[1..blocks.len() - 1]
                .iter()
                .map(|b| b["text"]["text"].as_str().unwrap().lines().count())
                .sum();
            assert_eq!(
                lines,
                digest.lines.len(),
                "{n}: one line per alert, none left out"
            );
            let payload = &body["metadata"]["event_payload"];
            assert_eq!(body["metadata"]["event_type"], "sysmos_alerts");
            assert_eq!(payload["count"], digest.count());
            covered.extend(
                payload["event_ids"]
                    .as_str()
                    .unwrap()
                    .split(',')
                    .map(str::to_owned),
            );
            // Hostile names are inert: no raw `<` outside the links Sysmos makes.
            let mut mrkdwn = Vec::new();
            collect_mrkdwn(&body["blocks"], &mut mrkdwn);
            for text in mrkdwn {
                assert!(
                    !text.contains("<!channel>") && !text.contains("<script"),
                    "raw markup in {text}"
                );
            }
        }
        let expected: Vec<String> = (0..n).map(|i| format!("evt_{i:03}")).collect();
        assert_eq!(
            covered, expected,
            "{n}: every alert in exactly one message, oldest first"
        );
    }
}

#[test]
fn a_recovered_problem_is_one_line_with_both_times() {
    let events = events(10);
    let digest = Digest::new(alerts(&events));
    // evt_006 recovers mon_4, which evt_004 reported down.
    assert_eq!(
        (digest.count(), digest.problems, digest.recoveries),
        (10, 9, 1)
    );
    assert_eq!(
        digest.lines.len(),
        9,
        "the recovery joins its problem's line"
    );
    let line = &digest.lines[4];
    assert_eq!(line.status(), "DOWN → RECOVERED");
    assert_eq!(
        line.when(),
        "2025-01-15 10:30:04 UTC → 2025-01-15 10:30:06 UTC"
    );
    let body = serde_json::to_value(slack::digest(&digest, "C1")).unwrap();
    let text = body["blocks"][1]["text"]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        text.contains("DOWN → RECOVERED · 2025-01-15 10:30:04 UTC → 2025-01-15 10:30:06 UTC"),
        "{text}"
    );
}

#[test]
fn discord_digests_keep_to_ten_embeds_and_6000_characters() {
    for n in [2, 10, 100, 101] {
        let events = events(n);
        let parts = digests(&events, discord::DIGEST);
        assert_eq!(parts.len(), n.div_ceil(10));
        for digest in &parts {
            let body = discord::digest(digest);
            let embeds = body["embeds"].as_array().unwrap();
            assert_eq!(embeds.len(), digest.lines.len());
            assert!(embeds.len() <= 10);
            let size = discord::embed_size(&body);
            assert!(size <= 6000, "{n}: {size} characters over the embeds");
            for (embed, line) in embeds.iter().zip(&digest.lines) {
                let expected = if line.over() {
                    discord::GREEN
                } else {
                    discord::color(&line.alert)
                };
                assert_eq!(embed["color"], expected);
                assert!(embed["title"].as_str().unwrap().chars().count() <= 256);
            }
            assert_eq!(body["allowed_mentions"], json!({"parse": []}));
        }
    }
}

#[test]
fn summary_emails_name_every_resource_within_500_rows() {
    for n in [2, 10, 100, 101] {
        let events = events(n);
        let parts = digests(&events, email::DIGEST);
        assert_eq!(parts.len(), 1, "{n} alerts: one summary email");
        let mail = email::summary(&parts[0]);
        for line in &parts[0].lines {
            assert!(
                mail.text.contains(&line.alert.link),
                "{n}: the text names {}",
                line.alert.link
            );
        }
        assert_eq!(
            mail.html.matches(">Open</a>").count(),
            parts[0].lines.len(),
            "a row per line"
        );
        for needle in ["<script", "<!channel>"] {
            assert!(!mail.html.contains(needle), "HTML keeps {needle}");
        }
        assert!(mail.subject.starts_with(&format!("[Sysmos] {n} alerts")));
        assert!(!mail.subject.contains('\n'));
    }
}

/// The event ids the accepted Slack messages covered, from their `metadata`.
pub(crate) fn covered_by(requests: &[crate::common::receiver::Recorded]) -> Vec<String> {
    requests
        .iter()
        .flat_map(|r| {
            let body = r.json();
            let ids = body["metadata"]["event_payload"]["event_ids"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            ids.split(',').map(str::to_owned).collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_to_one_slack_channel_arrives_as_a_few_digests() {
    use std::time::Instant;

    use crate::common::scenario::*;
    use crate::common::{read_all, until};
    use crate::pacing::{slack_storm, SlackStorm};

    let storm = slack_storm("digests").await;
    const STORM: usize = 150;
    let started = Instant::now();
    let calm_took = storm.storm_then_calm(STORM).await;
    let SlackStorm {
        slack,
        limit,
        setup,
        service,
        ..
    } = storm;
    let delivered = "sysmos_notify_deliveries_total{channel=\"slack\",outcome=\"delivered\"}";
    let all_in = until(
        WAIT,
        "every alert inside an accepted Slack message",
        || async { (service.metric(delivered).await >= STORM as f64).then(|| started.elapsed()) },
    )
    .await;
    let requests = slack.requests();
    let limited = limit.limited();
    let messages = requests.len() - limited;
    let digests = service
        .metric("sysmos_notify_digests_total{channel=\"slack\"}")
        .await;
    println!(
        "{STORM} alerts to one Slack channel: all inside {messages} messages ({digests} digests) after {all_in:?}, {limited} answers of 429; the calm account's alert took {calm_took:?}"
    );
    // A message answered 429 is sent again: the distinct ids are every alert, once each.
    let mut covered = covered_by(&requests);
    covered.sort();
    covered.dedup();
    let expected: Vec<String> = (0..STORM).map(|i| format!("evt_s{i:03}")).collect();
    assert_eq!(
        covered, expected,
        "every alert inside a message, oldest first"
    );
    assert!(messages <= 10, "{messages} messages for {STORM} alerts");
    assert!(limited <= 5, "{limited} answers of 429");
    assert!(digests >= 1.0);
    assert_eq!(
        service.metric(delivered).await,
        STORM as f64,
        "each alert one delivery"
    );
    assert!(
        calm_took < std::time::Duration::from_secs(5),
        "another account waits for nobody's digest: {calm_took:?}"
    );
    assert!(
        read_all(&setup.topic("dlq")).is_empty(),
        "nothing dead-lettered"
    );
    let digest = requests
        .iter()
        .find(|r| r.json()["metadata"]["event_payload"]["count"].as_u64() > Some(1))
        .expect("a digest");
    let body = digest.json();
    assert!(body["blocks"][0]["text"]["text"]
        .as_str()
        .unwrap()
        .contains("alerts"));
    assert!(body["blocks"].as_array().unwrap().len() <= 50);

    // The ledger knows every alert a digest covered as delivered: read again (here, the same
    // events sent again), none is sent a second time.
    let sent_before = slack.count();
    for i in (100..STORM).step_by(10) {
        setup
            .send_event(&seed_event(&format!("evt_s{i:03}"), "acc"))
            .await;
    }
    let repeats = "sysmos_notify_deliveries_total{channel=\"slack\",outcome=\"duplicate\"}";
    metric_reaches(&service, repeats, 5.0).await;
    assert_eq!(
        slack.count(),
        sent_before,
        "a covered alert read again is a repeat"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_to_one_discord_webhook_and_one_recipient_arrives_as_digests() {
    use std::time::Instant;
    use testkit::limits::{Enforced, Limit};

    use crate::common::receiver::Receiver;
    use crate::common::scenario::*;
    use crate::common::smtp::SmtpServer;
    use crate::common::{read_all, until, Setup};

    let discord = Receiver::start().await;
    let limit = Enforced::new(Limit::discord());
    discord.respond_by(limit.responder());
    let smtp = SmtpServer::start().await;
    let mut setup = Setup::new("digests-dm", &["1s", "1s", "1s"]).await;
    setup.extra = format!(
        "[channels.email]\nsmtp_url = \"{}\"\nfrom = \"Sysmos <alerts@sysmos.test>\"\nrate = \"1/1m\"\nburst = 5\n",
        smtp.url()
    );
    setup.write_config();
    let channels = vec![
        json!({"id": "dc", "type": "discord", "webhook_url": format!("{}/api/webhooks/1/tok", discord.base)}),
        json!({"id": "mail", "type": "email", "recipients": [{"address": "ops@x.test", "verified": true}]}),
    ];
    let service = running(&setup, channels).await;

    const STORM: usize = 60;
    let started = Instant::now();
    for i in 0..STORM {
        setup
            .send_event(&seed_event(&format!("evt_d{i:03}"), "acc"))
            .await;
    }
    let series = |channel: &str| {
        format!("sysmos_notify_deliveries_total{{channel=\"{channel}\",outcome=\"delivered\"}}")
    };
    let (discord_series, email_series) = (series("discord"), series("email"));
    let discord_in = until(WAIT, "every alert inside a Discord message", || async {
        (service.metric(&discord_series).await >= STORM as f64).then(|| started.elapsed())
    })
    .await;
    let email_in = until(
        std::time::Duration::from_secs(120),
        "every alert inside an email",
        || async {
            (service.metric(&email_series).await >= STORM as f64).then(|| started.elapsed())
        },
    )
    .await;
    let messages = discord.count() - limit.limited();
    let mails = smtp.mails_to("ops@x.test");
    println!(
        "{STORM} alerts: Discord all inside {messages} messages after {discord_in:?} ({} answers of 429); email all inside {} mails after {email_in:?}",
        limit.limited(),
        mails.len()
    );
    let embeds: usize = discord
        .requests()
        .iter()
        .map(|r| r.json()["embeds"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(embeds >= STORM, "every alert an embed: {embeds}");
    // 5 at once (the burst), then digests of 10: 11 at best; a busy machine spreads the
    // alerts' arrival, and an alert that finds the bucket free goes alone.
    assert!(
        messages <= STORM / 3,
        "{messages} Discord messages for {STORM} alerts"
    );
    assert!(limit.limited() <= 5, "{} answers of 429", limit.limited());
    assert!(
        mails.len() <= 6,
        "{} emails: 5 at once, then one summary",
        mails.len()
    );
    let texts: Vec<String> = mails
        .iter()
        .map(|m| m.parsed().body_text(0).unwrap_or_default().into_owned())
        .collect();
    let summary = texts
        .iter()
        .find(|t| t.contains("Summary of affected resources"))
        .expect("a summary email");
    let rows = summary.matches("/monitors/").count();
    assert!(
        rows >= STORM - 5,
        "the summary has a row per alert it covers: {rows}"
    );
    assert!(
        read_all(&setup.topic("dlq")).is_empty(),
        "nothing dead-lettered"
    );
}

/// A Slack fake answering by `answer`: given the digest's number (`None` for a message
/// covering one alert) and the body.
fn slack_answering(
    slack: &crate::common::receiver::Receiver,
    answer: impl Fn(Option<usize>, &Value) -> crate::common::receiver::Reply + Send + Sync + 'static,
) {
    let seen = std::sync::atomic::AtomicUsize::new(0);
    slack.respond_by(std::sync::Arc::new(move |request| {
        let body = request.json();
        let count = body["metadata"]["event_payload"]["count"]
            .as_u64()
            .unwrap_or(1);
        let digest = (count > 1).then(|| seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
        answer(digest, &body)
    }));
}

/// A Slack setup paced at 1 per 2 s (burst 1), so alerts sent together form a digest.
async fn slow_slack(name: &str, slack: &crate::common::receiver::Receiver) -> crate::common::Setup {
    let mut setup = crate::common::Setup::new(name, &["1s", "1s", "1s"]).await;
    setup.extra = format!(
        "[channels.slack]\napi_base_url = \"{}/api\"\nrate = \"1/2s\"\nburst = 1\n",
        slack.base
    );
    setup.write_config();
    setup
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_that_fails_is_retried_as_one_and_a_refused_one_dead_letters_each() {
    use crate::common::receiver::{Receiver, Reply};
    use crate::common::scenario::*;

    let slack = Receiver::start().await;
    // The first digest to C_FLAKY gets a 503; everything to C_GONE is refused for good.
    slack_answering(&slack, |digest, body| {
        match (body["channel"].as_str(), digest) {
            (Some("C_GONE"), _) => {
                Reply::json(200, json!({"ok": false, "error": "channel_not_found"}))
            }
            (_, Some(0)) => Reply::status(503),
            _ => Reply::json(200, json!({"ok": true, "ts": "1.2"})),
        }
    });
    let setup = slow_slack("digest-fail", &slack).await;
    let flaky =
        json!({"id": "flaky", "type": "slack", "bot_token": "xoxb-1", "channel": "C_FLAKY"});
    let service = running(&setup, vec![flaky]).await;
    const N: usize = 6;
    for i in 0..N {
        setup
            .send_event(&seed_event(&format!("evt_f{i}"), "acc"))
            .await;
    }
    let delivered = "sysmos_notify_deliveries_total{channel=\"slack\",outcome=\"delivered\"}";
    metric_reaches(&service, delivered, N as f64).await;
    let digests: Vec<Vec<String>> = slack
        .requests()
        .iter()
        .filter(|r| r.json()["metadata"]["event_payload"]["count"].as_u64() > Some(1))
        .map(|r| covered_by(std::slice::from_ref(r)))
        .collect();
    assert!(
        digests.len() >= 2,
        "the failed digest and its retry: {digests:?}"
    );
    let sorted = |ids: &[String]| {
        let mut ids = ids.to_vec();
        ids.sort();
        ids
    };
    assert_eq!(
        sorted(&digests[0]),
        sorted(&digests[1]),
        "retried as one: the same alerts"
    );
    let retried = "sysmos_notify_deliveries_total{channel=\"slack\",outcome=\"retried\"}";
    assert_eq!(
        service.metric(retried).await,
        digests[0].len() as f64,
        "each covered alert's retry counts"
    );
    assert_eq!(
        service
            .metric("sysmos_notify_digests_total{channel=\"slack\"}")
            .await,
        1.0,
        "one digest accepted"
    );
    assert!(crate::common::read_all(&setup.topic("dlq")).is_empty());

    // A permanent failure dead-letters every alert the digest covered, with the reason.
    let gone = json!({"id": "gone", "type": "slack", "bot_token": "xoxb-1", "channel": "C_GONE"});
    setup
        .put_settings("acc2", &settings("acc2", 1, vec![gone]))
        .await;
    metric_reaches(&service, "sysmos_notify_config_accounts", 2.0).await;
    for i in 0..N {
        setup
            .send_event(&seed_event(&format!("evt_g{i}"), "acc2"))
            .await;
    }
    let letters = dead_letters(&setup, N).await;
    for letter in &letters {
        let reason = letter["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("channel_not_found"), "the reason: {reason}");
    }
    let refused: Vec<String> = slack
        .requests()
        .iter()
        .filter(|r| r.json()["channel"] == "C_GONE")
        .filter(|r| r.json()["metadata"]["event_payload"]["count"].as_u64() > Some(1))
        .flat_map(|r| covered_by(std::slice::from_ref(r)))
        .collect();
    let lettered: Vec<String> = letters
        .iter()
        .map(|l| {
            l["delivery"]["event_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(!refused.is_empty(), "a digest was refused");
    for id in &refused {
        let times = lettered.iter().filter(|l| *l == id).count();
        assert_eq!(
            times, 1,
            "{id}, covered by the refused digest, dead-lettered once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_cut_short_by_a_kill_is_sent_again_at_most_once() {
    use crate::common::receiver::{Receiver, Reply};
    use crate::common::scenario::*;

    let slack = Receiver::start().await;
    // Digests are answered slowly, so the kill lands while one is in flight.
    slack_answering(&slack, |digest, _| {
        let ok = Reply::json(200, json!({"ok": true, "ts": "1.3"}));
        match digest {
            Some(_) => ok.after(std::time::Duration::from_secs(3)),
            None => ok,
        }
    });
    let setup = slow_slack("digest-kill", &slack).await;
    let ops = json!({"id": "ops", "type": "slack", "bot_token": "xoxb-1", "channel": "C1"});
    let mut service = running(&setup, vec![ops]).await;
    const N: usize = 8;
    for i in 0..N {
        setup
            .send_event(&seed_event(&format!("evt_k{i}"), "acc"))
            .await;
    }
    let is_digest = |r: &crate::common::receiver::Recorded| {
        r.json()["metadata"]["event_payload"]["count"].as_u64() > Some(1)
    };
    crate::common::until(WAIT, "a digest in flight", || async {
        slack.requests().iter().any(is_digest).then_some(())
    })
    .await;
    service.kill();
    let mut service = setup.start();
    service.wait_ready().await;
    // After the restart the digest's alerts (and only those not yet recorded) are sent again.
    crate::common::until(WAIT, "every alert inside a message", || async {
        let mut covered = covered_by(&slack.requests());
        covered.sort();
        covered.dedup();
        (covered.len() == N).then_some(())
    })
    .await;
    let digests = slack.requests().iter().filter(|r| is_digest(r)).count();
    assert!(
        digests <= 2,
        "the digest in flight at the kill, and once again: {digests}"
    );
    let covered = covered_by(&slack.requests());
    for i in 0..N {
        let id = format!("evt_k{i}");
        let times = covered.iter().filter(|c| **c == id).count();
        assert!(
            times <= 2,
            "{id} sent {times} times: at most the one in flight again"
        );
    }
    service.signal(libc::SIGTERM);
}
