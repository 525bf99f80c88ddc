//! Slack, Discord and PagerDuty end to end (issue 3 §7): the service binary, a real broker,
//! and local fake provider endpoints; request bodies and counts asserted, each error class
//! exercised once.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::receiver::{Receiver, Recorded, Reply};
use crate::common::scenario::*;
use crate::common::tls;
use crate::common::{Service, Setup};

/// A setup whose Slack API and PagerDuty Events API are `provider`.
async fn setup_with(name: &str, provider: &Receiver) -> Setup {
    let mut setup = Setup::new(name, &["1s", "1s", "1s"]).await;
    setup.extra = format!(
        "[channels.slack]\napi_base_url = \"{base}/api\"\n\
         [channels.pagerduty]\nevents_url = \"{base}/v2/enqueue\"\n",
        base = provider.base
    );
    setup.write_config();
    setup
}

/// The dead letter of `channel`, once `n` dead letters exist.
async fn dead_letter_of(setup: &Setup, n: usize, channel: &str) -> Value {
    dead_letters(setup, n)
        .await
        .into_iter()
        .find(|l| l["delivery"]["channel_id"] == channel)
        .unwrap_or_else(|| panic!("no dead letter for {channel}"))
}

fn gap(requests: &[Recorded]) -> Duration {
    requests[1].at - requests[0].at
}

