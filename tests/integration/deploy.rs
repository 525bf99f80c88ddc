//! What operators deploy (issue 4 §2–4): the alert rules pass `promtool` (check and unit
//! tests), every metric the rules and the dashboard query is one the service exposes and the
//! README documents, the Kubernetes manifests reference each other consistently, and the
//! compose file mounts files that exist and creates every topic the service owns.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value as Yaml;
use sysmos_notify::config::Config;
use sysmos_notify::kafka::topics::Topics;
use sysmos_notify::metrics::Metrics;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(root().join("deploy/prometheus"))
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool not found ({e}): scripts/test installs it (Debian package prometheus)")
        });
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_checks_and_unit_tests() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["check", "config", "prometheus.yml"]);
    promtool(&["test", "rules", "alerts.test.yml"]);
    let rules: Yaml = serde_yaml::from_str(&read("deploy/prometheus/alerts.yml")).unwrap();
    let names: BTreeSet<&str> = rules["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| {
            let runbook = r["annotations"]["runbook"].as_str().unwrap_or_default();
            assert!(runbook.len() > 80, "{:?} has no runbook", r["alert"]);
            r["alert"].as_str().unwrap()
        })
        .collect();
    for expected in [
        "SysmosNotifyConsumerLagGrowing",
        "SysmosNotifyLagSecondsHigh",
        "SysmosNotifyDeadLetters",
        "SysmosNotifyDeliveryFailureRatio",
        "SysmosNotifyInstanceDown",
        "SysmosNotifyNotReady",
    ] {
        assert!(names.contains(expected), "missing alert {expected}");
    }
}

/// `sysmos_notify_*` names in `text`, histogram suffixes removed.
fn queried(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"sysmos_notify_[a-z_]+").unwrap();
    re.find_iter(text)
        .map(|m| {
            let name = m.as_str();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("deploy/grafana/dashboards/sysmos-notify.json")).unwrap()
}

#[test]
fn rules_and_dashboard_query_only_exposed_documented_metrics() {
    let metrics = Metrics::new();
    let exposed: BTreeSet<String> = metrics.names().iter().cloned().collect();
    let rules = queried(&read("deploy/prometheus/alerts.yml"));
    let dashboard = dashboard();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    let panels = queried(&exprs.join("\n"));
    for name in rules.iter().chain(&panels) {
        assert!(exposed.contains(name), "{name} is queried but not exposed");
    }
    for needed in [
        "sysmos_notify_consumer_lag",
        "sysmos_notify_consumer_lag_seconds",
        "sysmos_notify_events_total",
        "sysmos_notify_deliveries_total",
        "sysmos_notify_delivery_duration_seconds",
        "sysmos_notify_retry_backlog",
        "sysmos_notify_config_accounts",
    ] {
        assert!(
            panels.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
    assert!(exprs.iter().any(|e| e.contains("histogram_quantile(0.99")));
    assert!(exprs.iter().any(|e| e.contains("histogram_quantile(0.5")));
    let readme = read("README.md");
    for name in &exposed {
        assert!(
            readme.contains(&format!("`{name}")),
            "the README's metrics table does not list {name}"
        );
    }
    // Importable: unique panel ids, every panel placed, the datasource a variable.
    let ids: BTreeSet<u64> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert!(p["gridPos"]["w"].as_u64().unwrap() > 0);
            assert_eq!(p["datasource"]["uid"], "${datasource}");
            p["id"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), dashboard["panels"].as_array().unwrap().len());
    assert_eq!(dashboard["templating"]["list"][0]["type"], "datasource");
}

/// Every document of every manifest, by (kind, name).
fn manifests() -> HashMap<(String, String), Yaml> {
    let mut all = HashMap::new();
    for entry in std::fs::read_dir(root().join("deploy/kubernetes")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let doc = Yaml::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
            if doc.is_null() {
                continue;
            }
            let kind = doc["kind"].as_str().unwrap().to_owned();
            let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
            all.insert((kind, name), doc);
        }
    }
    all
}

fn get<'a>(all: &'a HashMap<(String, String), Yaml>, kind: &str, name: &str) -> &'a Yaml {
    all.get(&(kind.to_owned(), name.to_owned()))
        .unwrap_or_else(|| panic!("no {kind} named {name} in deploy/kubernetes"))
}

