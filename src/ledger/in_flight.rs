//! The delivery records being attempted in this process, so that two copies of one record are
//! never sent at the same moment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::{read_id, Id, Read};
use crate::model::DeliveryRecord;

/// The delivery records being attempted in this process. A second copy of a record in
/// flight (the router read an event twice after a restart, and both deliveries sit in one
/// partition) waits for the first to finish, then asks the ledger again, instead of being
/// sent at the same moment.
#[derive(Default)]
pub struct InFlight {
    claims: Mutex<HashMap<Id, Arc<Notify>>>,
}

/// Holds a record's identity until dropped; then the copies waiting for it go on.
pub struct Claim<'a> {
    owner: &'a InFlight,
    id: Id,
}

impl InFlight {
    /// Claims `record`'s identity, first waiting while another copy holds it.
    pub async fn claim(&self, record: &DeliveryRecord) -> Claim<'_> {
        let id = read_id(&record.delivery_id, record.replayed_at, Read::of(record));
        loop {
            let held = {
                let mut claims = self.claims.lock().expect("in-flight lock");
                match claims.get(&id) {
                    None => {
                        claims.insert(id, Arc::new(Notify::new()));
                        return Claim { owner: self, id };
                    }
                    Some(held) => held.clone(),
                }
            };
            let released = held.notified();
            tokio::pin!(released);
            // Registered before looking again, so a release in between is not missed.
            released.as_mut().enable();
            if !self
                .claims
                .lock()
                .expect("in-flight lock")
                .get(&id)
                .is_some_and(|h| Arc::ptr_eq(h, &held))
            {
                continue;
            }
            released.await;
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let held = self
            .owner
            .claims
            .lock()
            .expect("in-flight lock")
            .remove(&self.id);
        if let Some(held) = held {
            held.notify_waiters();
        }
    }
}
