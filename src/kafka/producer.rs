//! The durable producer: a record counts as written only when the broker acknowledged it,
//! and a failed write is retried until it is (or the service is stopping), because offsets
//! are stored only after every output of a message is durable.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

/// A record to write, owned so that it can be re-sent after a failure.
#[derive(Debug, Clone)]
pub struct OutRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(&'static str, String)>,
}

impl OutRecord {
    pub fn new(topic: &str, key: impl Into<Vec<u8>>, payload: Vec<u8>) -> Self {
        Self {
            topic: topic.to_owned(),
            key: Some(key.into()),
            payload: Some(payload),
            headers: Vec::new(),
        }
    }

    fn future_record(&self) -> FutureRecord<'_, [u8], [u8]> {
        let mut record = FutureRecord::to(&self.topic);
        if let Some(key) = &self.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &self.payload {
            record = record.payload(payload.as_slice());
        }
        if !self.headers.is_empty() {
            let headers = self
                .headers
                .iter()
                .fold(OwnedHeaders::new(), |h, (key, value)| {
                    h.insert(Header {
                        key,
                        value: Some(value.as_bytes()),
                    })
                });
            record = record.headers(headers);
        }
        record
    }
}

/// The service was told to stop before a record could be written; its input is not finished.
#[derive(Debug, thiserror::Error)]
#[error("stopping before the record was acknowledged")]
pub struct Stopped;

pub struct Output {
    producer: FutureProducer,
    shutdown: CancellationToken,
}

/// Records enqueued in order, waiting for their acknowledgements.
pub struct Pending {
    entries: Vec<(OutRecord, DeliveryFuture)>,
}

impl Output {
    pub fn new(producer: FutureProducer, shutdown: CancellationToken) -> Self {
        Self { producer, shutdown }
    }

    /// Enqueues records now, in order (records for one partition keep their order); waits
    /// only while librdkafka's queue is full.
    pub async fn enqueue(&self, records: Vec<OutRecord>) -> Pending {
        let mut entries = Vec::with_capacity(records.len());
        for record in records {
            let future = loop {
                match self.producer.send_result(record.future_record()) {
                    Ok(future) => break future,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                    Err((error, _)) => {
                        tracing::warn!(topic = %record.topic, %error, "cannot enqueue record; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                }
            };
            entries.push((record, future));
        }
        Pending { entries }
    }

    /// Waits until every record of `pending` is acknowledged, re-sending failed ones.
    pub async fn confirm(&self, pending: Pending) -> Result<(), Stopped> {
        for (record, future) in pending.entries {
            match future.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => {
                    tracing::warn!(topic = %record.topic, %error, "record not acknowledged; re-sending");
                    self.send(&record).await?;
                }
                Err(_) => self.send(&record).await?,
            }
        }
        Ok(())
    }

    /// Writes every record and waits for all acknowledgements.
    pub async fn write(&self, records: Vec<OutRecord>) -> Result<(), Stopped> {
        let pending = self.enqueue(records).await;
        self.confirm(pending).await
    }

    /// Sends one record until it is acknowledged, backing off between failures.
    async fn send(&self, record: &OutRecord) -> Result<(), Stopped> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self
                .producer
                .send(
                    record.future_record(),
                    Timeout::After(Duration::from_secs(30)),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err((error, _)) => {
                    tracing::warn!(topic = %record.topic, %error, "produce failed; retrying in {backoff:?}");
                    if self.shutdown.is_cancelled() {
                        return Err(Stopped);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Sends what is still queued; called last at shutdown. librdkafka's flush blocks until
    /// the broker answers, so it runs off the async workers.
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.producer.clone();
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout))).await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::error!(
                ?flushed,
                "records still unsent at exit; their inputs were not committed and will be re-read"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::testing::{ticks_during, unreachable_kafka};

    #[tokio::test]
    async fn flushing_leaves_the_async_worker_free() {
        let producer: FutureProducer = crate::kafka::client::producer(&unreachable_kafka())
            .create()
            .unwrap();
        let output = Output::new(producer, CancellationToken::new());
        let unsent = output
            .enqueue(vec![OutRecord::new("t", "k", b"v".to_vec())])
            .await;
        let ((), ticks) = ticks_during(output.flush(Duration::from_secs(1))).await;
        assert!(
            ticks >= 50,
            "the runtime's only worker ticked {ticks} times in the 1 s flush"
        );
        drop(unsent);
    }
}
