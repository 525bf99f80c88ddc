//! The integration test binary: the service against a real Apache Kafka broker process (started
//! by the harness unless `SYSMOS_TEST_BROKERS` names one), recording HTTP receivers, the CLI,
//! and the published schemas.

mod channels;
mod cli;
mod common;
mod deploy;
mod digests;
mod email;
mod fuzz;
mod isolation;
mod ledger;
mod offsets;
mod operator;
mod pacing;
mod pipeline;
mod render;
mod scaling;
mod schemas;
mod secrets;
