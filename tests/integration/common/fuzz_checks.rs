//! The properties each fuzz target checks, on any bytes. The targets in `fuzz/` call these,
//! and `tests/integration/fuzz.rs` runs them over every input kept in `fuzz/regressions/`,
//! so whatever fuzzing once found stays fixed.

use sysmos_notify::model::{AccountSettings, Event};

/// Any bytes either decode to an event whose accessors all answer, or are rejected with a
/// reason; a decoded event reads back the same from the JSON a delivery record carries.
pub fn event_decode(data: &[u8]) {
    let Ok(event) = Event::decode(Some(data)) else {
        return;
    };
    let _ = (event.kind(), event.event_id(), event.account_id());
    let _ = (event.resource_id(), event.severity(), event.occurred_at());
    let _ = sysmos_notify::model::incident_key(&event);
    assert!(serde_json::to_value(event.webhook_body())
        .unwrap()
        .get("event")
        .is_some());
    let text = serde_json::to_vec(&event).expect("an event serializes");
    let again = Event::decode(Some(&text)).expect("a decoded event decodes again");
    assert_eq!(again, event);
}

const EVENT: &[u8] = br#"{"event":"monitor.down","event_id":"e","account_id":"a","occurred_at":"2025-01-15T10:30:00Z","monitor":{"id":"m","name":"n"},"alert":{}}"#;

/// Any bytes either decode to settings whose channels answer what they accept and where
/// they send, or are refused with a reason.
pub fn settings_decode(data: &[u8]) {
    let Ok(settings) = AccountSettings::decode(data) else {
        return;
    };
    let event = Event::decode(Some(EVENT)).expect("a valid event");
    for channel in &settings.channels {
        let _ = (channel.accepts(&event), channel.deliverable());
        let _ = sysmos_notify::destination(&channel.kind);
    }
    let _ = sysmos_notify::verify::wanted(&settings);
}

/// Every renderer on any event that decodes: the provider limits and markup checks.
pub fn render(data: &[u8]) {
    let Ok(event) = Event::decode(Some(data)) else {
        return;
    };
    super::limits::assert_renderings_hold("fuzzed event", &event, "https://app.sysmos.io");
}
