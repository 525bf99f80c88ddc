//! The test kit: what the integration tests (`tests/integration`) and the runners in
//! `examples/` (demo, chaos, bench) share.
//!
//! - `broker`: the Apache Kafka broker process (shared/BROKER.md), free ports, topic creation.
//! - `receiver`: an HTTP endpoint that records every request and answers from scripts.
//! - `limits`: fake providers enforcing their documented rate limits, counting their 429s.
//! - `smtp`: a real SMTP server on a local port that records every message.
//! - `tls`: TLS for the fakes with the test CA (`tests/fixtures/tls`), HTTP/2 offered.
//! - `service`: service instances as child processes, for the runners.

pub mod broker;
pub mod limits;
pub mod receiver;
pub mod service;
pub mod smtp;
pub mod tls;