async fn settle(service: &Service) {
    // Nothing more is due: the last tier delay (1s) has passed twice over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(service.get("/healthz").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_gets_block_kit_and_each_error_class() {
    let slack = Receiver::start().await;
    let ok = Reply::json(200, json!({"ok": true, "ts": "1.1"}));
    slack.respond_when(
        "\"channel\":\"C_GONE\"",
        vec![],
        Reply::json(200, json!({"ok": false, "error": "channel_not_found"})),
    );
    slack.respond_when(
        "\"channel\":\"C_BUSY\"",
        vec![Reply::json(
            200,
            json!({"ok": false, "error": "ratelimited"}),
        )],
        ok.clone(),
    );
    slack.respond_when(
        "\"channel\":\"C_LIMIT\"",
        vec![Reply::status(429).header("retry-after", "3")],
        ok.clone(),
    );
    slack.respond_when("", vec![], ok);
    let setup = setup_with("slack", &slack).await;
    let channel = |id: &str, c: &str| json!({"id": id, "type": "slack", "bot_token": format!("xoxb-{id}-token"), "channel": c});
    let service = running(
        &setup,
        vec![
            channel("ok", "C_OK"),
            channel("gone", "C_GONE"),
            channel("busy", "C_BUSY"),
            channel("limit", "C_LIMIT"),
        ],
    )
    .await;
    setup.send_event(&seed_event("evt_slack", "acc")).await;
    let delivered = "sysmos_notify_deliveries_total{channel=\"slack\",outcome=\"delivered\"}";
    metric_reaches(&service, delivered, 3.0).await;
    let letter = dead_letter_of(&setup, 1, "gone").await;
    settle(&service).await;

    let sent = slack.requests_with("C_OK");
    assert_eq!(sent.len(), 1);
    let request = &sent[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/api/chat.postMessage")
    );
    assert_eq!(request.headers["authorization"], "Bearer xoxb-ok-token");
    assert!(request.headers["content-type"].starts_with("application/json"));
    let body = request.json();
    assert_eq!(body["channel"], "C_OK");
    assert_eq!(
        body["metadata"],
        json!({"event_type": "sysmos_alerts", "event_payload": {"event_ids": "evt_slack", "count": 1}}),
        "every Slack message says which alerts it covers (CONTRACT §5a)"
    );
    assert!(body["text"]
        .as_str()
        .unwrap()
        .contains("Production API is down"));
    let blocks = body["blocks"].as_array().unwrap();
    let types: Vec<&str> = blocks.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["header", "section", "section", "actions", "context"]
    );
    assert_eq!(
        blocks[3]["elements"][0]["url"],
        "https://app.example.test/monitors/mon_abc123"
    );
    let fields = blocks[2]["fields"].to_string();
    for fact in [
        "us-east-1",
        "5023 ms",
        "503",
        "https://api.example.com/health",
    ] {
        assert!(fields.contains(fact), "{fact} missing from {fields}");
    }

    assert_eq!(
        slack.requests_with("C_GONE").len(),
        1,
        "a permanent error is not retried"
    );
    let reason = letter["reason"].as_str().unwrap();
    assert!(reason.contains("channel_not_found"), "{reason}");
    assert!(!letter.to_string().contains("xoxb-"), "no token in the DLQ");

    let busy = slack.requests_with("C_BUSY");
    assert_eq!(busy.len(), 2, "ratelimited is retried once, then ok");
    let limited = slack.requests_with("C_LIMIT");
    assert_eq!(limited.len(), 2);
    assert!(
        gap(&limited) >= Duration::from_secs(3),
        "HTTP 429 waits for Retry-After (3s), not the 1s tier: {:?}",
        gap(&limited)
    );
    assert_eq!(
        service
            .metric("sysmos_notify_deliveries_total{channel=\"slack\",outcome=\"dead_lettered\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_gets_one_colored_embed_and_each_error_class() {
    let discord = Receiver::start().await;
    discord.respond_when(
        "/webhooks/2/gone",
        vec![],
        Reply::json(404, json!({"message": "Unknown Webhook", "code": 10015})),
    );
    discord.respond_when(
        "/webhooks/3/slow",
        vec![Reply::json(
            429,
            json!({"message": "You are being rate limited.", "retry_after": 2.5, "global": false}),
        )],
        Reply::json(200, json!({"id": "1"})),
    );
    discord.respond_when("", vec![], Reply::json(200, json!({"id": "1"})));
    let setup = setup_with("discord", &discord).await;
    let hook = |id: &str, path: &str| json!({"id": id, "type": "discord", "webhook_url": format!("{}/api/webhooks/{path}", discord.base)});
    // The error classes get one alert, in an account of their own: a recovery follows its
    // problem to every channel that had it.
    setup.create_service_topics().await;
    let errors = vec![hook("gone", "2/gone"), hook("slow", "3/slow")];
    setup
        .put_settings("errors", &settings("errors", 1, errors))
        .await;
    let service = running(&setup, vec![hook("ok", "1/ok")]).await;
    setup.send_event(&seed_event("evt_d0", "errors")).await;
    setup.send_event(&seed_event("evt_d1", "acc")).await;
    let mut recovered = seed_event("evt_d2", "acc");
    recovered["event"] = json!("monitor.recovered");
    recovered["alert"] = json!({"status": "up", "region": "us-east-1", "response_time_ms": 120,
        "status_code": 200, "down_since": "2025-01-15T10:30:00Z", "triggered_at": "2025-01-15T10:45:00Z"});
    setup.send_event(&recovered).await;
    let delivered = "sysmos_notify_deliveries_total{channel=\"discord\",outcome=\"delivered\"}";
    metric_reaches(&service, delivered, 3.0).await;
    let letter = dead_letter_of(&setup, 1, "gone").await;
    settle(&service).await;

    let ok = discord.requests_with("/webhooks/1/ok");
    assert_eq!(ok.len(), 2);
    assert!(ok.iter().all(|r| r.path == "/api/webhooks/1/ok?wait=true"));
    let bodies: Vec<Value> = ok.iter().map(Recorded::json).collect();
    let down = bodies
        .iter()
        .find(|b| b.to_string().contains("is down"))
        .unwrap();
    let up = bodies
        .iter()
        .find(|b| b.to_string().contains("recovered"))
        .unwrap();
    let embeds = down["embeds"].as_array().unwrap();
    assert_eq!(embeds.len(), 1, "one embed");
    let embed = &embeds[0];
    assert_eq!(embed["color"], 15548997, "critical is red");
    assert_eq!(up["embeds"][0]["color"], 5763719, "recovered is green");
    assert_eq!(embed["url"], "https://app.example.test/monitors/mon_abc123");
    assert_eq!(embed["timestamp"], "2025-01-15T10:30:00Z");
    assert!(embed["title"]
        .as_str()
        .unwrap()
        .contains("Production API is down"));
    assert!(embed["fields"].as_array().unwrap().len() >= 5);
    assert!(embed["footer"]["text"].is_string());
    assert_eq!(down["allowed_mentions"], json!({"parse": []}));
    assert!(up["embeds"][0]["description"]
        .as_str()
        .unwrap()
        .contains("after 15m 0s down"));

    assert_eq!(
        discord.requests_with("/webhooks/2/gone").len(),
        1,
        "404 is permanent"
    );
    let reason = letter["reason"].as_str().unwrap();
    assert!(
        reason.contains("404") && reason.contains("Unknown Webhook"),
        "{reason}"
    );
    assert!(
        !letter.to_string().contains("/webhooks/"),
        "no webhook URL (a token) in the DLQ"
    );

    let slow = discord.requests_with("/webhooks/3/slow");
    assert_eq!(slow.len(), 2);
    assert!(
        gap(&slow) >= Duration::from_millis(2500),
        "429 waits for the JSON retry_after (2.5s): {:?}",
        gap(&slow)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_triggers_then_resolves_one_incident_and_each_error_class() {
    let pd = Receiver::start().await;
    let accepted = Reply::json(
        202,
        json!({"status": "success", "message": "Event processed"}),
    );
    let bad_key = "bad00000000000000000000000000000";
    let flaky_key = "flaky000000000000000000000000000";
    pd.respond_when(
        bad_key,
        vec![],
        Reply::json(
            400,
            json!({"status": "invalid event", "message": "Event object is invalid",
            "errors": ["'payload.severity' is invalid"]}),
        ),
    );
    pd.respond_when(
        flaky_key,
        vec![Reply::status(500), Reply::status(429)],
        accepted.clone(),
    );
    pd.respond_when("", vec![], accepted);
    let setup = setup_with("pagerduty", &pd).await;
    let ok_key = "0123456789abcdef0123456789abcdef";
    let channel =
        |id: &str, key: &str| json!({"id": id, "type": "pagerduty", "integration_key": key});
    // The error classes get one alert, in an account of their own: a recovery follows its
    // problem to every channel that had it.
    setup.create_service_topics().await;
    let errors = vec![channel("bad", bad_key), channel("flaky", flaky_key)];
    setup
        .put_settings("errors", &settings("errors", 1, errors))
        .await;
    let service = running(&setup, vec![channel("pd", ok_key)]).await;
    setup.send_event(&seed_event("evt_p0", "errors")).await;
    setup.send_event(&seed_event("evt_p1", "acc")).await;
    let trigger = requests_with(&pd, ok_key, 1).await.remove(0);
    // The recovery is sent once the alert is in: ordering between the two is issue 5's.
    let mut recovered = seed_event("evt_p2", "acc");
    recovered["event"] = json!("monitor.recovered");
    recovered["alert"] =
        json!({"status": "up", "region": "us-east-1", "triggered_at": "2025-01-15T10:40:00Z"});
    setup.send_event(&recovered).await;
    let delivered = "sysmos_notify_deliveries_total{channel=\"pagerduty\",outcome=\"delivered\"}";
    metric_reaches(&service, delivered, 3.0).await;
    let letter = dead_letter_of(&setup, 1, "bad").await;
    settle(&service).await;

    assert_eq!(trigger.path, "/v2/enqueue");
    let t = trigger.json();
    assert_eq!(t["routing_key"], ok_key);
    assert_eq!(t["event_action"], "trigger");
    assert_eq!(t["payload"]["severity"], "critical");
    assert_eq!(t["payload"]["source"], "https://api.example.com/health");
    assert_eq!(t["payload"]["component"], "Production API");
    assert_eq!(t["payload"]["group"], "monitor");
    assert_eq!(t["payload"]["class"], "monitor.down");
    assert_eq!(t["payload"]["timestamp"], "2025-01-15T10:30:00Z");
    assert_eq!(t["payload"]["custom_details"]["status_code"], 503);
    assert!(t["payload"]["summary"]
        .as_str()
        .unwrap()
        .starts_with("[DOWN] Production API"));
    assert_eq!(
        t["links"][0]["href"],
        "https://app.example.test/monitors/mon_abc123"
    );
    let sent = pd.requests_with(ok_key);
    assert_eq!(sent.len(), 2);
    let resolve = sent[1].json();
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(
        resolve["dedup_key"], t["dedup_key"],
        "the recovery resolves the same incident"
    );
    assert!(t["dedup_key"].as_str().unwrap().len() <= 255);

    assert_eq!(pd.requests_with(bad_key).len(), 1, "400 is permanent");
    let reason = letter["reason"].as_str().unwrap();
    assert!(
        reason.contains("400") && reason.contains("payload.severity"),
        "{reason}"
    );
    assert!(
        !letter.to_string().contains(bad_key),
        "no integration key in the DLQ"
    );
    let flaky = pd.requests_with(flaky_key);
    assert_eq!(flaky.len(), 3, "500 and 429 are retried, then accepted");
    assert_eq!(flaky[0].json()["dedup_key"], flaky[2].json()["dedup_key"]);
}

/// HTTP/2 where the provider offers it (issue 6): over TLS the service and a provider agree on
/// h2 by ALPN, for the operator's providers and user-supplied webhooks alike, with a private
/// CA trusted through `delivery.ca_file`. A plain `http://` endpoint stays on HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_offering_http2_over_tls_get_it() {
    let secure = Receiver::start_tls().await;
    secure.respond_when(
        "/api/",
        vec![],
        Reply::json(200, json!({"ok": true, "ts": "1.1"})),
    );
    secure.respond_when(
        "/v2/",
        vec![],
        Reply::json(
            202,
            json!({"status": "success", "message": "Event processed"}),
        ),
    );
    let plain = Receiver::start().await;
    let mut setup = setup_with("http2", &secure).await;
    setup.delivery = format!("ca_file = {:?}", tls::ca_file());
    setup.write_config();
    let service = running(
        &setup,
        vec![
            hook("secure", &secure.url),
            hook("plain", &plain.url),
            json!({"id": "slack", "type": "slack", "bot_token": "xoxb-h2-token", "channel": "C_OK"}),
            json!({"id": "pd", "type": "pagerduty", "integration_key": "0123456789abcdef0123456789abcdef"}),
        ],
    )
    .await;
    setup.send_event(&seed_event("evt_h2", "acc")).await;
    let secure_requests = requests_with(&secure, "", 3).await;
    let plain_requests = requests_with(&plain, "", 1).await;
    let delivered = "sysmos_notify_deliveries_total{channel=\"webhook\",outcome=\"delivered\"}";
    metric_reaches(&service, delivered, 2.0).await;

    let mut paths: Vec<&str> = secure_requests.iter().map(|r| r.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/api/chat.postMessage", "/hook", "/v2/enqueue"]);
    for request in &secure_requests {
        assert_eq!(request.version, hyper::Version::HTTP_2, "{}", request.path);
    }
    assert_eq!(plain_requests[0].version, hyper::Version::HTTP_11);
    assert_eq!(
        secure.requests_with("/hook")[0].json(),
        plain_requests[0].json(),
        "the webhook body is the same over HTTP/2"
    );
}
