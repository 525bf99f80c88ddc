//! Secrets stay secret (issue 5 §2): a full scenario with distinctive secret strings in every
//! place settings hold one, every provider failing (so errors, retries and dead letters are
//! written), logs at `trace`; then everything the service wrote is searched: its log, every
//! topic it writes, `/metrics`, and the operator commands' output.

use std::time::Duration;

use base64::Engine;
use rdkafka::message::Headers;
use rdkafka::Message;
use serde_json::json;

use crate::common::receiver::{Receiver, Reply};
use crate::common::scenario::*;
use crate::common::smtp::SmtpServer;
use crate::common::{read_all, Service, Setup};

const SLACK_TOKEN: &str = "xoxb-SECRET-SLACK-7f3a";
const DISCORD_TOKEN: &str = "SECRET-DISCORD-9b2c";
const PD_KEY: &str = "SECRETPD0123456789abcdef01234567";
const HOOK_PATH: &str = "SECRET-HOOKPATH-2a1b";
const HEADER_VALUE: &str = "Bearer SECRET-HEADER-1d4e";
const SMTP_PASSWORD: &str = "SECRET-SMTP-5e6f";
const VERIFY_TOKEN: &str = "SECRET-VERIFY-TOKEN-3c2d";

fn signing_secret() -> String {
    let key = base64::engine::general_purpose::STANDARD.encode(b"SECRET-SIGNING-KEY-8c7d");
    format!("whsec_{key}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_topics_metrics_or_cli_output() {
    let providers = Receiver::start().await;
    // Every provider fails once with a 5xx (a retry), then with a 4xx (a dead letter).
    providers.respond(&[], 500);
    for path in ["/api/chat.postMessage", "/discord/", "/pd", HOOK_PATH] {
        providers.respond_when(path, vec![Reply::status(500)], Reply::status(400));
    }
    let smtp = SmtpServer::start().await; // no AUTH offered: the login fails every time
    let mut setup = Setup::new("secrets", &["1s"]).await;
    setup.extra = format!(
        "[channels.slack]\napi_base_url = \"{base}/api\"\n\
         [channels.pagerduty]\nevents_url = \"{base}/pd\"\n\
         [channels.email]\nsmtp_url = \"smtp://alerts:{SMTP_PASSWORD}@127.0.0.1:{port}\"\n",
        base = providers.base,
        port = smtp.port
    );
    setup.write_config();
    setup.create_service_topics().await;
    let channels = vec![
        json!({"id": "slack", "type": "slack", "bot_token": SLACK_TOKEN, "channel": "C1"}),
        json!({"id": "discord", "type": "discord",
               "webhook_url": format!("{}/discord/api/webhooks/1/{DISCORD_TOKEN}", providers.base)}),
        json!({"id": "pd", "type": "pagerduty", "integration_key": PD_KEY}),
        json!({"id": "hook", "type": "webhook", "url": format!("{}/{HOOK_PATH}", providers.base),
               "headers": {"Authorization": HEADER_VALUE}, "secret": signing_secret()}),
        json!({"id": "mail", "type": "email", "recipients": [
            {"address": "ops@example.test", "verified": true},
            {"address": "new@example.test", "verified": false,
             "verification_url": format!("https://app.example.test/verify?t={VERIFY_TOKEN}")}]}),
    ];
    setup
        .put_settings("acc", &settings("acc", 1, channels))
        .await;
    let mut service =
        Service::start_logged(setup.config.path().to_path_buf(), setup.http_port, "trace");
    service.wait_ready().await;
    setup.send_event(&seed_event("evt_secret", "acc")).await;
    setup.send_raw(Some(b"not json")).await;
    let letters = dead_letters(&setup, 5).await;
    metric_reaches(
        &service,
        "sysmos_notify_verification_emails_total{outcome=\"failed\"}",
        1.0,
    )
    .await;
    assert_eq!(providers.requests_with(HOOK_PATH).len(), 2, "500, then 400");
    let mail = letters
        .iter()
        .find(|l| l["delivery"]["channel_id"] == "mail")
        .unwrap();
    assert!(
        mail["reason"].as_str().unwrap().contains("authentication"),
        "{mail}"
    );

    let mut written = Vec::new();
    for args in [
        vec!["dlq", "list"],
        vec!["settings", "show", "acc"],
        vec![
            "send-test",
            "--account",
            "acc",
            "--channel",
            "discord",
            "--wait",
            "20s",
        ],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sysmos-notify"))
            .args(&args)
            .arg("--config")
            .arg(setup.config.path())
            .env("RUST_LOG", "trace")
            .output()
            .unwrap();
        written.push((format!("`{}` stdout", args.join(" ")), out.stdout));
        written.push((format!("`{}` stderr", args.join(" ")), out.stderr));
    }
    let metrics = service.get("/metrics").await.unwrap().1;
    written.push(("/metrics".into(), metrics.into_bytes()));
    service.signal(libc::SIGTERM);
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, Some(0));
    let log = service.logs();
    assert!(log.lines().count() > 100, "trace logging was on");
    written.push(("the service's log".into(), log.into_bytes()));
    for suffix in [
        "deliveries",
        "retry.1",
        "dlq",
        "rejected",
        "verifications",
        "replayed",
        "reports",
        "handled",
    ] {
        let topic = setup.topic(suffix);
        for record in read_all(&topic) {
            let mut bytes = record.key().unwrap_or_default().to_vec();
            bytes.extend_from_slice(record.payload().unwrap_or_default());
            for header in record.headers().into_iter().flat_map(|h| h.iter()) {
                bytes.extend_from_slice(header.value.unwrap_or_default());
            }
            written.push((topic.clone(), bytes));
        }
    }
    let secrets = [
        SLACK_TOKEN.to_owned(),
        DISCORD_TOKEN.to_owned(),
        PD_KEY.to_owned(),
        HOOK_PATH.to_owned(),
        "SECRET-HEADER-1d4e".to_owned(),
        signing_secret(),
        SMTP_PASSWORD.to_owned(),
        VERIFY_TOKEN.to_owned(),
    ];
    assert!(written.len() > 10);
    for (place, bytes) in &written {
        let text = String::from_utf8_lossy(bytes);
        for secret in &secrets {
            if let Some(at) = text.find(secret.as_str()) {
                let context: String = text[at.saturating_sub(200)..].chars().take(400).collect();
                panic!("{secret} leaked into {place}:\n…{context}…");
            }
        }
    }
}
