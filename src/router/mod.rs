//! The router: validates each event and fans it out to one delivery per channel that
//! accepts it. `decide` is the pure decision; `consumer` is the loop around it.

pub mod consumer;

use chrono::{DateTime, Utc};

use crate::model::event::Rejected;
use crate::model::{DeliveryRecord, Event};
use crate::settings_cache::SettingsCache;

/// What becomes of one event.
#[derive(Debug)]
pub enum Decision {
    /// Not an acceptable event: its raw bytes go to `P.rejected` with this reason.
    Reject(Rejected),
    /// Valid, but nobody wants it: counted, nothing written.
    NoRoute(&'static str),
    /// One delivery per accepting channel, for `P.deliveries`.
    Deliver(Vec<DeliveryRecord>),
}

pub fn decide(payload: Option<&[u8]>, cache: &SettingsCache, now: DateTime<Utc>) -> Decision {
    let event = match Event::decode(payload) {
        Ok(event) => event,
        Err(reason) => return Decision::Reject(reason),
    };
    let Some(settings) = cache.get(event.account_id()) else {
        return Decision::NoRoute("account has no notification settings");
    };
    let deliveries: Vec<DeliveryRecord> = settings
        .channels
        .iter()
        .filter(|channel| channel.accepts(&event))
        .map(|channel| DeliveryRecord::new(&event, channel, now))
        .collect();
    if deliveries.is_empty() {
        return Decision::NoRoute("no channel accepts the event");
    }
    Decision::Deliver(deliveries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use serde_json::json;
    use std::sync::Arc;

    fn cache() -> SettingsCache {
        let cache = SettingsCache::new(Arc::new(Metrics::new()));
        let settings = json!({"account_id":"acc_42","version":1,"channels":[
            {"id":"all","type":"webhook","url":"http://a"},
            {"id":"servers","type":"webhook","url":"http://b","events":["server.*"]},
            {"id":"critical","type":"webhook","url":"http://c","min_severity":"critical"},
            {"id":"off","type":"webhook","url":"http://d","enabled":false}]});
        cache.apply(Some(b"acc_42"), Some(settings.to_string().as_bytes()));
        cache
    }

    fn event(kind: &str, account: &str) -> Vec<u8> {
        let product = kind.split('.').next().unwrap();
        json!({"event":kind,"event_id":"evt_1","account_id":account,"occurred_at":"2025-01-15T10:30:00Z",
               product:{"id":"r1","name":"R"},"alert":{}})
        .to_string()
        .into_bytes()
    }

    fn channels(d: Decision) -> Vec<String> {
        match d {
            Decision::Deliver(records) => records.into_iter().map(|r| r.channel_id).collect(),
            other => panic!("expected deliveries, got {other:?}"),
        }
    }

    #[test]
    fn fans_out_to_accepting_channels() {
        let cache = cache();
        let now = Utc::now();
        assert_eq!(
            channels(decide(Some(&event("monitor.down", "acc_42")), &cache, now)),
            ["all", "critical"]
        );
        assert_eq!(
            channels(decide(
                Some(&event("monitor.degraded", "acc_42")),
                &cache,
                now
            )),
            ["all"]
        );
        assert_eq!(
            channels(decide(
                Some(&event("server.offline", "acc_42")),
                &cache,
                now
            )),
            ["all", "servers", "critical"]
        );
        assert!(matches!(
            decide(Some(&event("monitor.down", "acc_x")), &cache, now),
            Decision::NoRoute(_)
        ));
        assert_eq!(
            channels(decide(
                Some(&event("monitor.recovered", "acc_42")),
                &cache,
                now
            )),
            ["all", "critical"],
            "a recovery follows its problem: min_severity does not hold it back"
        );
        assert!(matches!(
            decide(Some(b"{}"), &cache, now),
            Decision::Reject(_)
        ));
    }
}
