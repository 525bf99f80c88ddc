//! Superseded alerts and duplicate suppression (issue 5 §5, §8), through `P.handled`: a
//! retried problem whose recovery was delivered is dropped; a PagerDuty alert that lands
//! after its recovery is resolved again; records handled before a SIGKILL are not sent again
//! after the restart.

use std::time::Duration;

use rdkafka::Message;
use serde_json::{json, Value};

use crate::common::receiver::{Receiver, Recorded, Reply};
use crate::common::scenario::*;
use crate::common::{read_all, Setup};

fn recovery(id: &str) -> Value {
    let mut event = seed_event(id, "acc");
    event["event"] = json!("monitor.recovered");
    event["occurred_at"] = json!("2025-01-15T10:40:00Z");
    event["alert"] =
        json!({"status": "up", "region": "us-east-1", "down_since": "2025-01-15T10:30:00Z"});
    event
}

fn pagerduty(id: &str) -> Value {
    json!({"id": id, "type": "pagerduty", "integration_key": "0123456789abcdef0123456789abcdef"})
}

async fn with_pagerduty(name: &str, delays: &[&'static str], pd: &Receiver) -> Setup {
    let mut setup = Setup::new(name, delays).await;
    setup.extra = format!(
        "[channels.pagerduty]\nevents_url = \"{}/v2/enqueue\"\n",
        pd.base
    );
    setup.write_config();
    setup
}

fn accepted() -> Reply {
    Reply::json(
        202,
        json!({"status": "success", "message": "Event processed"}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_problem_is_dropped_once_its_recovery_is_delivered() {
    let receiver = Receiver::start().await;
    receiver.respond_when("monitor.down", vec![Reply::status(500)], Reply::status(200));
    let pd = Receiver::start().await;
    pd.respond_when("\"trigger\"", vec![Reply::status(500)], accepted());
    pd.respond_when("", vec![], accepted());
    let setup = with_pagerduty("superseded", &["4s", "4s", "4s"], &pd).await;
    let service = running(&setup, vec![hook("hook", &receiver.url), pagerduty("pd")]).await;

    setup.send_event(&seed_event("evt_down", "acc")).await;
    requests_with(&receiver, "monitor.down", 1).await;
    requests_with(&pd, "\"trigger\"", 1).await;
    // Both problems failed once and wait 4 s in tier 1; the recovery arrives meanwhile.
    setup.send_event(&recovery("evt_up")).await;
    for channel in ["webhook", "pagerduty"] {
        let series = format!(
            "sysmos_notify_deliveries_total{{channel=\"{channel}\",outcome=\"superseded\"}}"
        );
        metric_reaches(&service, &series, 1.0).await;
    }

    assert_eq!(
        receiver.requests_with("monitor.down").len(),
        1,
        "not retried"
    );
    assert_eq!(receiver.requests_with("monitor.recovered").len(), 1);
    assert_eq!(pd.requests_with("\"trigger\"").len(), 1, "not retried");
    assert_eq!(pd.requests_with("\"resolve\"").len(), 1);
    let schema = crate::schemas::validator("handled.schema.json");
    let mut handled: Vec<Value> = Vec::new();
    for message in read_all(&setup.topic("handled")) {
        let record: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        assert!(schema.is_valid(&record), "{record}");
        handled.extend(record["handled"].as_array().unwrap().iter().cloned());
    }
    let superseded: Vec<&Value> = handled
        .iter()
        .filter(|h| h["next"] == "superseded")
        .collect();
    assert_eq!(superseded.len(), 2, "{handled:?}");
    assert!(superseded
        .iter()
        .all(|h| h["attempts_before"] == 1 && h["recovery"] == false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pagerduty_alert_landing_after_its_recovery_is_resolved_again() {
    let pd = Receiver::start().await;
    let slow_key = "slow0000000000000000000000000000";
    // `slow`: the first trigger is held past the 3 s timeout (PagerDuty may have opened the
    // incident, the service cannot know), then everything is accepted at once.
    pd.respond_when(
        slow_key,
        vec![accepted().after(Duration::from_secs(4))],
        accepted(),
    );
    // `pd`: the retried trigger is held 2 s, so its recovery is delivered while it is in flight.
    pd.respond_when(
        "\"trigger\"",
        vec![Reply::status(500)],
        accepted().after(Duration::from_secs(2)),
    );
    pd.respond_when("", vec![], accepted());
    let setup = with_pagerduty("overtaken", &["1s", "1s", "1s"], &pd).await;
    let mut slow = pagerduty("slow");
    slow["integration_key"] = json!(slow_key);
    let service = running(&setup, vec![pagerduty("pd"), slow]).await;

    setup.send_event(&seed_event("evt_down", "acc")).await;
    let triggers = requests_with(&pd, "\"trigger\"", 3).await;
    setup.send_event(&recovery("evt_up")).await;
    let resolves = requests_with(&pd, "\"resolve\"", 4).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let key = triggers[0].json()["dedup_key"].clone();
    let all = pd.requests();
    assert!(all.iter().all(|r| r.json()["dedup_key"] == key));
    for (name, routing) in [
        ("pd", "0123456789abcdef0123456789abcdef"),
        ("slow", slow_key),
    ] {
        let sent: Vec<Value> = all
            .iter()
            .map(Recorded::json)
            .filter(|r| r["routing_key"] == routing)
            .collect();
        let actions: Vec<&str> = sent
            .iter()
            .map(|r| r["event_action"].as_str().unwrap())
            .collect();
        let expected: &[&str] = if name == "pd" {
            &["trigger", "trigger", "resolve", "resolve"]
        } else {
            &["trigger", "resolve", "resolve"]
        };
        assert_eq!(actions, expected, "{name}: the last word is a resolve");
    }
    let pd_resolves: Vec<&Recorded> = resolves
        .iter()
        .filter(|r| r.json()["routing_key"] != slow_key)
        .collect();
    let pd_triggers: Vec<&Recorded> = triggers
        .iter()
        .filter(|r| r.json()["routing_key"] != slow_key)
        .collect();
    assert!(
        pd_resolves[1].at - pd_triggers[1].at >= Duration::from_millis(1900),
        "the second resolve follows the held trigger's answer"
    );
    assert!(service.logs().contains("incident resolved again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_handled_before_a_sigkill_are_not_sent_again() {
    let receiver = Receiver::start().await;
    let mut setup = Setup::new("dedup-restart", &["1s", "1s", "1s"]).await;
    // No offset is committed before the kill: everything is read again after the restart.
    setup.client = "\"auto.commit.interval.ms\" = \"600000\"".into();
    setup.write_config();
    let mut service = running(&setup, vec![hook("hook", &receiver.url)]).await;
    let n = 10;
    for i in 0..n {
        setup
            .send_event(&seed_event(&format!("evt_{i}"), "acc"))
            .await;
    }
    let delivered = "sysmos_notify_deliveries_total{channel=\"webhook\",outcome=\"delivered\"}";
    metric_reaches(&service, delivered, n as f64).await;
    service.kill();

    let restarted = {
        let mut s = setup.start();
        s.wait_ready().await;
        s
    };
    // The router reads the events again (n repeated deliveries) and the deliverer reads
    // P.deliveries again (n records handled before): all of them are recognised.
    let duplicate = "sysmos_notify_deliveries_total{channel=\"webhook\",outcome=\"duplicate\"}";
    metric_reaches(&restarted, duplicate, 2.0 * n as f64).await;
    assert_eq!(receiver.count(), n, "nothing sent twice");
    assert_eq!(restarted.metric(delivered).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_produced_twice_at_once_is_delivered_once() {
    let receiver = Receiver::start().await;
    // Slow answers keep the first copy in flight while the second is read.
    receiver.delay(Duration::from_millis(300));
    let setup = Setup::new("dedup-twice", &["1s", "1s", "1s"]).await;
    let service = running(&setup, vec![hook("hook", &receiver.url)]).await;
    for id in ["evt_twice", "evt_twice", "evt_other"] {
        setup.send_event(&seed_event(id, "acc")).await;
    }
    let duplicate = "sysmos_notify_deliveries_total{channel=\"webhook\",outcome=\"duplicate\"}";
    metric_reaches(&service, duplicate, 1.0).await;
    let delivered = "sysmos_notify_deliveries_total{channel=\"webhook\",outcome=\"delivered\"}";
    metric_reaches(&service, delivered, 2.0).await;
    let ids: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r.headers["webhook-id"].clone())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_ne!(ids[0], ids[1]);
}
