//! The binary's command line: `check-config` and `run` refuse bad configuration with exit 2.

use std::process::Command;

use crate::common::write_file;

fn check(text: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let file = write_file(text);
    let out = Command::new(env!("CARGO_BIN_EXE_sysmos-notify"))
        .arg("check-config")
        .arg(file.path())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_the_contract_example() {
    let text = r#"
[kafka]
brokers = "127.0.0.1:9092"
group_id = "sysmos-notify"
event_topics = ["^monitor\\..*", "^server\\..*"]
topic_prefix = "sysmos.notify"
partitions = 6
[kafka.client]
"fetch.wait.max.ms" = "10"
[retry]
delays = ["15s", "1m", "4m"]
[delivery]
timeout = "10s"
max_in_flight = 512
allow_private_targets = false
[http]
listen = "0.0.0.0:9464"
[dashboard]
base_url = "https://app.sysmos.io"
[channels.slack]
api_base_url = "https://slack.com/api"
[channels.pagerduty]
events_url = "https://events.pagerduty.com/v2/enqueue"
[channels.email]
smtp_url = "smtp://127.0.0.1:25"
from = "Sysmos Alerts <alerts@sysmos.io>"
"#;
    assert_eq!(check(text, &[]), (Some(0), String::new()));
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let (code, err) = check("[delivery]\nmax_in_flight = -3\n", &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("delivery.max_in_flight"), "{err}");
    let (code, err) = check("[kafka]\nbrokres = \"x\"\n", &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("brokres"), "{err}");
    let (code, err) = check("", &[("SYSMOS_NOTIFY__RETRY__DELAYS", "15s,forever")]);
    assert_eq!(code, Some(2));
    assert!(err.contains("retry.delays"), "{err}");
}

#[test]
fn run_refuses_bad_configuration_before_starting() {
    let file = write_file("[http]\nlisten = \"not-an-address\"\n");
    let out = Command::new(env!("CARGO_BIN_EXE_sysmos-notify"))
        .args(["run", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http.listen"));
}
