//! Provider rate limits (issue 16, CONTRACT §5a): against fakes that enforce the providers'
//! limits, a storm to one bucket is paced, not failed, and no account waits behind another.

use std::time::{Duration, Instant};

use serde_json::json;
use testkit::limits::{Enforced, Limit};

use crate::common::receiver::{Receiver, Reply};
use crate::common::scenario::*;
use crate::common::smtp::{Mail, SmtpServer};
use crate::common::{create_topic, read_all, until, Setup};

/// A storm's surroundings: a fake Slack enforcing its limit (1/1s, burst 5, as configured),
/// account `acc` with one Slack channel, and account `calm` with a plain webhook.
pub(crate) struct SlackStorm {
    pub slack: Receiver,
    pub limit: Enforced,
    pub calm: Receiver,
    pub setup: Setup,
    pub service: crate::common::Service,
}

impl SlackStorm {
    /// Sends `n` alerts for `acc` (`evt_s000`, …) at once, then one for `calm`; returns how
    /// long the calm one took from its production to its receipt.
    pub(crate) async fn storm_then_calm(&self, n: usize) -> Duration {
        for i in 0..n {
            self.setup
                .send_event(&seed_event(&format!("evt_s{i:03}"), "acc"))
                .await;
        }
        let produced = Instant::now();
        self.setup.send_event(&seed_event("evt_calm", "calm")).await;
        until(WAIT, "the calm account's alert", || async {
            (self.calm.count() == 1).then(|| produced.elapsed())
        })
        .await
    }
}

