//! The records that cross the service's edges: events in, account settings, delivery and
//! dead-letter records between the stages.

pub mod delivery;
pub mod event;
pub mod settings;

pub use delivery::{Attempt, AttemptOutcome, AttemptReport, DeadLetter, DeliveryRecord};
pub use event::{Event, Severity};
pub use settings::{AccountSettings, Channel, ChannelKind, Secret};
