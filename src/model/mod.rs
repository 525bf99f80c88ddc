//! The records that cross the service's edges: events in, account settings, delivery and
//! dead-letter records between the stages.

pub mod delivery;
pub mod event;
mod incident;
pub mod rate;
pub mod settings;

pub use delivery::{Attempt, AttemptOutcome, AttemptReport, DeadLetter, DeliveryRecord, Fate};
pub use event::{Event, Severity};
pub use incident::{incident_key, Condition};
pub use rate::Rate;
pub use settings::{AccountSettings, Channel, ChannelKind, Secret};
