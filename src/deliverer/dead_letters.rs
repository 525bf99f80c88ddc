//! A flood of dead letters stays readable: the first few per channel and minute are logged
//! one line each (WARN); the rest are counted, and once their minute is over one summary line
//! per channel gives the counts by reason. `sysmos_notify_deliveries_total` still counts each.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::retry::Reason;

/// Dead letters logged one line each per channel and minute.
pub const FIRST_PER_MINUTE: u32 = 5;
const MINUTE: Duration = Duration::from_secs(60);

/// Each channel's dead letters in the current minute.
#[derive(Default)]
pub struct DeadLetters {
    minutes: Mutex<HashMap<(String, String), Minute>>,
}

struct Minute {
    started: Instant,
    logged: u32,
    /// Not logged, by reason.
    quiet: BTreeMap<&'static str, u64>,
}

/// The dead letters of one channel not logged in one minute, by reason.
#[derive(Debug, PartialEq)]
pub struct Summary {
    pub account: String,
    pub channel: String,
    pub counts: BTreeMap<&'static str, u64>,
}

impl DeadLetters {
    /// Counts a dead letter of `account`'s `channel`; true when it should be logged in full.
    pub fn note(&self, account: &str, channel: &str, reason: &Reason, now: Instant) -> bool {
        let mut minutes = self.minutes.lock().expect("dead letters lock");
        let minute = minutes
            .entry((account.to_owned(), channel.to_owned()))
            .or_insert_with(|| Minute {
                started: now,
                logged: 0,
                quiet: BTreeMap::new(),
            });
        if minute.logged < FIRST_PER_MINUTE {
            minute.logged += 1;
            return true;
        }
        *minute.quiet.entry(reason.label()).or_default() += 1;
        false
    }

    /// Ends every minute that is over: the summaries of those with dead letters not logged.
    pub fn ended(&self, now: Instant) -> Vec<Summary> {
        let mut minutes = self.minutes.lock().expect("dead letters lock");
        let mut summaries = Vec::new();
        minutes.retain(|(account, channel), minute| {
            if now.saturating_duration_since(minute.started) < MINUTE {
                return true;
            }
            if !minute.quiet.is_empty() {
                summaries.push(Summary {
                    account: account.clone(),
                    channel: channel.clone(),
                    counts: std::mem::take(&mut minute.quiet),
                });
            }
            false
        });
        summaries.sort_by(|a, b| (&a.account, &a.channel).cmp(&(&b.account, &b.channel)));
        summaries
    }

    /// Logs the summaries of the minutes that are over (called every few seconds).
    pub fn log_ended(&self, now: Instant) {
        for Summary {
            account,
            channel,
            counts,
        } in self.ended(now)
        {
            let total: u64 = counts.values().sum();
            let by_reason = counts
                .iter()
                .map(|(reason, n)| format!("{reason}: {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            tracing::warn!(account = %account, channel = %channel, more = total, %by_reason,
                "more deliveries dead-lettered in the last minute than are logged one by one; see P.dlq");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> Reason {
        Reason::Failed {
            attempts: 4,
            last_error: "HTTP 500".into(),
        }
    }

    #[test]
    fn the_first_few_per_channel_and_minute_are_logged_then_summed_up() {
        let letters = DeadLetters::default();
        let t0 = Instant::now();
        let logged = (0..1000)
            .filter(|_| letters.note("acc", "hook", &failed(), t0))
            .count();
        assert_eq!(logged, FIRST_PER_MINUTE as usize);
        let permanent = Reason::Permanent {
            error: "HTTP 410".into(),
        };
        assert!(!letters.note("acc", "hook", &permanent, t0));
        assert!(
            letters.note("acc", "other", &failed(), t0),
            "another channel has its own few"
        );
        assert_eq!(
            letters.ended(t0 + Duration::from_secs(30)),
            [],
            "the minute is not over"
        );
        let summaries = letters.ended(t0 + MINUTE);
        assert_eq!(
            summaries,
            [Summary {
                account: "acc".into(),
                channel: "hook".into(),
                counts: BTreeMap::from([("failed", 995), ("permanent", 1)]),
            }],
            "one summary, for the channel that had more than a few"
        );
        assert!(
            letters.note("acc", "hook", &failed(), t0 + MINUTE),
            "a new minute logs its first few again"
        );
        assert_eq!(letters.ended(t0 + MINUTE * 3), []);
    }
}
