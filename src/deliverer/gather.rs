//! Digests (CONTRACT §5a): deliveries of one channel that wait in memory for its bucket are
//! taken together. The first to wait for a turn opens a gathering; those that come while it
//! waits join it instead of reserving turns of their own (up to the provider's digest size);
//! at its turn it sends one message for all of them. A rider's offset stays unstored until
//! the digest's outcome is written, so a crash repeats the digest at most.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::flow::Delivery;
use super::Deliverer;
use crate::kafka::context::{owns, GroupConsumer};
use crate::kafka::offsets::Position;
use crate::model::DeliveryRecord;
use crate::pacing::{BucketKey, Need};
use crate::render;

/// A delivery taken along by another's turn.
pub(crate) struct Rider {
    pub record: DeliveryRecord,
    pub consumer: Arc<GroupConsumer>,
    pub pos: Position,
    /// Its place in the waiting room, held until the digest is settled.
    pub _room: OwnedSemaphorePermit,
}

/// Deliveries taken together share the account, the channel and the buckets (an email
/// channel's recipients not yet reached).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Key {
    account: String,
    channel: String,
    buckets: Vec<BucketKey>,
}

/// The alerts one message of a channel type covers at most; `None` for channels never
/// combined (PagerDuty: one incident per event; webhooks: one body per event).
pub(super) fn digest_size(channel_type: &str) -> Option<usize> {
    match channel_type {
        "slack" => Some(render::slack::DIGEST),
        "discord" => Some(render::discord::DIGEST),
        "email" => Some(render::email::DIGEST),
        _ => None,
    }
}

impl Key {
    pub(super) fn of(record: &DeliveryRecord, needs: &[Need]) -> Self {
        Self {
            account: record.account_id.clone(),
            channel: record.channel_id.clone(),
            buckets: needs.iter().map(|n| n.key.clone()).collect(),
        }
    }
}

/// One digest forming: its riders so far, and how many more it takes.
struct Gathering<R> {
    id: u64,
    riders: Vec<R>,
    room: usize,
}

/// The open gatherings, per key in the order their leaders' turns come: a delivery joins the
/// last one with room; when it is full, the next to wait opens another.
pub(crate) struct Gatherings<R = Rider> {
    open: Mutex<Open<R>>,
}

struct Open<R> {
    forming: HashMap<Key, Vec<Gathering<R>>>,
    last_id: u64,
}

impl<R> Default for Gatherings<R> {
    fn default() -> Self {
        Self {
            open: Mutex::new(Open {
                forming: HashMap::new(),
                last_id: 0,
            }),
        }
    }
}

impl<R> Gatherings<R> {
    /// Opens a gathering for a delivery waiting for its turn, taking up to `room` riders,
    /// unless one open for `key` still has room (the delivery should have joined it).
    pub(super) fn open(&self, key: Key, room: usize) -> Option<u64> {
        if room == 0 {
            return None;
        }
        let mut open = self.open.lock().expect("gatherings lock");
        let Open { forming, last_id } = &mut *open;
        let forming = forming.entry(key).or_default();
        if forming.iter().any(|g| g.riders.len() < g.room) {
            return None;
        }
        *last_id += 1;
        let id = *last_id;
        forming.push(Gathering {
            id,
            riders: Vec::new(),
            room,
        });
        Some(id)
    }

    /// Joins the first gathering open for `key` with room; else gives the rider back.
    pub(super) fn join(&self, key: &Key, rider: R) -> Result<(), R> {
        let mut open = self.open.lock().expect("gatherings lock");
        let forming = open.forming.get_mut(key).into_iter().flatten();
        match forming.into_iter().find(|g| g.riders.len() < g.room) {
            Some(gathering) => {
                gathering.riders.push(rider);
                Ok(())
            }
            None => Err(rider),
        }
    }

    /// Closes gathering `id` for `key` at its leader's turn (or when the leader gives up its
    /// wait): the riders it took.
    pub(super) fn close(&self, key: &Key, id: u64) -> Vec<R> {
        let mut open = self.open.lock().expect("gatherings lock");
        let Some(forming) = open.forming.get_mut(key) else {
            return Vec::new();
        };
        let riders = forming
            .iter()
            .position(|g| g.id == id)
            .map(|at| forming.remove(at).riders)
            .unwrap_or_default();
        if forming.is_empty() {
            open.forming.remove(key);
        }
        riders
    }
}

