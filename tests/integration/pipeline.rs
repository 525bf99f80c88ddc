//! End-to-end behaviour of the durable pipeline (issue 2 §9): the service binary against
//! a real broker and recording HTTP receivers.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use hmac::Mac;
use rdkafka::Message;
use serde_json::{json, Value};

use crate::common::receiver::Receiver;
use crate::common::scenario::*;
use crate::common::{committed, header, read_all, until, Service, Setup};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The Standard Webhooks check as a receiver would write it, independent of the service's code.
fn verify_signature(secret: &str, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    header
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_the_seed_webhook_signed_with_custom_headers() {
    let setup = Setup::new("seed", &["1s", "1s", "1s"]).await;
    let receiver = Receiver::start().await;
    let channel = json!({"id":"hook","type":"webhook","url":receiver.url,
        "headers":{"Authorization":"Bearer s3cr3t","X-Team":"ops"},"secret":SECRET});
    let service = running(&setup, vec![channel]).await;
    setup.send_event(&seed_event("evt_01HZX3", "acc")).await;
    let request = requests_reach(&receiver, 1).await.remove(0);
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hook");
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(request.headers["authorization"], "Bearer s3cr3t");
    assert_eq!(request.headers["x-team"], "ops");
    assert_eq!(String::from_utf8(request.body.clone()).unwrap(), SEED_BODY);
    let id = &request.headers["webhook-id"];
    let timestamp = &request.headers["webhook-timestamp"];
    let age = chrono::Utc::now().timestamp() - timestamp.parse::<i64>().unwrap();
    assert!(
        (0..60).contains(&age),
        "webhook-timestamp is unix seconds of now, got {timestamp}"
    );
    assert!(verify_signature(
        SECRET,
        id,
        timestamp,
        &request.body,
        &request.headers["webhook-signature"]
    ));
    assert!(
        !verify_signature(
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            id,
            timestamp,
            &request.body,
            &request.headers["webhook-signature"]
        ),
        "the check can fail"
    );
    metric_reaches(
        &service,
        "sysmos_notify_deliveries_total{channel=\"webhook\",outcome=\"delivered\"}",
        1.0,
    )
    .await;
    metric_reaches(
        &service,
        "sysmos_notify_events_total{outcome=\"routed\"}",
        1.0,
    )
    .await;
    // Lag per assigned partition, from librdkafka statistics: the events topic and the delivery topics.
    let (svc, setup_ref) = (&service, &setup);
    let lag_series = until(WAIT, "consumer lag gauges", move || async move {
        let setup = setup_ref;
        let (_, text) = svc.get("/metrics").await?;
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("sysmos_notify_consumer_lag{"))
            .map(str::to_owned)
            .collect();
        let has = |t: &str| lines.iter().any(|l| l.contains(&format!("topic=\"{t}\"")));
        (has(&setup.events_topic)
            && has(&setup.topic("deliveries"))
            && has(&setup.topic("retry.1")))
        .then_some(lines)
    })
    .await;
    assert!(
        lag_series.iter().all(|l| l.contains("partition=\"")),
        "{lag_series:?}"
    );
    let deliveries = read_all(&setup.topic("deliveries"));
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].key(), Some(&b"acc:hook"[..]));
    let record: Value = serde_json::from_slice(deliveries[0].payload().unwrap()).unwrap();
    assert_eq!(&record["delivery_id"], id);
    assert!(
        !String::from_utf8_lossy(deliveries[0].payload().unwrap()).contains("s3cr3t"),
        "no secret in Kafka"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_each_tier_delay_with_one_webhook_id() {
    let setup = Setup::new("retry", &["1s", "2s", "3s"]).await;
    let receiver = Receiver::start().await;
    receiver.respond(&[503, 503], 200);
    let service = running(&setup, vec![hook("hook", &receiver.url)]).await;
    setup.send_event(&seed_event("evt_r", "acc")).await;
    metric_reaches(
        &service,
        "sysmos_notify_deliveries_total{channel=\"webhook\",outcome=\"delivered\"}",
        1.0,
    )
    .await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3, "503, 503, then 200");
    assert!(
        requests[1].at - requests[0].at >= Duration::from_secs(1),
        "tier 1 waits 1s"
    );
    assert!(
        requests[2].at - requests[1].at >= Duration::from_secs(2),
        "tier 2 waits 2s"
    );
    let ids: BTreeSet<_> = requests
        .iter()
        .map(|r| r.headers["webhook-id"].clone())
        .collect();
    assert_eq!(ids.len(), 1, "one webhook-id across retries");
    assert_eq!(
        service
            .metric("sysmos_notify_deliveries_total{channel=\"webhook\",outcome=\"retried\"}")
            .await,
        2.0
    );
    assert!(read_all(&setup.topic("dlq")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_gets_four_requests_then_one_dead_letter() {
    let setup = Setup::new("dead", &["300ms", "300ms", "300ms"]).await;
    let receiver = Receiver::start().await;
    receiver.respond(&[], 500);
    let service = running(&setup, vec![hook("hook", &receiver.url)]).await;
    setup.send_event(&seed_event("evt_d", "acc")).await;
    let letters = dead_letters(&setup, 1).await;
    metric_reaches(
        &service,
        "sysmos_notify_deliveries_total{channel=\"webhook\",outcome=\"dead_lettered\"}",
        1.0,
    )
    .await;
    assert_eq!(receiver.count(), 4, "first attempt + 3 retries");
    assert_eq!(letters.len(), 1);
    let attempts = letters[0]["delivery"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4);
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a["attempt"], json!(i + 1));
        assert_eq!(a["status"], json!(500));
        assert_eq!(a["outcome"], json!("retryable"));
        assert!(a["at"].is_string() && a["error"].as_str().unwrap().contains("500"));
    }
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .contains("4 attempts"),
        "{}",
        letters[0]["reason"]
    );
    assert_eq!(letters[0]["delivery"]["event"]["event_id"], json!("evt_d"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_error_is_dead_lettered_at_once() {
    let setup = Setup::new("perm", &["300ms", "300ms", "300ms"]).await;
    let receiver = Receiver::start().await;
    receiver.respond(&[], 400);
    let _service = running(&setup, vec![hook("hook", &receiver.url)]).await;
    setup.send_event(&seed_event("evt_p", "acc")).await;
    let letters = dead_letters(&setup, 1).await;
    assert_eq!(receiver.count(), 1);
    let attempts = letters[0]["delivery"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["status"], json!(400));
    assert_eq!(attempts[0]["outcome"], json!("permanent"));
    assert!(letters[0]["reason"].as_str().unwrap().contains("HTTP 400"));
    assert!(
        read_all(&setup.topic("retry.1")).is_empty(),
        "never retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_are_rejected_and_the_next_one_delivered() {
    let setup = Setup::new("reject", &["1s"]).await;
    let receiver = Receiver::start().await;
    let service = running(&setup, vec![hook("hook", &receiver.url)]).await;
    let mut missing = seed_event("evt_m", "acc");
    missing.as_object_mut().unwrap().remove("event_id");
    let bad: Vec<Option<Vec<u8>>> = vec![
        Some(b"this is not json".to_vec()),
        Some(vec![0xff, 0x00, 0x9c, 0x01]),
        Some(Vec::new()),
        None,
        Some(missing.to_string().into_bytes()),
    ];
    for payload in &bad {
        setup.send_raw(payload.as_deref()).await;
    }
    setup.send_event(&seed_event("evt_ok", "acc")).await;
    let request = requests_reach(&receiver, 1).await.remove(0);
    assert_eq!(request.json()["event"], "monitor.down");
    let rejected = records(&setup.topic("rejected"), 5).await;
    assert_eq!(rejected.len(), 5);
    let mut reasons = Vec::new();
    for m in &rejected {
        let original = bad
            .iter()
            .find(|b| b.as_deref().unwrap_or_default() == m.payload().unwrap_or_default());
        assert!(original.is_some(), "raw bytes kept");
        assert_eq!(
            header(m, "source-topic").as_deref(),
            Some(setup.events_topic.as_str())
        );
        reasons.push(header(m, "reason").unwrap());
    }
    assert!(
        reasons.iter().any(|r| r.contains("not valid JSON")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("empty")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("`event_id`")),
        "{reasons:?}"
    );
    metric_reaches(
        &service,
        "sysmos_notify_events_total{outcome=\"rejected\"}",
        5.0,
    )
    .await;
    assert_eq!(receiver.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_account_filters_and_settings_versions() {
    let setup = Setup::new("route", &["1s"]).await;
    let (all, servers, critical, off, stale) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let channels = vec![
        hook("all", &all.url),
        json!({"id":"servers","type":"webhook","url":servers.url,"events":["server.*"]}),
        json!({"id":"critical","type":"webhook","url":critical.url,"min_severity":"critical"}),
        json!({"id":"off","type":"webhook","url":off.url,"enabled":false}),
    ];
    setup.create_service_topics().await;
    setup
        .put_settings("acc", &settings("acc", 5, channels))
        .await;
    // An older version arriving later is ignored.
    setup
        .put_settings("acc", &settings("acc", 3, vec![hook("all", &stale.url)]))
        .await;
    let mut service = setup.start();
    service.wait_ready().await;
    assert_eq!(
        service
            .metric("sysmos_notify_config_records_total{outcome=\"stale\"}")
            .await,
        1.0
    );
    assert_eq!(service.metric("sysmos_notify_config_accounts").await, 1.0);

    setup
        .send_event(&event("monitor.degraded", "e1", "acc"))
        .await; // warning
    setup
        .send_event(&event("server.offline", "e2", "acc"))
        .await; // critical
    setup
        .send_event(&event("monitor.down", "e3", "nobody"))
        .await; // unknown account
    metric_reaches(
        &service,
        "sysmos_notify_events_total{outcome=\"no_route\"}",
        1.0,
    )
    .await;
    metric_reaches(
        &service,
        "sysmos_notify_deliveries_total{channel=\"webhook\",outcome=\"delivered\"}",
        4.0,
    )
    .await;
    let kinds = |r: &Receiver| {
        r.requests()
            .iter()
            .map(|q| q.json()["event"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let mut got = kinds(&all);
    got.sort();
    assert_eq!(got, ["monitor.degraded", "server.offline"]);
    assert_eq!(kinds(&servers), ["server.offline"]);
    assert_eq!(kinds(&critical), ["server.offline"]);
    assert_eq!(off.count() + stale.count(), 0);

    // A tombstone removes the account: its events are no longer routed.
    setup.tombstone("acc").await;
    metric_reaches(
        &service,
        "sysmos_notify_config_records_total{outcome=\"removed\"}",
        1.0,
    )
    .await;
    assert_eq!(service.metric("sysmos_notify_config_accounts").await, 0.0);
    setup.send_event(&event("monitor.down", "e4", "acc")).await;
    metric_reaches(
        &service,
        "sysmos_notify_events_total{outcome=\"no_route\"}",
        2.0,
    )
    .await;
    assert_eq!(all.count(), 2);
    let _ = &mut service;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrected_url_reaches_a_pending_retry_and_removed_channel_drops_it() {
    let setup = Setup::new("fix", &["2s", "2s"]).await;
    let (broken, fixed) = (Receiver::start().await, Receiver::start().await);
    broken.respond(&[], 500);
    let service = running(
        &setup,
        vec![hook("hook", &broken.url), hook("gone", &broken.url)],
    )
    .await;
    setup.send_event(&seed_event("evt_fix", "acc")).await;
    requests_reach(&broken, 2).await;
    setup
        .put_settings("acc", &settings("acc", 2, vec![hook("hook", &fixed.url)]))
        .await;
    let request = requests_reach(&fixed, 1).await.remove(0);
    let first = broken
        .requests()
        .into_iter()
        .find(|r| r.headers["webhook-id"] == request.headers["webhook-id"]);
    assert!(
        first.is_some(),
        "the retry of the same delivery went to the corrected URL"
    );
    metric_reaches(
        &service,
        "sysmos_notify_deliveries_total{channel=\"webhook\",outcome=\"dropped\"}",
        1.0,
    )
    .await;
    assert_eq!(broken.count(), 2, "the removed channel was not retried");
    assert!(read_all(&setup.topic("dlq")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waiting_when_killed_is_made_on_time_after_restart() {
    let setup = Setup::new("kill", &["4s"]).await;
    let receiver = Receiver::start().await;
    receiver.respond(&[503], 200);
    let mut service = running(&setup, vec![hook("hook", &receiver.url)]).await;
    setup.send_event(&seed_event("evt_k", "acc")).await;
    requests_reach(&receiver, 1).await;
    // Wait until the first attempt's offset is committed, so the only pending work is the retry.
    let (group, topic) = (
        format!("{}-group.deliveries", setup.name),
        setup.topic("deliveries"),
    );
    until(WAIT, "the first attempt committed", || {
        let (group, topic) = (group.clone(), topic.clone());
        async move { (committed(&group, &topic) >= 1).then_some(()) }
    })
    .await;
    service.kill(); // SIGKILL
    let mut restarted = setup.start();
    restarted.wait_ready().await;
    let requests = requests_reach(&receiver, 2).await;
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_secs(4),
        "not before its due time: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(30),
        "made on time after the restart: {waited:?}"
    );
    assert_eq!(
        requests[0].headers["webhook-id"],
        requests[1].headers["webhook-id"]
    );
    metric_reaches(
        &restarted,
        "sysmos_notify_deliveries_total{channel=\"webhook\",outcome=\"delivered\"}",
        1.0,
    )
    .await;
    assert_eq!(receiver.count(), 2, "nothing repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero_losing_nothing() {
    let setup = Setup::new("term", &["1s"]).await;
    let receiver = Receiver::start().await;
    receiver.delay(Duration::from_millis(1500)); // deliveries are in flight when SIGTERM arrives
    let mut service = running(&setup, vec![hook("hook", &receiver.url)]).await;
    let total = 30;
    for i in 0..total {
        setup
            .send_event(&seed_event(&format!("evt_t{i}"), "acc"))
            .await;
    }
    // Every delivery has reached the receiver, which holds each answer 1.5 s: all are in flight.
    requests_reach(&receiver, total).await;
    service.signal(libc::SIGTERM);
    assert_eq!(
        service.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "log:\n{}",
        service.logs()
    );
    // Everything that was in flight was finished and committed before the exit.
    let group = format!("{}-group", setup.name);
    assert_eq!(
        committed(&group, &setup.events_topic),
        total as i64,
        "events committed; log:\n{}",
        service.logs()
    );
    assert_eq!(
        committed(&format!("{group}.deliveries"), &setup.topic("deliveries")),
        total as i64
    );
    let mut restarted = setup.start();
    restarted.wait_ready().await;
    let ids = until(WAIT, "every event delivered", || async {
        let ids: BTreeSet<String> = receiver
            .requests()
            .iter()
            .map(|r| r.headers["webhook-id"].clone())
            .collect();
        (ids.len() >= total).then_some(ids)
    })
    .await;
    assert_eq!(ids.len(), total);
    assert_eq!(
        receiver.count(),
        total,
        "in-flight work was finished and committed, not repeated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_but_not_ready_without_a_broker() {
    let port = crate::common::free_port();
    let dead_broker = crate::common::free_port();
    let config = crate::common::write_file(&format!(
        "[kafka]\nbrokers = \"127.0.0.1:{dead_broker}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n"
    ));
    let mut service = Service::start(config.path().to_path_buf(), port);
    let svc = &service;
    until(WAIT, "/healthz", move || async move {
        svc.get("/healthz").await.filter(|(s, _)| *s == 200)
    })
    .await;
    let (status, body) = service.get("/readyz").await.unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("settings cache"), "{body}");
    service.signal(libc::SIGTERM);
    assert_eq!(
        service.wait_exit(Duration::from_secs(20)).await,
        Some(0),
        "log:\n{}",
        service.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_urls_cannot_reach_private_addresses_or_plain_http() {
    let mut setup = Setup::new("ssrf", &["1s"]).await;
    setup.private_targets = false;
    setup.write_config();
    let receiver = Receiver::start().await;
    let port = receiver.base.rsplit(':').next().unwrap().to_owned();
    let targets = [
        (
            "literal",
            format!("https://127.0.0.1:{port}/hook"),
            "non-public address 127.0.0.1",
        ),
        (
            "metadata",
            "https://169.254.169.254/latest/meta-data".to_owned(),
            "non-public address 169.254.169.254",
        ),
        (
            "mapped",
            format!("https://[::ffff:127.0.0.1]:{port}/hook"),
            "non-public address ::ffff:127.0.0.1",
        ),
        // A name is checked where it is resolved, by the client that connects.
        (
            "name",
            format!("https://localhost:{port}/hook"),
            "non-public address",
        ),
        (
            "plain",
            "http://hooks.example.com/x".to_owned(),
            "http:// is not allowed",
        ),
    ];
    let channels = targets.iter().map(|(id, url, _)| hook(id, url)).collect();
    let discord = json!({"id": "discord", "type": "discord",
        "webhook_url": format!("https://localhost:{port}/api/webhooks/1/x")});
    let _service = running(&setup, [channels, vec![discord]].concat()).await;
    setup.send_event(&seed_event("evt_ssrf", "acc")).await;
    let letters = dead_letters(&setup, targets.len() + 1).await;
    for (id, _, reason) in targets
        .iter()
        .chain([&("discord", String::new(), "non-public address")])
    {
        let letter = letters
            .iter()
            .find(|l| l["delivery"]["channel_id"] == *id)
            .unwrap_or_else(|| panic!("no dead letter for {id}"));
        let text = letter["reason"].as_str().unwrap();
        assert!(text.contains(reason), "{id}: {text}");
        assert_eq!(
            letter["delivery"]["attempts"].as_array().unwrap().len(),
            1,
            "{id}: permanent"
        );
    }
    assert_eq!(receiver.count(), 0, "nothing reached the private network");
}
