//! Everything that talks to Kafka's client library: configs, topics, the consumer context,
//! offset progress and the durable producer.

pub mod client;
pub mod context;
pub mod offsets;
pub mod producer;
pub mod table;
pub mod topics;
