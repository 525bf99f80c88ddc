//! `dlq list` and `dlq replay`. A replay puts the delivery back on `P.deliveries` with a
//! fresh attempt count (email recipients already reached are remembered), then writes a
//! marker to the compacted `P.replayed`, keyed by the dead letter's identity; a dead letter
//! with a marker is not replayed again, so running a replay twice is safe. A delivery that
//! fails again is dead-lettered anew, as a new dead letter that can itself be replayed.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use rdkafka::Message;
use serde::{Deserialize, Serialize};

use super::Ops;
use crate::model::DeadLetter;
use crate::render::text::cut;

/// Which dead letters a command acts on.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub account: Option<String>,
    pub channel: Option<String>,
    pub since: Option<DateTime<Utc>>,
}

impl Filter {
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let d = &letter.delivery;
        self.account.as_ref().is_none_or(|a| *a == d.account_id)
            && self.channel.as_ref().is_none_or(|c| *c == d.channel_id)
            && self.since.is_none_or(|t| letter.dead_lettered_at >= t)
    }
}

/// The value of a `P.replayed` marker.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReplayMarker {
    pub delivery_id: String,
    pub replayed_at: DateTime<Utc>,
}

/// A dead letter's identity: the same delivery dead-lettered again is a new dead letter.
pub fn marker_key(letter: &DeadLetter) -> String {
    format!(
        "{}@{}",
        letter.delivery.delivery_id,
        letter.dead_lettered_at.to_rfc3339()
    )
}

/// What `P.dlq` holds, oldest first: readable dead letters and the reasons of unreadable ones.
struct Contents {
    letters: Vec<DeadLetter>,
    unreadable: Vec<String>,
}

fn contents(ops: &Ops) -> anyhow::Result<Contents> {
    let mut letters = Vec::new();
    let mut unreadable = Vec::new();
    for message in ops.read(&ops.topics.dlq)? {
        match message.payload().map(serde_json::from_slice::<DeadLetter>) {
            Some(Ok(letter)) => letters.push(letter),
            // A delivery record that could not be read was quarantined as it was.
            _ => unreadable.push(format!(
                "partition {} offset {}: {}",
                message.partition(),
                message.offset(),
                header(&message, "reason").unwrap_or_else(|| "unreadable record".into())
            )),
        }
    }
    Ok(Contents {
        letters,
        unreadable,
    })
}

fn header(message: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
}

fn replayed(ops: &Ops) -> anyhow::Result<HashSet<String>> {
    Ok(ops
        .read(&ops.topics.replayed)?
        .iter()
        .filter(|m| m.payload().is_some_and(|p| !p.is_empty()))
        .filter_map(|m| m.key().map(|k| String::from_utf8_lossy(k).into_owned()))
        .collect())
}

/// Prints the matching dead letters as a table.
pub fn list(ops: &Ops, filter: &Filter) -> anyhow::Result<()> {
    let contents = contents(ops)?;
    let replayed = replayed(ops)?;
    let shown: Vec<&DeadLetter> = contents
        .letters
        .iter()
        .filter(|l| filter.matches(l))
        .collect();
    println!(
        "{:<20}  {:<16}  {:<16}  {:<9}  {:<20}  {:>8}  {:<8}  REASON",
        "DEAD-LETTERED (UTC)", "ACCOUNT", "CHANNEL", "TYPE", "EVENT", "ATTEMPTS", "REPLAYED"
    );
    for letter in &shown {
        let d = &letter.delivery;
        println!(
            "{:<20}  {:<16}  {:<16}  {:<9}  {:<20}  {:>8}  {:<8}  {}",
            letter.dead_lettered_at.format("%Y-%m-%d %H:%M:%S"),
            cut(&d.account_id, 16),
            cut(&d.channel_id, 16),
            d.channel_type,
            cut(&d.event_type, 20),
            d.attempts.len(),
            if replayed.contains(&marker_key(letter)) {
                "yes"
            } else {
                "no"
            },
            cut(&letter.reason, 100)
        );
    }
    println!(
        "\n{} of {} dead letters shown; {} already replayed in all",
        shown.len(),
        contents.letters.len(),
        replayed.len()
    );
    for reason in &contents.unreadable {
        println!(
            "unreadable record ({reason}): it cannot be replayed; inspect it with a Kafka client"
        );
    }
    Ok(())
}

/// Replays the matching dead letters not replayed before; prints each one.
pub async fn replay(ops: &Ops, filter: &Filter, dry_run: bool) -> anyhow::Result<()> {
    let contents = contents(ops)?;
    let replayed = replayed(ops)?;
    let matching: Vec<&DeadLetter> = contents
        .letters
        .iter()
        .filter(|l| filter.matches(l))
        .collect();
    let todo: Vec<&DeadLetter> = matching
        .iter()
        .copied()
        .filter(|l| !replayed.contains(&marker_key(l)))
        .collect();
    let verb = if dry_run { "would replay" } else { "replaying" };
    println!(
        "{} dead letters match; {} replayed before; {verb} {}",
        matching.len(),
        matching.len() - todo.len(),
        todo.len()
    );
    for (i, letter) in todo.iter().enumerate() {
        let d = &letter.delivery;
        let line = format!(
            "[{}/{}] {} {}:{} {} ({})",
            i + 1,
            todo.len(),
            d.delivery_id,
            d.account_id,
            d.channel_id,
            d.event_type,
            cut(&letter.reason, 80)
        );
        if dry_run {
            println!("{line}  (dry run)");
            continue;
        }
        let fresh = d.replayed();
        let payload = serde_json::to_vec(&fresh).expect("delivery records serialize");
        ops.produce(&ops.topics.deliveries, &fresh.key(), &payload)
            .await?;
        let marker = ReplayMarker {
            delivery_id: d.delivery_id.clone(),
            replayed_at: Utc::now(),
        };
        let marker = serde_json::to_vec(&marker).expect("markers serialize");
        ops.produce(&ops.topics.replayed, &marker_key(letter), &marker)
            .await?;
        println!("{line}  replayed");
    }
    if !contents.unreadable.is_empty() {
        println!(
            "{} unreadable record(s) skipped (see `dlq list`)",
            contents.unreadable.len()
        );
    }
    Ok(())
}
