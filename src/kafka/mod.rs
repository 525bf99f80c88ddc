//! Everything that talks to Kafka's client library: configs, topics, the consumer context,
//! offset progress and the durable producer.

pub mod client;
pub mod context;
pub(crate) mod offsets;
pub(crate) mod producer;
pub(crate) mod table;
pub mod topics;

#[cfg(test)]
pub(crate) mod testing {
    //! For tests that a blocking client call does not hold an async worker.

    use std::future::Future;
    use std::time::Duration;

    /// A configuration whose brokers never answer: a local port nothing listens on.
    pub fn unreachable_kafka() -> crate::config::KafkaConfig {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let env = [(
            "SYSMOS_NOTIFY__KAFKA__BROKERS".to_owned(),
            format!("127.0.0.1:{port}"),
        )];
        crate::config::Config::load_with_env(None, env)
            .expect("defaults are valid")
            .kafka
    }

    /// Runs `work` beside a 10 ms ticker on the calling runtime and counts the ticks seen
    /// meanwhile: on a single-threaded runtime a blocking call inside `work` stops the ticker.
    pub async fn ticks_during<F: Future>(work: F) -> (F::Output, u32) {
        let mut ticks = 0;
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        tokio::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return (output, ticks),
                _ = ticker.tick() => ticks += 1,
            }
        }
    }
}