pub(crate) async fn slack_storm(name: &str) -> SlackStorm {
    let slack = Receiver::start().await;
    let limit = Enforced::new(Limit::slack(5));
    slack.respond_by(limit.responder());
    let calm = Receiver::start().await;
    let mut setup = Setup::new(name, &["1s", "1s", "1s"]).await;
    setup.extra = format!(
        "[channels.slack]\napi_base_url = \"{}/api\"\nrate = \"1/1s\"\nburst = 5\n",
        slack.base
    );
    setup.write_config();
    setup.create_service_topics().await;
    let ops = json!({"id": "ops", "type": "slack", "bot_token": "xoxb-1", "channel": "C1"});
    setup
        .put_settings("calm", &settings("calm", 1, vec![hook("hook", &calm.url)]))
        .await;
    let service = running(&setup, vec![ops]).await;
    SlackStorm {
        slack,
        limit,
        calm,
        setup,
        service,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_to_one_slack_channel_is_paced_and_other_accounts_flow() {
    let storm = slack_storm("paced").await;
    const STORM: usize = 20;
    let started = Instant::now();
    let calm_took = storm.storm_then_calm(STORM).await;
    let SlackStorm {
        slack,
        limit,
        setup,
        service,
        ..
    } = storm;
    let accepted = "sysmos_notify_deliveries_total{channel=\"slack\",outcome=\"delivered\"}";
    metric_reaches(&service, accepted, STORM as f64).await;
    let paced = started.elapsed();
    println!(
        "{STORM} alerts to one Slack channel: all accepted after {paced:?}, {} answers of 429; \
         the calm account's alert took {calm_took:?}",
        limit.limited()
    );
    let requests = slack.requests();
    let limited = limit.limited();
    assert!(
        limited <= 5,
        "{limited} answers of 429: a storm is paced, not failed"
    );
    // The pace (1/1s, burst 5) is never exceeded: in any span, at most 5 requests plus one
    // a second (the alerts that waited went together, as digests).
    for (i, first) in requests.iter().enumerate() {
        for (j, last) in requests.iter().enumerate().skip(i) {
            let span = (last.at - first.at).as_secs_f64();
            let requests_in_span = j - i + 1;
            assert!(
                requests_in_span <= 5 + (span + 0.1) as usize,
                "requests {i} to {j} within {span:.2} s: past the pace"
            );
        }
    }
    assert!(
        calm_took < Duration::from_secs(5),
        "another account's alert waits for nobody's bucket: {calm_took:?}"
    );
    assert!(
        read_all(&setup.topic("dlq")).is_empty(),
        "nothing dead-lettered"
    );
    assert_eq!(
        service
            .metric("sysmos_notify_rate_limited_total{channel=\"slack\"}")
            .await,
        limited as f64
    );
    assert_eq!(
        service
            .metric("sysmos_notify_waiting_deliveries{channel=\"slack\"}")
            .await,
        0.0,
        "nothing waits once the storm is through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_long_retry_after_holds_back_no_other_account() {
    let held = Receiver::start().await;
    held.respond_by(std::sync::Arc::new(|_| {
        Reply::status(429).header("retry-after", "3600")
    }));
    let flaky = Receiver::start().await;
    flaky.respond(&[503], 200);
    // One tier and one partition: both accounts' waits share the tier's only partition.
    let mut setup = Setup::new("held", &["1s"]).await;
    setup.delivery = "max_pending = \"2h\"".to_owned();
    setup.write_config();
    for topic in ["deliveries", "retry.1"] {
        create_topic(&setup.topic(topic), 1).await;
    }
    setup.create_service_topics().await;
    setup
        .put_settings(
            "other",
            &settings("other", 1, vec![hook("hook", &flaky.url)]),
        )
        .await;
    let service = running(&setup, vec![hook("hook", &held.url)]).await;
    setup.send_event(&seed_event("evt_held", "acc")).await;
    requests_reach(&held, 1).await;
    setup.send_event(&seed_event("evt_other", "other")).await;
    let requests = requests_reach(&flaky, 2).await;
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap < Duration::from_secs(10),
        "the other account's 503 was retried after {gap:?}, not behind the hour-long wait"
    );
    assert_eq!(
        held.count(),
        1,
        "the held bucket gets nothing before its hour is over"
    );
    assert_eq!(
        service
            .metric("sysmos_notify_rate_limited_total{channel=\"webhook\"}")
            .await,
        1.0
    );
    assert!(read_all(&setup.topic("dlq")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_waiting_for_their_bucket_survive_a_sigkill() {
    let slack = Receiver::start().await;
    let limit = Enforced::new(Limit::slack(2));
    slack.respond_by(limit.responder());
    let mut setup = Setup::new("paced-kill", &["2s", "2s"]).await;
    // A slow pace, so most alerts are still waiting (as a digest) when the kill comes.
    setup.extra = format!(
        "[channels.slack]\napi_base_url = \"{}/api\"\nrate = \"1/10s\"\nburst = 2\n",
        slack.base
    );
    setup.write_config();
    let ops = json!({"id": "ops", "type": "slack", "bot_token": "xoxb-1", "channel": "C1"});
    let mut service = running(&setup, vec![ops]).await;
    const ALERTS: usize = 12;
    for i in 0..ALERTS {
        setup
            .send_event(&seed_event(&format!("evt_k{i:02}"), "acc"))
            .await;
    }
    // Killed while most alerts wait for the bucket: in memory (offsets unstored) or parked.
    until(WAIT, "the burst accepted", || async {
        (slack.count() - limit.limited() >= 2).then_some(())
    })
    .await;
    service.kill();
    let before = slack.count();
    let mut service = setup.start();
    service.wait_ready().await;
    let all = until(WAIT, "every alert accepted after the restart", || async {
        let mut covered = crate::digests::covered_by(&slack.requests());
        covered.sort();
        covered.dedup();
        (covered.len() == ALERTS).then_some(covered)
    })
    .await;
    assert!(before < ALERTS, "the kill came while alerts waited");
    assert_eq!(all.len(), ALERTS, "nothing lost");
    assert!(
        read_all(&setup.topic("dlq")).is_empty(),
        "nothing dead-lettered"
    );
    assert!(limit.limited() <= 5, "{} answers of 429", limit.limited());
    service.signal(libc::SIGTERM);
}

async fn mails_to(smtp: &SmtpServer, address: &str, n: usize) -> Vec<Mail> {
    until(WAIT, &format!("{n} mails to {address}"), || async move {
        let mails = smtp.mails_to(address);
        (mails.len() >= n).then_some(mails)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_is_paced_per_recipient_and_an_smtp_421_holds_the_server() {
    let smtp = SmtpServer::start().await;
    let mut setup = Setup::new("paced-mail", &["1s", "1s", "1s"]).await;
    setup.extra = format!(
        "[channels.email]\nsmtp_url = \"{}\"\nfrom = \"Sysmos <alerts@sysmos.test>\"\nrate = \"1/1s\"\nburst = 2\n",
        smtp.url()
    );
    setup.write_config();
    let mail = |to: &str| json!({"id": "mail", "type": "email", "recipients": [{"address": to, "verified": true}]});
    setup.create_service_topics().await;
    setup
        .put_settings("calm", &settings("calm", 1, vec![mail("calm@x.test")]))
        .await;
    let service = running(&setup, vec![mail("ops@x.test")]).await;
    let mails_to = |address: &'static str, n: usize| mails_to(&smtp, address, n);

    // A storm to one recipient: 2 at once (the burst), then the 4 that waited in one summary
    // a second later.
    const STORM: usize = 6;
    for i in 0..STORM {
        setup
            .send_event(&seed_event(&format!("evt_m{i}"), "acc"))
            .await;
    }
    let produced = Instant::now();
    setup.send_event(&seed_event("evt_calm", "calm")).await;
    let calm = mails_to("calm@x.test", 1).await;
    let calm_took = calm[0].at - produced;
    let delivered = "sysmos_notify_deliveries_total{channel=\"email\",outcome=\"delivered\"}";
    metric_reaches(&service, delivered, (STORM + 1) as f64).await;
    let storm = smtp.mails_to("ops@x.test");
    assert!(
        storm.len() < STORM,
        "the alerts that waited went as one summary"
    );
    for i in 2..storm.len() {
        let apart = storm[i].at - storm[i - 2].at;
        assert!(
            apart >= Duration::from_millis(900),
            "mails {} and {i} to one recipient {apart:?} apart: past its pace of 1/1s, burst 2",
            i - 2
        );
    }
    assert!(
        calm_took < Duration::from_secs(3),
        "another recipient is another bucket: {calm_took:?}"
    );

    // An SMTP 421 holds the whole server (CONTRACT §5a), uses up no retry, and the alert is
    // sent when the hold is over.
    smtp.script("ops@x.test", &["421 4.7.0 too many messages, slow down"]);
    setup.send_event(&seed_event("evt_421", "acc")).await;
    let limited = "sysmos_notify_rate_limited_total{channel=\"email\"}";
    metric_reaches(&service, limited, 1.0).await;
    let answered = Instant::now();
    setup.send_event(&seed_event("evt_calm2", "calm")).await;
    let calm = mails_to("calm@x.test", 2).await;
    let after = mails_to("ops@x.test", storm.len() + 1).await;
    let held = after[storm.len()].at - answered;
    println!("email: {STORM} alerts to one recipient in {} mails over {:?}; calm took {calm_took:?}; after a 421 the server was held {held:?}",
        storm.len(), storm[storm.len() - 1].at - storm[0].at);
    assert!(
        held >= Duration::from_secs(28),
        "the 421'd alert waits the server's hold (30 s): {held:?}"
    );
    assert!(
        calm[1].at - answered >= Duration::from_secs(25),
        "the server is held for every recipient: calm's second mail came after {:?}",
        calm[1].at - answered
    );
    assert_eq!(service.metric(limited).await, 1.0);
    let retried = "sysmos_notify_deliveries_total{channel=\"email\",outcome=\"retried\"}";
    assert_eq!(service.metric(retried).await, 0.0, "no retry used up");
    assert!(
        read_all(&setup.topic("dlq")).is_empty(),
        "nothing dead-lettered"
    );
}
