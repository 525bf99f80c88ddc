//! The operator commands against the real broker (issue 4 §5): `dlq list`, `dlq replay`,
//! `send-test` and `settings show`, run as the binary with the service's config file.

use std::time::Duration;

use serde_json::json;

use crate::common::receiver::Receiver;
use crate::common::scenario::*;
use crate::common::{read_all, until, Setup};

const SECRET_HEADER: &str = "Bearer TOPSECRET-header-value";

/// Runs `sysmos-notify ARGS --config <setup's file>`: (exit code, stdout, stderr).
async fn cli(setup: &Setup, args: &[&str]) -> (i32, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sysmos-notify"));
    command.args(args).arg("--config").arg(setup.config.path());
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    // Shown by the test harness when a test fails.
    println!("$ sysmos-notify {}\n{stdout}{stderr}", args.join(" "));
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

fn channel(id: &str, url: String) -> serde_json::Value {
    json!({"id": id, "type": "webhook", "url": url,
           "headers": {"Authorization": SECRET_HEADER}, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})
}

fn assert_no_secret(output: &str) {
    assert!(!output.contains("TOPSECRET"), "a secret leaked:\n{output}");
    assert!(!output.contains("whsec_"), "a secret leaked:\n{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_and_replay_filter_mask_and_replay_once() {
    let setup = Setup::new("ops-dlq", &["1s"]).await;
    let receiver = Receiver::start().await;
    receiver.respond(&[], 400);
    let channels = vec![
        channel("a", format!("{}/chan-a", receiver.base)),
        channel("b", format!("{}/chan-b", receiver.base)),
    ];
    let service = running(&setup, channels).await;
    setup.send_event(&seed_event("evt_ops", "acc")).await;
    dead_letters(&setup, 2).await;

    let (code, out, err) = cli(&setup, &["dlq", "list"]).await;
    assert_eq!(code, 0, "{err}");
    assert_no_secret(&out);
    assert!(out.contains("2 of 2 dead letters shown"), "{out}");
    assert!(
        out.contains("permanent failure: HTTP 400 Bad Request"),
        "{out}"
    );
    for column in ["ACCOUNT", "CHANNEL", "monitor.down", "webhook"] {
        assert!(out.contains(column), "{column} missing:\n{out}");
    }
    let (_, out, _) = cli(&setup, &["dlq", "list", "--channel", "a"]).await;
    assert!(out.contains("1 of 2 dead letters shown"), "{out}");
    let (_, out, _) = cli(&setup, &["dlq", "list", "--since", "2099-01-01T00:00:00Z"]).await;
    assert!(out.contains("0 of 2 dead letters shown"), "{out}");
    let (code, _, err) = cli(&setup, &["dlq", "list", "--since", "someday"]).await;
    assert_eq!(code, 2, "a bad --since is refused: {err}");

    let (code, out, _) = cli(&setup, &["dlq", "replay", "--channel", "a", "--dry-run"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("would replay 1") && out.contains("(dry run)"),
        "{out}"
    );
    assert_eq!(
        read_all(&setup.topic("deliveries")).len(),
        2,
        "a dry run writes nothing"
    );

    receiver.respond(&[], 200);
    let (code, out, err) = cli(&setup, &["dlq", "replay", "--channel", "a"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("replaying 1") && out.contains("[1/1]"),
        "{out}"
    );
    let delivered = "sysmos_notify_deliveries_total{channel=\"webhook\",outcome=\"delivered\"}";
    metric_reaches(&service, delivered, 1.0).await;
    let replayed = receiver.requests_with("/chan-a");
    assert_eq!(replayed.len(), 2, "the first attempt, then the replay");
    assert_eq!(
        replayed[0].headers["webhook-id"], replayed[1].headers["webhook-id"],
        "a replay is the same delivery"
    );

    let (_, out, _) = cli(&setup, &["dlq", "replay", "--channel", "a"]).await;
    assert!(
        out.contains("1 replayed before; replaying 0"),
        "safe to run twice: {out}"
    );
    let (_, out, _) = cli(&setup, &["dlq", "replay"]).await;
    assert!(
        out.contains("2 dead letters match; 1 replayed before; replaying 1"),
        "{out}"
    );
    metric_reaches(&service, delivered, 2.0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        receiver.requests_with("/chan-a").len(),
        2,
        "never replayed twice"
    );
    assert_eq!(receiver.requests_with("/chan-b").len(), 2);
    let (_, out, _) = cli(&setup, &["dlq", "list"]).await;
    assert_eq!(
        out.matches("  yes  ").count(),
        2,
        "both marked replayed:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_prints_the_answer_and_settings_show_masks_secrets() {
    let setup = Setup::new("ops-test", &["1s"]).await;
    let receiver = Receiver::start().await;
    receiver.respond_when("/bad", vec![], crate::common::receiver::Reply::status(400));
    let channels = vec![
        channel("ok", format!("{}/ok", receiver.base)),
        channel("bad", format!("{}/bad", receiver.base)),
    ];
    let _service = running(&setup, channels).await;

    let (code, out, err) = cli(
        &setup,
        &["send-test", "--account", "acc", "--channel", "ok"],
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("attempt 1") && out.contains("status 200"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("delivered"), "{out}");
    let request = until(WAIT, "the test request", || async {
        receiver.requests_with("/ok").pop()
    })
    .await;
    assert_eq!(request.json()["event"], "monitor.test");
    assert_eq!(request.headers["authorization"], SECRET_HEADER);
    let schema = crate::schemas::validator("attempt-report.schema.json");
    let reports = read_all(&setup.topic("reports"));
    assert_eq!(reports.len(), 1);
    let report: serde_json::Value =
        serde_json::from_slice(rdkafka::Message::payload(&reports[0]).unwrap()).unwrap();
    assert!(schema.is_valid(&report), "{report}");
    assert_eq!(report["next"], "delivered");

    let (code, out, _) = cli(
        &setup,
        &["send-test", "--account", "acc", "--channel", "bad"],
    )
    .await;
    assert_eq!(code, 1, "not delivered: {out}");
    assert!(out.contains("status 400"), "{out}");
    assert!(
        out.contains("dead-lettered: permanent failure: HTTP 400"),
        "{out}"
    );
    let (code, _, err) = cli(
        &setup,
        &["send-test", "--account", "acc", "--channel", "nope"],
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("has no channel nope; its channels: ok, bad"),
        "{err}"
    );

    let (code, out, err) = cli(&setup, &["settings", "show", "acc"]).await;
    assert_eq!(code, 0, "{err}");
    assert_no_secret(&out);
    assert!(
        out.contains("account acc  version 1  2 channel(s)"),
        "{out}"
    );
    assert!(out.contains("ok  (webhook)  enabled") && out.contains("header Authorization: ***"));
    let (code, _, err) = cli(&setup, &["settings", "show", "nobody"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("account nobody has no settings"), "{err}");
}

/// The highest value of `metric` over series whose labels contain `labels`.
fn highest(metrics: &str, metric: &str, labels: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_seconds_and_retry_backlog_follow_the_work() {
    let setup = Setup::new("ops-lag", &["30s"]).await;
    let receiver = Receiver::start().await;
    receiver.respond_when(
        "/fails",
        vec![],
        crate::common::receiver::Reply::status(503),
    );
    // Held just under the service's 3 s test timeout; lag statistics come every 2 s.
    receiver.delay(Duration::from_millis(2800));
    let channels = vec![
        channel("slow", format!("{}/slow", receiver.base)),
        channel("fails", format!("{}/fails", receiver.base)),
    ];
    let service = running(&setup, channels).await;
    setup.send_event(&seed_event("evt_lag", "acc")).await;
    let deliveries = format!("topic=\"{}\"", setup.topic("deliveries"));
    let svc = &service;
    // While the slow request is held, the oldest unprocessed delivery ages.
    let age = until(WAIT, "lag seconds on the deliveries topic", || {
        let deliveries = deliveries.clone();
        async move {
            let (_, text) = svc.get("/metrics").await?;
            highest(&text, "sysmos_notify_consumer_lag_seconds", &deliveries).filter(|a| *a >= 0.5)
        }
    })
    .await;
    assert!(age < 30.0, "{age}");
    // The 503 waits 30 s in tier 1.
    until(WAIT, "retry backlog in tier 1", || async move {
        let (_, text) = svc.get("/metrics").await?;
        highest(&text, "sysmos_notify_retry_backlog", "tier=\"1\"").filter(|n| *n >= 1.0)
    })
    .await;
    // Once the slow request is answered, nothing on the deliveries topic is waiting.
    until(WAIT, "lag seconds back to 0", || {
        let deliveries = deliveries.clone();
        async move {
            let (_, text) = svc.get("/metrics").await?;
            (highest(&text, "sysmos_notify_consumer_lag_seconds", &deliveries)? == 0.0)
                .then_some(())
        }
    })
    .await;
}
