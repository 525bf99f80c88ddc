//! Writes `P.handled` in batches. Every handled record waits until the broker has taken it,
//! as before; the records that arrive while the writes in flight are unanswered go together
//! in the next one (group commit). A quiet service writes each record at once; a storm costs
//! the broker one record per batch instead of one per delivery, and every instance's
//! follower reads that many fewer.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::{Handled, Ledger};
use crate::kafka::producer::{OutRecord, Output};

/// Writes of `P.handled` unanswered at once: while they are, records queue for the next.
const WRITES_IN_FLIGHT: usize = 4;
/// At most this much JSON in one `P.handled` record (brokers take 1 MB by default).
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// One handled record waiting to be written, and who waits for it.
struct Waiting {
    handled: Handled,
    json: Vec<u8>,
    written: oneshot::Sender<bool>,
}

/// The writer of `P.handled`, shared by every delivery of this process.
pub struct Journal {
    queue: mpsc::UnboundedSender<Waiting>,
}

impl Journal {
    /// Starts writing to `topic`, remembering in `ledger` what the broker has taken. The
    /// writer ends when the journal is dropped and what was queued is written.
    pub fn start(topic: String, output: Arc<Output>, ledger: Arc<Ledger>) -> Self {
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(run(
            queued,
            Sink {
                topic,
                output,
                ledger,
            },
        ));
        Self { queue }
    }

    /// Writes `handled` and remembers it; `false` when stopping kept the broker from taking it.
    pub async fn record(&self, handled: Handled) -> bool {
        let json = serde_json::to_vec(&handled).expect("handled records serialize");
        let (written, answer) = oneshot::channel();
        let waiting = Waiting {
            handled,
            json,
            written,
        };
        if self.queue.send(waiting).is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

/// Where a batch goes, and the ledger that learns what was written.
struct Sink {
    topic: String,
    output: Arc<Output>,
    ledger: Arc<Ledger>,
}

async fn run(mut queued: mpsc::UnboundedReceiver<Waiting>, to: Sink) {
    let to = Arc::new(to);
    let writes = Arc::new(Semaphore::new(WRITES_IN_FLIGHT));
    let mut carried = None;
    loop {
        let next = match carried.take() {
            Some(first) => Some(first),
            None => queued.recv().await,
        };
        let Some(first) = next else { break };
        // Waiting for a free write is what lets a batch fill.
        let permit = writes.clone().acquire_owned().await.expect("never closed");
        let mut bytes = first.json.len();
        let mut batch = vec![first];
        while let Ok(next) = queued.try_recv() {
            if bytes + next.json.len() > MAX_BATCH_BYTES {
                carried = Some(next);
                break;
            }
            bytes += next.json.len() + 1;
            batch.push(next);
        }
        tokio::spawn(write(batch, to.clone(), permit));
    }
}

async fn write(batch: Vec<Waiting>, to: Arc<Sink>, _permit: OwnedSemaphorePermit) {
    let key = batch[0].handled.delivery_id.clone();
    let payload = batch_json(batch.iter().map(|w| w.json.as_slice()));
    let written = to
        .output
        .write(vec![OutRecord::new(&to.topic, key, payload)])
        .await
        .is_ok();
    let now = chrono::Utc::now();
    for waiting in batch {
        if written {
            to.ledger.apply(&waiting.handled, now);
        }
        let _ = waiting.written.send(written);
    }
}

/// `{"handled":[…]}` from records already serialized.
fn batch_json<'a>(records: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut json = b"{\"handled\":[".to_vec();
    for (i, record) in records.enumerate() {
        if i > 0 {
            json.push(b',');
        }
        json.extend_from_slice(record);
    }
    json.extend_from_slice(b"]}");
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_a_list_of_records() {
        let json = batch_json([&b"{\"a\":1}"[..], b"{\"b\":2}"].into_iter());
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value, serde_json::json!({"handled": [{"a": 1}, {"b": 2}]}));
        let empty: serde_json::Value =
            serde_json::from_slice(&batch_json(std::iter::empty())).unwrap();
        assert_eq!(empty, serde_json::json!({"handled": []}));
    }
}
