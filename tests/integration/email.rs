//! Email end to end (issue 3 §5, §7): the service sends through lettre to a real SMTP server
//! listening on a local port in this test process.

use std::time::Duration;

use mail_parser::MimeHeaders;
use rdkafka::Message;
use serde_json::{json, Value};

use crate::common::scenario::*;
use crate::common::smtp::{Mail, SmtpServer};
use crate::common::{committed, create_topic, read_all, until, Service, Setup};

const VERIFY_URL: &str = "https://app.example.test/verify?t=tok-7f3a9";

async fn setup_with(name: &str, smtp: &SmtpServer) -> Setup {
    let mut setup = Setup::new(name, &["1s", "1s", "1s"]).await;
    setup.extra = format!(
        "[channels.email]\nsmtp_url = \"{}\"\nfrom = \"Sysmos Alerts <alerts@sysmos.test>\"\n",
        smtp.url()
    );
    setup.write_config();
    setup
}

fn email_channel(recipients: Value) -> Value {
    json!({"id": "mail", "type": "email", "recipients": recipients})
}

async fn mails_to(smtp: &SmtpServer, address: &str, n: usize) -> Vec<Mail> {
    until(WAIT, &format!("{n} mails to {address}"), || async move {
        let m = smtp.mails_to(address);
        (m.len() >= n).then_some(m)
    })
    .await
}

