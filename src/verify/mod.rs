//! Verification emails (CONTRACT §5): a recipient added with `verified: false` and a
//! `verification_url` gets exactly one email per (address, URL).
//!
//! What was sent is remembered in `P.verifications`, a compacted topic of this service keyed
//! by a hash of (address, URL), read from the beginning at every start like the config topic.
//! The [`consumer`] reads `P.config` in its own consumer group, so each settings record is
//! handled by one instance, and writes the marker before it stores the record's offset:
//! restarts and rebalances do not send the email again. The one window left is a crash
//! between the SMTP server accepting the email and the marker being acknowledged (a few
//! milliseconds); the email is then sent a second time, never zero times.

pub(crate) mod consumer;

use std::collections::HashSet;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::metrics::VerificationOutcome;
use crate::model::{AccountSettings, ChannelKind, Secret};

/// The value of a marker in `P.verifications`. The URL holds a token, so only its hash (the
/// key) is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    pub account_id: String,
    pub address: String,
    /// `sent`, `refused` (5xx: the address does not take mail) or `failed` (gave up on 4xx).
    pub outcome: String,
    pub at: DateTime<Utc>,
}

impl Marker {
    pub fn new(account_id: &str, address: &str, outcome: VerificationOutcome) -> Self {
        Self {
            account_id: account_id.to_owned(),
            address: address.to_owned(),
            outcome: outcome.as_str().to_owned(),
            at: Utc::now(),
        }
    }
}

/// The marker key of (address, URL): addresses compare case-insensitively.
pub fn marker_key(address: &str, url: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(address.trim().to_lowercase().as_bytes());
    hash.update(b"\n");
    hash.update(url.as_bytes());
    hex::encode(hash.finalize())
}

/// Recipients of the account's enabled email channels that are waiting for their
/// verification email, once each.
pub fn wanted(settings: &AccountSettings) -> Vec<(String, Secret)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for channel in settings.channels.iter().filter(|c| c.enabled) {
        let ChannelKind::Email { recipients } = &channel.kind else {
            continue;
        };
        for r in recipients.iter().filter(|r| !r.verified) {
            if let Some(url) = &r.verification_url {
                if seen.insert(marker_key(&r.address, url.expose())) {
                    out.push((r.address.clone(), url.clone()));
                }
            }
        }
    }
    out
}

/// The marker keys of `P.verifications`: the verification emails already handled.
#[derive(Default)]
pub struct Markers {
    keys: Mutex<HashSet<String>>,
}

impl Markers {
    /// Applies one record of `P.verifications` (a tombstone forgets the key).
    pub fn apply(&self, key: Option<&[u8]>, value: Option<&[u8]>) {
        let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
            return;
        };
        let mut keys = self.keys.lock().expect("verification lock");
        if value.is_none_or(<[u8]>::is_empty) {
            keys.remove(key);
        } else {
            keys.insert(key.to_owned());
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.keys.lock().expect("verification lock").contains(key)
    }

    pub fn insert(&self, key: String) {
        self.keys.lock().expect("verification lock").insert(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_email_per_address_and_url() {
        let settings = json!({"account_id":"a","version":1,"channels":[
            {"id":"e1","type":"email","recipients":[
                {"address":"ok@x.test","verified":true},
                {"address":"new@x.test","verified":false,"verification_url":"https://v/1"},
                {"address":"NEW@x.test","verified":false,"verification_url":"https://v/1"},
                {"address":"nourl@x.test","verified":false}]},
            {"id":"e2","type":"email","recipients":[
                {"address":"new@x.test","verified":false,"verification_url":"https://v/2"}]},
            {"id":"off","type":"email","enabled":false,"recipients":[
                {"address":"off@x.test","verified":false,"verification_url":"https://v/3"}]}]});
        let s = AccountSettings::decode(settings.to_string().as_bytes()).unwrap();
        let wanted: Vec<(String, String)> = wanted(&s)
            .into_iter()
            .map(|(a, u)| (a, u.expose().to_owned()))
            .collect();
        assert_eq!(
            wanted,
            [
                ("new@x.test".to_owned(), "https://v/1".to_owned()),
                ("new@x.test".to_owned(), "https://v/2".to_owned())
            ]
        );
        assert_ne!(marker_key("a@x", "u1"), marker_key("a@x", "u2"));
        let sent = Markers::default();
        let key = marker_key("a@x", "u1");
        sent.apply(Some(key.as_bytes()), Some(b"{}"));
        assert!(sent.contains(&key));
        sent.apply(Some(key.as_bytes()), None);
        assert!(!sent.contains(&key));
    }
}