impl Deliverer {
    /// Hands `delivery` to the digest forming for its channel and buckets, if one is open with
    /// room (and the waiting room has a place): it rides there, its place among the unfinished
    /// given up. Else gives it back.
    pub(super) fn join(&self, delivery: Delivery, needs: &[Need]) -> Option<Delivery> {
        if digest_size(&delivery.record.channel_type).is_none() {
            return Some(delivery);
        }
        let Ok(room) = self.waiting.clone().try_acquire_owned() else {
            return Some(delivery);
        };
        let key = Key::of(&delivery.record, needs);
        let kind = delivery.record.channel_type.clone();
        let Delivery {
            record,
            consumer,
            pos,
            unfinished,
        } = delivery;
        let rider = Rider {
            record,
            consumer,
            pos,
            _room: room,
        };
        match self.gatherings.join(&key, rider) {
            Ok(()) => {
                self.metrics.waiting(&kind, 1);
                None
            }
            Err(rider) => Some(Delivery::new(
                rider.record,
                rider.consumer,
                rider.pos,
                unfinished,
            )),
        }
    }

    /// Opens the digest of a delivery about to wait in memory for its turn: `None` when its
    /// channel is never combined, or another digest of its channel still has room.
    pub(super) fn open(&self, record: &DeliveryRecord, needs: &[Need]) -> Option<(Key, u64)> {
        let size = digest_size(&record.channel_type)?;
        let key = Key::of(record, needs);
        let id = self.gatherings.open(key.clone(), size - 1)?;
        Some((key, id))
    }

    /// Closes a digest at its leader's turn: the riders it took, no longer waiting.
    pub(super) fn close(&self, digest: Option<(Key, u64)>) -> Vec<Rider> {
        let riders = digest
            .map(|(key, id)| self.gatherings.close(&key, id))
            .unwrap_or_default();
        if let Some(rider) = riders.first() {
            self.metrics
                .waiting(&rider.record.channel_type, -(riders.len() as i64));
        }
        riders
    }

    /// Riders whose leader was not sent (a repeat, dropped, revoked): each waits for a turn of
    /// its own again. When stopping they are left unfinished: read again after the restart.
    pub(super) fn release(self: &Arc<Self>, riders: Vec<Rider>, shutdown: &CancellationToken) {
        for rider in riders {
            if !shutdown.is_cancelled() && owns(&rider.consumer, &rider.pos) {
                self.requeue(rider.record, rider.consumer, rider.pos, shutdown);
            }
        }
    }

    /// Hands `record` back to the pipeline, to take a turn of its own.
    pub(super) fn requeue(
        self: &Arc<Self>,
        record: DeliveryRecord,
        consumer: Arc<GroupConsumer>,
        pos: Position,
        shutdown: &CancellationToken,
    ) {
        let (this, shutdown) = (self.clone(), shutdown.clone());
        self.tasks.spawn(async move {
            let Some(unfinished) = this.unfinished_slot(&shutdown).await else {
                return;
            };
            let delivery = Delivery::new(record, consumer, pos, unfinished);
            this.drive(delivery, None, shutdown).await
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(channel: &str) -> Key {
        Key {
            account: "acc".into(),
            channel: channel.into(),
            buckets: Vec::new(),
        }
    }

    #[test]
    fn riders_join_the_first_digest_with_room_and_a_full_one_makes_way() {
        let forming: Gatherings<u32> = Gatherings::default();
        let (ops, other) = (key("ops"), key("other"));
        assert_eq!(
            forming.join(&ops, 1),
            Err(1),
            "nothing open: no digest to join"
        );
        let first = forming.open(ops.clone(), 2).expect("opened");
        assert_eq!(
            forming.open(ops.clone(), 2),
            None,
            "one with room is open: join it"
        );
        assert_eq!(forming.join(&ops, 2), Ok(()));
        assert_eq!(
            forming.join(&other, 9),
            Err(9),
            "another channel's digest is not ours"
        );
        assert_eq!(forming.join(&ops, 3), Ok(()));
        assert_eq!(
            forming.join(&ops, 4),
            Err(4),
            "full: the next waits for a turn"
        );
        let second = forming.open(ops.clone(), 2).expect("a full one makes way");
        assert_eq!(forming.join(&ops, 4), Ok(()));
        assert_eq!(forming.close(&ops, first), [2, 3]);
        assert_eq!(forming.close(&ops, first), Vec::<u32>::new(), "closed once");
        assert_eq!(forming.close(&ops, second), [4]);
        assert_eq!(
            forming.open(ops.clone(), 0),
            None,
            "a channel never combined"
        );
    }
}