fn subject(mail: &Mail) -> String {
    mail.parsed().subject().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_email_is_multipart_escaped_and_only_for_verified_recipients() {
    let smtp = SmtpServer::start().await;
    let setup = setup_with("email", &smtp).await;
    let recipients = json!([
        {"address": "ops@example.test", "verified": true},
        {"address": "new@example.test", "verified": false, "verification_url": VERIFY_URL}]);
    let service = running(&setup, vec![email_channel(recipients)]).await;
    let mut event = seed_event("evt_mail", "acc");
    event["monitor"]["name"] = json!("<script>alert(1)</script> API");
    setup.send_event(&event).await;

    let alert = mails_to(&smtp, "ops@example.test", 1).await.remove(0);
    assert_eq!(alert.from, "alerts@sysmos.test");
    assert_eq!(
        alert.to,
        ["ops@example.test"],
        "one transaction per recipient"
    );
    let message = alert.parsed();
    assert_eq!(
        subject(&alert),
        "[DOWN] <script>alert(1)</script> API (us-east-1)"
    );
    let content_type = message.content_type().unwrap();
    assert_eq!(
        (content_type.ctype(), content_type.subtype()),
        ("multipart", Some("alternative"))
    );
    assert_eq!(message.text_body_count(), 1);
    assert_eq!(message.html_body_count(), 1);
    let html = message.body_html(0).unwrap();
    assert!(!html.contains("<script>"), "the monitor name renders inert");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; API"));
    assert!(html.contains("href=\"https://app.example.test/monitors/mon_abc123\""));
    for fact in [
        "us-east-1",
        "5023 ms",
        "503",
        "https://api.example.com/health",
    ] {
        assert!(html.contains(fact), "{fact} missing from the HTML part");
    }
    let text = message.body_text(0).unwrap();
    assert!(
        text.contains("<script>alert(1)</script> API is down"),
        "plain text is plain"
    );
    assert!(text.contains("View in Sysmos: https://app.example.test/monitors/mon_abc123"));
    assert!(alert.data.contains("Auto-Submitted: auto-generated"));

    let verification = mails_to(&smtp, "new@example.test", 1).await.remove(0);
    assert_eq!(
        subject(&verification),
        "Confirm your email address for Sysmos alerts"
    );
    assert!(verification
        .parsed()
        .body_text(0)
        .unwrap()
        .contains(VERIFY_URL));
    metric_reaches(
        &service,
        "sysmos_notify_verification_emails_total{outcome=\"sent\"}",
        1.0,
    )
    .await;
    metric_reaches(
        &service,
        "sysmos_notify_deliveries_total{channel=\"email\",outcome=\"delivered\"}",
        1.0,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        smtp.mails_to("new@example.test").len(),
        1,
        "no alert to an unverified recipient"
    );
    assert_eq!(smtp.mails().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_refusals_retry_only_missing_recipients_then_dead_letter() {
    let smtp = SmtpServer::start().await;
    // b refuses for good (5xx); c refuses once for now (4xx), then accepts.
    smtp.script("b@example.test", &["550 5.1.1 no such user"; 4]);
    smtp.script("c@example.test", &["451 4.2.0 try again later"]);
    let setup = setup_with("email-refusals", &smtp).await;
    let recipients = json!([
        {"address": "a@example.test", "verified": true},
        {"address": "b@example.test", "verified": true},
        {"address": "c@example.test", "verified": true}]);
    let service = running(&setup, vec![email_channel(recipients)]).await;
    setup.send_event(&seed_event("evt_refuse", "acc")).await;

    let letter = &dead_letters(&setup, 1).await[0];
    let schema = crate::schemas::validator("dead-letter.schema.json");
    assert!(
        schema.is_valid(letter),
        "the DLQ record matches schemas/dead-letter.schema.json"
    );
    let reason = letter["reason"].as_str().unwrap();
    assert!(
        reason.contains("b@example.test") && reason.contains("550"),
        "{reason}"
    );
    let attempts = letter["delivery"]["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        2,
        "4xx retried once, then only the 5xx was left"
    );
    assert_eq!(attempts[0]["outcome"], "retryable");
    assert_eq!(attempts[0]["reached"], json!(["a@example.test"]));
    assert_eq!(attempts[1]["reached"], json!(["c@example.test"]));
    assert_eq!(attempts[1]["status"], 550);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        smtp.mails_to("a@example.test").len(),
        1,
        "never mailed twice"
    );
    assert_eq!(smtp.mails_to("c@example.test").len(), 1);
    assert_eq!(smtp.mails_to("b@example.test").len(), 0);
    assert_eq!(
        service
            .metric("sysmos_notify_deliveries_total{channel=\"email\",outcome=\"dead_lettered\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_verification_email_across_a_restart() {
    let smtp = SmtpServer::start().await;
    let setup = setup_with("verify", &smtp).await;
    let pending =
        json!({"address": "new@example.test", "verified": false, "verification_url": VERIFY_URL});
    let mut service = running(&setup, vec![email_channel(json!([pending]))]).await;
    mails_to(&smtp, "new@example.test", 1).await;
    service.signal(libc::SIGTERM);
    assert_eq!(service.wait_exit(Duration::from_secs(30)).await, Some(0));

    // A newer version still lists the pending recipient (same URL) and adds another one.
    let second = json!({"address": "second@example.test", "verified": false,
        "verification_url": "https://app.example.test/verify?t=second"});
    setup
        .put_settings(
            "acc",
            &settings("acc", 2, vec![email_channel(json!([pending, second]))]),
        )
        .await;
    let mut service = Service::start(setup.config.path().to_path_buf(), setup.http_port);
    service.wait_ready().await;
    mails_to(&smtp, "second@example.test", 1).await;
    let group = format!("{}-group.verifications", setup.name);
    let config = setup.topic("config");
    until(WAIT, "the verifier to commit both records", || {
        let (group, config) = (group.clone(), config.clone());
        async move { (committed(&group, &config) >= 2).then_some(()) }
    })
    .await;
    assert_eq!(
        smtp.mails_to("new@example.test").len(),
        1,
        "remembered across the restart"
    );
    let markers = read_all(&setup.topic("verifications"));
    assert_eq!(markers.len(), 2);
    let schema = crate::schemas::validator("verification-marker.schema.json");
    for marker in &markers {
        let value: Value = serde_json::from_slice(marker.payload().unwrap()).unwrap();
        assert!(schema.is_valid(&value), "{value}");
        let text = String::from_utf8_lossy(marker.payload().unwrap());
        assert!(
            !text.contains("tok-7f3a9"),
            "the URL's token is not stored: {text}"
        );
    }
    assert_eq!(
        service
            .metric("sysmos_notify_verification_emails_total{outcome=\"sent\"}")
            .await,
        1.0,
        "this process sent only the new one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_verification_email_holds_back_no_other_account() {
    let smtp = SmtpServer::start().await;
    let mut setup = Setup::new("verify-isolated", &["10m"]).await;
    setup.extra = format!(
        "[channels.email]\nsmtp_url = \"{}\"\nfrom = \"Sysmos Alerts <alerts@sysmos.test>\"\n",
        smtp.url()
    );
    setup.write_config();
    // One partition: both accounts' records are read, in order, by one verifier.
    create_topic(&setup.topic("config"), 1).await;
    setup.create_service_topics().await;
    smtp.script("stuck@a.test", &["451 4.3.0 mailbox busy, try later"; 3]);
    let pending = |address: &str| {
        email_channel(json!([{"address": address, "verified": false,
            "verification_url": format!("https://app.example.test/verify?t={address}")}]))
    };
    setup
        .put_settings(
            "acc_a",
            &settings("acc_a", 1, vec![pending("stuck@a.test")]),
        )
        .await;
    setup
        .put_settings("acc_b", &settings("acc_b", 1, vec![pending("new@b.test")]))
        .await;
    let mut service = setup.start();
    service.wait_ready().await;

    // acc_a's email waits 10 minutes for its retry; acc_b's goes out meanwhile.
    until(
        Duration::from_secs(30),
        "acc_b's verification email",
        || async { (!smtp.mails_to("new@b.test").is_empty()).then_some(()) },
    )
    .await;
    assert!(smtp.mails_to("stuck@a.test").is_empty(), "refused with 451");
    let group = format!("{}-group.verifications", setup.name);
    assert!(
        committed(&group, &setup.topic("config")) <= 0,
        "acc_a's record waits for its retry: no offset passes it"
    );
    service.signal(libc::SIGTERM);
    assert_eq!(
        service.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "a verification waiting for its retry does not hold up shutdown"
    );
}
