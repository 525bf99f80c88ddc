//! Every example in `schemas/` validates against its schema (JSON Schema 2020-12, formats
//! checked) and parses into the service's own types, so the documents and the code agree.

use std::path::Path;

use serde_json::Value;
use sysmos_notify::model::{AccountSettings, DeadLetter, DeliveryRecord, Event};

const SCHEMAS: [&str; 8] = [
    "event.schema.json",
    "account-settings.schema.json",
    "delivery.schema.json",
    "dead-letter.schema.json",
    "webhook-body.schema.json",
    "verification-marker.schema.json",
    "attempt-report.schema.json",
    "handled.schema.json",
];

fn load(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub fn validator(name: &str) -> jsonschema::Validator {
    let mut options = jsonschema::options().should_validate_formats(true);
    for other in SCHEMAS {
        let schema = load(other);
        let id = schema["$id"].as_str().unwrap().to_owned();
        options = options.with_resource(id, jsonschema::Resource::from_contents(schema).unwrap());
    }
    options
        .build(&load(name))
        .unwrap_or_else(|e| panic!("{name} does not compile: {e}"))
}

fn examples(name: &str) -> Vec<Value> {
    let examples = load(name)["examples"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!examples.is_empty(), "{name} has examples");
    examples
}

fn assert_valid(validator: &jsonschema::Validator, name: &str, instance: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:?}\n{instance}");
}

#[test]
fn event_examples_validate_parse_and_give_valid_webhook_bodies() {
    let (events, bodies) = (
        validator("event.schema.json"),
        validator("webhook-body.schema.json"),
    );
    for example in examples("event.schema.json") {
        assert_valid(&events, "event", &example);
        let event = Event::decode(Some(example.to_string().as_bytes()))
            .unwrap_or_else(|e| panic!("{e}: {example}"));
        assert_valid(
            &bodies,
            "webhook body of an event",
            &serde_json::to_value(event.webhook_body()).unwrap(),
        );
    }
    // The schema and the decoder refuse the same thing.
    let missing = serde_json::json!({"event": "monitor.down", "event_id": "e", "account_id": "a",
        "occurred_at": "2025-01-15T10:30:00Z", "alert": {}});
    assert!(!events.is_valid(&missing));
    assert!(Event::decode(Some(missing.to_string().as_bytes())).is_err());
}

#[test]
fn settings_examples_validate_and_parse() {
    let v = validator("account-settings.schema.json");
    for example in examples("account-settings.schema.json") {
        assert_valid(&v, "settings", &example);
        let settings = AccountSettings::decode(example.to_string().as_bytes()).unwrap();
        assert!(settings.skipped.is_empty(), "{:?}", settings.skipped);
        assert_eq!(
            settings.channels.len(),
            example["channels"].as_array().unwrap().len()
        );
    }
}

/// Every example of `schema` validates, reads into `T` and writes back the same.
fn examples_round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
    schema: &str,
    what: &str,
) {
    let v = validator(schema);
    for example in examples(schema) {
        assert_valid(&v, what, &example);
        let read: T = serde_json::from_value(example.clone()).unwrap();
        assert_eq!(serde_json::to_value(&read).unwrap(), example, "round trip");
    }
}

#[test]
fn delivery_and_dead_letter_examples_validate_and_round_trip() {
    examples_round_trip::<DeliveryRecord>("delivery.schema.json", "delivery");
    examples_round_trip::<DeadLetter>("dead-letter.schema.json", "dead letter");
}

#[test]
fn webhook_body_examples_validate() {
    let v = validator("webhook-body.schema.json");
    for example in examples("webhook-body.schema.json") {
        assert_valid(&v, "webhook body", &example);
    }
}

#[test]
fn verification_marker_examples_validate_and_round_trip() {
    examples_round_trip::<sysmos_notify::verify::Marker>(
        "verification-marker.schema.json",
        "verification marker",
    );
}

#[test]
fn attempt_report_examples_validate_and_round_trip() {
    examples_round_trip::<sysmos_notify::model::AttemptReport>(
        "attempt-report.schema.json",
        "attempt report",
    );
}

#[test]
fn handled_examples_validate_and_round_trip() {
    examples_round_trip::<sysmos_notify::ledger::HandledBatch>(
        "handled.schema.json",
        "handled records",
    );
}
