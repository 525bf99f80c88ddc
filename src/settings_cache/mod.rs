//! The in-memory cache of account settings, fed in order from the compacted config topic:
//! a higher `version` replaces, a lower one is ignored, a tombstone removes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rdkafka::message::BorrowedMessage;
use rdkafka::Message;

use crate::metrics::{ConfigOutcome, Metrics};
use crate::model::{AccountSettings, Channel};

pub struct SettingsCache {
    accounts: RwLock<HashMap<String, Arc<AccountSettings>>>,
    metrics: Arc<Metrics>,
}

/// What one config record did to the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Updated {
        skipped: Vec<String>,
    },
    /// Older than the cached version: ignored.
    Stale {
        cached: u64,
        received: u64,
    },
    Removed,
    Invalid(String),
}

impl SettingsCache {
    /// Applies one record of the config topic and logs what it did (never a secret).
    pub fn apply_logged(&self, message: &BorrowedMessage<'_>) {
        let key = message
            .key()
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
            .into_owned();
        match self.apply(message.key(), message.payload()) {
            Applied::Updated { skipped } => {
                tracing::debug!(account = %key, "settings updated");
                for reason in skipped {
                    tracing::warn!(account = %key, "channel skipped: {reason}");
                }
            }
            Applied::Stale { cached, received } => {
                tracing::info!(account = %key, cached, received, "older settings version ignored")
            }
            Applied::Removed => tracing::info!(account = %key, "settings removed (tombstone)"),
            Applied::Invalid(reason) => tracing::error!(
                account = %key, offset = message.offset(), partition = message.partition(),
                "config record ignored: {reason}"
            ),
        }
    }

    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            accounts: RwLock::default(),
            metrics,
        }
    }

    /// Applies one record of the config topic (`value` `None` or empty = tombstone).
    pub fn apply(&self, key: Option<&[u8]>, value: Option<&[u8]>) -> Applied {
        let applied = self.apply_inner(key, value);
        self.metrics.config_record(match applied {
            Applied::Updated { .. } => ConfigOutcome::Applied,
            Applied::Stale { .. } => ConfigOutcome::Stale,
            Applied::Removed => ConfigOutcome::Removed,
            Applied::Invalid(_) => ConfigOutcome::Invalid,
        });
        self.metrics.accounts(self.len());
        applied
    }

    fn apply_inner(&self, key: Option<&[u8]>, value: Option<&[u8]>) -> Applied {
        let Some(account) = key
            .and_then(|k| std::str::from_utf8(k).ok())
            .filter(|k| !k.is_empty())
        else {
            return Applied::Invalid("record has no account id key".into());
        };
        let mut accounts = self.accounts.write().expect("settings lock");
        let value = value.unwrap_or_default();
        if value.is_empty() {
            accounts.remove(account);
            return Applied::Removed;
        }
        let settings = match AccountSettings::decode(value) {
            Ok(s) => s,
            Err(e) => return Applied::Invalid(format!("settings of {account} not readable: {e}")),
        };
        if settings.account_id != account {
            return Applied::Invalid(format!(
                "record keyed {account} holds settings of {}; key and account_id must match",
                settings.account_id
            ));
        }
        if let Some(cached) = accounts.get(account) {
            if settings.version < cached.version {
                return Applied::Stale {
                    cached: cached.version,
                    received: settings.version,
                };
            }
        }
        let skipped = settings.skipped.clone();
        accounts.insert(account.to_owned(), Arc::new(settings));
        Applied::Updated { skipped }
    }

    pub fn get(&self, account: &str) -> Option<Arc<AccountSettings>> {
        self.accounts
            .read()
            .expect("settings lock")
            .get(account)
            .cloned()
    }

    /// The channel as configured now (settings are read at send time, so a corrected URL
    /// applies to pending retries).
    pub fn channel(&self, account: &str, channel: &str) -> Option<Channel> {
        self.get(account)?.channel(channel).cloned()
    }

    pub fn len(&self) -> usize {
        self.accounts.read().expect("settings lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(version: u64, url: &str) -> Vec<u8> {
        json!({"account_id":"acc","version":version,"channels":[{"id":"h","type":"webhook","url":url}]})
            .to_string()
            .into_bytes()
    }

    fn url(cache: &SettingsCache) -> String {
        match cache.channel("acc", "h").unwrap().kind {
            crate::model::ChannelKind::Webhook { url, .. } => url.expose().to_owned(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn versions_only_grow_and_tombstones_remove() {
        let cache = SettingsCache::new(Arc::new(Metrics::new()));
        assert!(matches!(
            cache.apply(Some(b"acc"), Some(&record(5, "http://a"))),
            Applied::Updated { .. }
        ));
        assert_eq!(
            cache.apply(Some(b"acc"), Some(&record(4, "http://old"))),
            Applied::Stale {
                cached: 5,
                received: 4
            }
        );
        assert_eq!(url(&cache), "http://a");
        assert!(matches!(
            cache.apply(Some(b"acc"), Some(&record(6, "http://b"))),
            Applied::Updated { .. }
        ));
        assert_eq!(url(&cache), "http://b");
        assert_eq!(cache.apply(Some(b"acc"), None), Applied::Removed);
        assert!(cache.get("acc").is_none());
        assert!(matches!(
            cache.apply(Some(b"acc"), Some(&record(1, "http://c"))),
            Applied::Updated { .. }
        ));
        assert_eq!(cache.apply(Some(b"acc"), Some(b"")), Applied::Removed);
        assert!(matches!(
            cache.apply(Some(b"acc"), Some(b"{nope")),
            Applied::Invalid(_)
        ));
        assert!(matches!(
            cache.apply(None, Some(&record(1, "x"))),
            Applied::Invalid(_)
        ));
        assert!(matches!(
            cache.apply(Some(b"other"), Some(&record(9, "x"))),
            Applied::Invalid(_)
        ));
        assert!(cache.is_empty());
    }
}