fn selects(selector: &Yaml, labels: &Yaml) -> bool {
    selector
        .as_mapping()
        .unwrap()
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn kubernetes_manifests_reference_each_other() {
    let all = manifests();
    let deployment = get(&all, "Deployment", "sysmos-notify");
    let pod = &deployment["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        labels
    ));
    let container = &pod["spec"]["containers"][0];

    // The ConfigMap holds a configuration the service accepts.
    let volume = &pod["spec"]["volumes"][0];
    let map = get(
        &all,
        "ConfigMap",
        volume["configMap"]["name"].as_str().unwrap(),
    );
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(
        file.path(),
        map["data"]["sysmos-notify.toml"].as_str().unwrap(),
    )
    .unwrap();
    let settings = Config::load_with_env(Some(file.path()), std::iter::empty())
        .expect("the ConfigMap's configuration is valid");
    let mount = &container["volumeMounts"][0];
    assert_eq!(mount["name"], volume["name"]);
    assert!(container["args"].as_sequence().unwrap().iter().any(|a| a
        .as_str()
        .unwrap()
        .starts_with(mount["mountPath"].as_str().unwrap())));

    // Secrets come from the Secret the example shows, key by key.
    let secret = get(&all, "Secret", "sysmos-notify-secrets");
    for env in container["env"].as_sequence().unwrap() {
        if let Some(reference) = env["valueFrom"].get("secretKeyRef") {
            assert_eq!(reference["name"], secret["metadata"]["name"]);
            let key = reference["key"].as_str().unwrap();
            assert!(secret["stringData"].get(key).is_some(), "secret key {key}");
        }
    }

    // Probes on the service's endpoints; the grace period covers the drain deadline.
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let port = &container["ports"][0];
    assert_eq!(
        port["containerPort"].as_u64(),
        Some(u64::from(settings.http.listen.port()))
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], port["name"]);
    let drain = settings.delivery.timeout.as_secs() + 5;
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace > drain,
        "grace {grace}s must exceed the drain deadline {drain}s"
    );
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["requests"]["memory"].is_string());

    let service = get(&all, "Service", "sysmos-notify-metrics");
    assert!(selects(&service["spec"]["selector"], labels));
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port["name"]);
    let pdb = get(&all, "PodDisruptionBudget", "sysmos-notify");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));

    // KEDA scales this Deployment on the service's groups, never past the partitions.
    let scaled = get(&all, "ScaledObject", "sysmos-notify");
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    let max = scaled["spec"]["maxReplicaCount"].as_i64().unwrap();
    assert!(max <= i64::from(settings.kafka.partitions));
    let groups: BTreeSet<&str> = scaled["spec"]["triggers"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["type"], "kafka");
            let auth = t["authenticationRef"]["name"].as_str().unwrap();
            get(&all, "TriggerAuthentication", auth);
            t["metadata"]["consumerGroup"].as_str().unwrap()
        })
        .collect();
    let router_group = settings.kafka.group_id.clone();
    let deliverer_group = format!("{router_group}.deliveries");
    assert_eq!(
        groups,
        BTreeSet::from([router_group.as_str(), deliverer_group.as_str()])
    );

    // The topics are exactly the service's, with the settings they need.
    let topics = Topics::from_config(&settings);
    let declared: HashMap<String, &Yaml> = all
        .iter()
        .filter(|((kind, _), _)| kind == "KafkaTopic")
        .map(|(_, doc)| (doc["spec"]["topicName"].as_str().unwrap().to_owned(), doc))
        .collect();
    assert_eq!(
        declared.keys().cloned().collect::<BTreeSet<_>>(),
        owned_topics(&topics)
    );
    for compacted in [&topics.config, &topics.verifications, &topics.replayed] {
        assert_eq!(
            declared[compacted]["spec"]["config"]["cleanup.policy"],
            "compact"
        );
    }
    let dlq_retention = declared[&topics.dlq]["spec"]["config"]["retention.ms"]
        .as_u64()
        .unwrap();
    assert!(
        dlq_retention >= 7 * 24 * 3600 * 1000,
        "the DLQ is kept long"
    );
    let handled_retention = declared[&topics.handled]["spec"]["config"]["retention.ms"]
        .as_u64()
        .unwrap();
    assert!(
        handled_retention >= settings.delivery.dedup_window.as_millis() as u64,
        "P.handled is kept as long as it is remembered"
    );
}

fn owned_topics(topics: &Topics) -> BTreeSet<String> {
    let mut all: BTreeSet<String> = [
        &topics.config,
        &topics.deliveries,
        &topics.dlq,
        &topics.rejected,
        &topics.verifications,
        &topics.replayed,
        &topics.reports,
        &topics.handled,
    ]
    .into_iter()
    .cloned()
    .collect();
    all.extend(topics.retry.iter().cloned());
    all
}

#[test]
fn compose_mounts_existing_files_and_creates_every_topic() {
    let compose: Yaml = serde_yaml::from_str(&read("docker-compose.yml")).unwrap();
    let services = compose["services"].as_mapping().unwrap();
    for name in [
        "kafka",
        "topic-init",
        "sysmos-notify",
        "mailpit",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "compose has no {name}");
    }
    for (name, service) in services {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if let Some(relative) = source.strip_prefix("./") {
                assert!(
                    Path::new(&root().join(relative)).exists(),
                    "{name:?} mounts {source}, which does not exist"
                );
            }
        }
    }
    let init = services[&Yaml::from("topic-init")]["command"][0]
        .as_str()
        .unwrap();
    let created: BTreeSet<String> = init
        .lines()
        .filter_map(|l| l.trim().strip_prefix("t --topic "))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .filter(|t| t.starts_with("sysmos.notify."))
        .collect();
    let settings = Config::load_with_env(
        Some(&root().join("deploy/sysmos-notify.toml")),
        std::iter::empty(),
    )
    .unwrap();
    assert_eq!(created, owned_topics(&Topics::from_config(&settings)));
}
