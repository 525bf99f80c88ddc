//! Unit tests of the configuration: defaults, precedence, and every refusal naming its key.

use super::*;
use std::io::Write;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn load(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let f = file(text);
    Config::load_with_env(Some(f.path()), env(vars))
}

#[test]
fn defaults_match_the_contract() {
    let s = Config::load_with_env(None, env(&[])).unwrap();
    assert_eq!(s.kafka.brokers, "127.0.0.1:9092");
    assert_eq!(s.kafka.group_id, "sysmos-notify");
    assert_eq!(s.kafka.event_topics, ["^monitor\\..*", "^server\\..*"]);
    assert_eq!(s.kafka.topic_prefix, "sysmos.notify");
    assert_eq!(s.kafka.partitions, 6);
    assert!(s.kafka.client.is_empty());
    assert_eq!(
        s.retry.delays,
        [
            Duration::from_secs(15),
            Duration::from_secs(60),
            Duration::from_secs(240)
        ]
    );
    assert_eq!(s.delivery.timeout, Duration::from_secs(10));
    assert_eq!(s.delivery.max_in_flight, 512);
    assert_eq!(s.delivery.max_in_flight_per_destination, 256);
    assert!(!s.delivery.allow_private_targets);
    assert_eq!(s.http.listen.to_string(), "0.0.0.0:9464");
    assert!(s.delivery.ca_file.is_none());
    assert_eq!(s.delivery.max_pending, Duration::from_secs(3600));
    let paces = s.paces();
    let pace = |p: Pace| (p.rate.to_string(), p.burst.get());
    assert_eq!(pace(paces.slack), ("1/1s".to_owned(), 5));
    assert_eq!(pace(paces.discord), ("5/2s".to_owned(), 5));
    assert_eq!(pace(paces.pagerduty), ("100/1m".to_owned(), 20));
    assert_eq!(pace(paces.email), ("1/1m".to_owned(), 5));
    assert_eq!(s.dashboard_base(), "https://app.sysmos.io");
    assert_eq!(
        s.channels.slack.api_base_url.as_str(),
        "https://slack.com/api"
    );
    assert_eq!(
        s.channels.pagerduty.events_url.as_str(),
        "https://events.pagerduty.com/v2/enqueue"
    );
    assert_eq!(s.channels.email.smtp_url.masked(), "smtp://127.0.0.1:25");
    let from = &s.channels.email.from;
    assert_eq!(from.name.as_deref(), Some("Sysmos Alerts"));
    assert_eq!(from.email.to_string(), "alerts@sysmos.io");
}

#[test]
fn environment_beats_file_beats_defaults() {
    let text = "[kafka]\nbrokers = \"file:9092\"\ngroup_id = \"from-file\"\n[kafka.client]\n\"fetch.wait.max.ms\" = \"10\"\nsession.timeout.ms = 6000\n[retry]\ndelays = [\"1s\", \"500ms\"]\n";
    let s = load(
        text,
        &[
            ("SYSMOS_NOTIFY__KAFKA__BROKERS", "env:9092"),
            ("SYSMOS_NOTIFY__DELIVERY__MAX_IN_FLIGHT", "7"),
            ("SYSMOS_NOTIFY__DELIVERY__ALLOW_PRIVATE_TARGETS", "true"),
            ("SYSMOS_NOTIFY__KAFKA__EVENT_TOPICS", "alerts,^x\\..*"),
            ("SYSMOS_NOTIFY__KAFKA__CLIENT__SOCKET_TIMEOUT_MS", "3000"),
            ("SYSMOS_NOTIFY_LOG_FORMAT", "json"),
        ],
    )
    .unwrap();
    assert_eq!(s.kafka.brokers, "env:9092");
    assert_eq!(s.kafka.group_id, "from-file");
    assert_eq!(s.delivery.max_in_flight, 7);
    assert!(s.delivery.allow_private_targets);
    assert_eq!(s.kafka.event_topics, ["alerts", "^x\\..*"]);
    assert_eq!(
        s.retry.delays,
        [Duration::from_secs(1), Duration::from_millis(500)]
    );
    assert_eq!(s.kafka.client["fetch.wait.max.ms"], "10");
    assert_eq!(s.kafka.client["session.timeout.ms"], "6000");
    assert_eq!(s.kafka.client["socket.timeout.ms"], "3000");
}

