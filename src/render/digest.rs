//! A digest (CONTRACT §5a): the alerts that waited for one channel's bucket, taken together
//! into one message. Alerts are listed oldest first, and a problem and its recovery in the
//! same digest make one line with both times. Channel-independent, like [`Alert`].

use chrono::{DateTime, Utc};

use super::Alert;
use crate::model::incident_key;

/// One line of a digest: an alert, or a problem together with the recovery that ended it.
#[derive(Debug, Clone)]
pub struct Line<'a> {
    pub alert: Alert<'a>,
    /// When the problem ended, if its recovery is in the same digest.
    pub recovered: Option<DateTime<Utc>>,
}

impl Line<'_> {
    /// `DOWN`, or `DOWN → RECOVERED` for a problem that recovered within the digest.
    pub fn status(&self) -> String {
        match self.recovered {
            Some(_) => format!("{} → RECOVERED", self.alert.tag),
            None => self.alert.tag.clone(),
        }
    }

    /// `2025-01-15 10:30:00 UTC`, or `10:30:00 → 10:42:30 UTC` with the recovery's time.
    pub fn when(&self) -> String {
        match self.recovered {
            Some(at) => format!(
                "{} → {}",
                self.alert.when(),
                at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            None => self.alert.when(),
        }
    }

    /// Over: a recovery, or a problem that recovered within the digest.
    pub fn over(&self) -> bool {
        self.alert.recovery || self.recovered.is_some()
    }
}

/// The alerts of one digest, as lines, with what the header counts.
#[derive(Debug, Clone)]
pub struct Digest<'a> {
    pub lines: Vec<Line<'a>>,
    /// Every event the digest covers, oldest first: a paired recovery's too.
    pub event_ids: Vec<&'a str>,
    pub problems: usize,
    pub recoveries: usize,
}

impl<'a> Digest<'a> {
    pub fn new(mut alerts: Vec<Alert<'a>>) -> Self {
        alerts.sort_by_key(|a| a.at); // stable: alerts of one instant keep their order
        let event_ids = alerts.iter().map(|a| a.event.event_id()).collect();
        let problems = alerts.iter().filter(|a| !a.recovery).count();
        let recoveries = alerts.len() - problems;
        let mut lines: Vec<Line<'a>> = Vec::with_capacity(alerts.len());
        for alert in alerts {
            let key = alert.recovery.then(|| incident_key(alert.event));
            let open_problem = key.and_then(|key| {
                lines.iter_mut().rev().find(|line| {
                    !line.alert.recovery
                        && line.recovered.is_none()
                        && incident_key(line.alert.event) == key
                })
            });
            match open_problem {
                Some(line) => line.recovered = Some(alert.at),
                None => lines.push(Line {
                    alert,
                    recovered: None,
                }),
            }
        }
        Self {
            lines,
            event_ids,
            problems,
            recoveries,
        }
    }

    /// The alerts it covers.
    pub fn count(&self) -> usize {
        self.event_ids.len()
    }

    /// `12 alerts: 9 problems, 3 recoveries`.
    pub fn headline(&self) -> String {
        let plural = |n: usize, word: &str| match (n, word.strip_suffix('y')) {
            (1, _) => format!("1 {word}"),
            (_, Some(stem)) => format!("{n} {stem}ies"),
            (_, None) => format!("{n} {word}s"),
        };
        let mut parts = Vec::new();
        if self.problems > 0 {
            parts.push(plural(self.problems, "problem"));
        }
        if self.recoveries > 0 {
            parts.push(plural(self.recoveries, "recovery"));
        }
        format!("{}: {}", plural(self.count(), "alert"), parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Event;
    use serde_json::json;

    fn event(kind: &str, id: &str, monitor: &str, at: &str) -> Event {
        let v = json!({"event": kind, "event_id": id, "account_id": "acc", "occurred_at": at,
            "monitor": {"id": monitor, "name": format!("API {monitor}")},
            "alert": {"status": if kind == "monitor.recovered" { "up" } else { "down" }}});
        Event::decode(Some(v.to_string().as_bytes())).unwrap()
    }

    #[test]
    fn oldest_first_and_a_recovered_problem_is_one_line() {
        let events = [
            event("monitor.down", "e2", "m2", "2025-01-15T10:31:00Z"),
            event("monitor.down", "e1", "m1", "2025-01-15T10:30:00Z"),
            event("monitor.recovered", "e3", "m1", "2025-01-15T10:42:30Z"),
            event("monitor.recovered", "e4", "m9", "2025-01-15T10:43:00Z"),
        ];
        let alerts = events.iter().map(|e| Alert::new(e, "https://d")).collect();
        let digest = Digest::new(alerts);
        assert_eq!(digest.event_ids, ["e1", "e2", "e3", "e4"]);
        let lines: Vec<(String, String)> = digest
            .lines
            .iter()
            .map(|l| (l.alert.name.clone(), l.status()))
            .collect();
        assert_eq!(
            lines,
            [
                ("API m1".into(), "DOWN → RECOVERED".into()),
                ("API m2".into(), "DOWN".into()),
                ("API m9".into(), "RECOVERED".into()),
            ]
        );
        assert_eq!(
            digest.lines[0].when(),
            "2025-01-15 10:30:00 UTC → 2025-01-15 10:42:30 UTC"
        );
        assert_eq!(digest.headline(), "4 alerts: 2 problems, 2 recoveries");
        assert!(digest.lines[0].over() && !digest.lines[1].over());
    }
}