#[test]
fn refusals_name_the_key() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("[kafka]\nbrokerz = \"x\"\n", &[], "brokerz"),
        ("[nonsense]\nx = 1\n", &[], "nonsense"),
        (
            "[delivery]\nmax_in_flight = \"lots\"\n",
            &[],
            "delivery.max_in_flight",
        ),
        (
            "[delivery]\nmax_in_flight = 0\n",
            &[],
            "delivery.max_in_flight",
        ),
        (
            "[delivery]\ntimeout = \"10 parsecs\"\n",
            &[],
            "delivery.timeout",
        ),
        (
            "[retry]\ndelays = [\"15s\", \"soon\"]\n",
            &[],
            "retry.delays",
        ),
        ("[http]\nlisten = \"nowhere\"\n", &[], "http.listen"),
        (
            "[dashboard]\nbase_url = \"not a url\"\n",
            &[],
            "dashboard.base_url",
        ),
        (
            "[kafka]\nevent_topics = [\"^(unclosed\"]\n",
            &[],
            "kafka.event_topics[0]",
        ),
        (
            "[kafka]\ntopic_prefix = \"has space\"\n",
            &[],
            "kafka.topic_prefix",
        ),
        (
            "[kafka.client]\n\"enable.auto.offset.store\" = \"true\"\n",
            &[],
            "enable.auto.offset.store",
        ),
        (
            "[channels.email]\nsmtp_url = \"http://x\"\n",
            &[],
            "channels.email.smtp_url",
        ),
        (
            "[channels.email]\nsmtp_url = \"smtp://mail.example.com:587?tls=sometimes\"\n",
            &[],
            "channels.email.smtp_url",
        ),
        (
            "[channels.email]\nfrom = \"not an address\"\n",
            &[],
            "channels.email.from",
        ),
        (
            "",
            &[("SYSMOS_NOTIFY__KAFKA__PARTITIONS", "many")],
            "kafka.partitions",
        ),
        ("", &[("SYSMOS_NOTIFY__DELIVERY__BOGUS", "1")], "bogus"),
        (
            "[delivery]\ndedup_window = \"5m\"\n",
            &[],
            "delivery.dedup_window",
        ),
        (
            "[delivery]\ndedup_capacity = 0\n",
            &[],
            "delivery.dedup_capacity",
        ),
        (
            "[channels.slack]\nrate = \"fast\"\n",
            &[],
            "channels.slack.rate",
        ),
        (
            "[channels.pagerduty]\nburst = 0\n",
            &[],
            "channels.pagerduty.burst",
        ),
        (
            "[channels.discord]\nrate = \"5/2s\"\nglobal = true\n",
            &[],
            "global",
        ),
        (
            "",
            &[("SYSMOS_NOTIFY__CHANNELS__EMAIL__RATE", "0/1m")],
            "channels.email.rate",
        ),
        (
            "[delivery]\nmax_pending = \"soon\"\n",
            &[],
            "delivery.max_pending",
        ),
        (
            "[delivery]\nca_file = \"/nonexistent/ca.pem\"\n",
            &[],
            "delivery.ca_file",
        ),
        (
            // A PEM file, but of a key: no certificate to trust.
            concat!(
                "[delivery]\nca_file = \"",
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/tls/server.key\"\n"
            ),
            &[],
            "delivery.ca_file",
        ),
    ];
    for (text, vars, key) in cases {
        let err = load(text, vars).expect_err(text).to_string();
        assert!(err.contains(key), "{text:?}: expected `{key}` in: {err}");
    }
    let missing =
        Config::load_with_env(Some(Path::new("/nonexistent/x.toml")), env(&[])).unwrap_err();
    assert!(missing.to_string().contains("/nonexistent/x.toml"));
    let broken = load("[kafka\n", &[]).unwrap_err();
    assert!(
        broken.to_string().contains("invalid configuration"),
        "{broken}"
    );
}

#[test]
fn a_ca_file_of_certificates_is_accepted() {
    let text = concat!(
        "[delivery]\nca_file = \"",
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tls/ca.pem\"\n"
    );
    let settings = load(text, &[]).expect("the test CA is a usable root");
    let ca_file = settings.delivery.ca_file.expect("set");
    assert!(ca_file.path.ends_with("ca.pem"));
    assert_eq!(ca_file.certificates.len(), 1);
}

#[test]
fn durations() {
    let table = [
        ("15s", Duration::from_secs(15)),
        ("4m", Duration::from_secs(240)),
        (" 250ms ", Duration::from_millis(250)),
        ("2h", Duration::from_secs(7200)),
        ("1h 30m", Duration::from_secs(5400)),
    ];
    for (text, expected) in table {
        assert_eq!(parse_duration(text).ok(), Some(expected), "{text}");
    }
    for bad in ["15", "s", "soon", "-1s"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}
