//! Which offset may be stored: the lowest offset of a partition whose work is not finished.
//! Work finishes out of order (deliveries run concurrently), the stored offset never passes
//! an unfinished one. Generations keep work from a revoked assignment from storing anything.

use std::collections::{BTreeSet, HashMap};

/// Progress of one partition within one assignment.
#[derive(Debug, Default)]
pub struct PartitionProgress {
    pending: BTreeSet<i64>,
    /// One past the highest offset begun.
    next: Option<i64>,
    stored: Option<i64>,
}

impl PartitionProgress {
    /// Registers work on `offset`. False when it was already begun (a re-fetched message).
    pub fn begin(&mut self, offset: i64) -> bool {
        if self.next.is_some_and(|next| offset < next) {
            return false;
        }
        self.pending.insert(offset);
        self.next = Some(offset + 1);
        // Where reading started is already the committed position: nothing to store for it.
        self.stored.get_or_insert(offset);
        true
    }

    /// Marks `offset` finished; returns the offset to store (the next one to read) when it advanced.
    pub fn finish(&mut self, offset: i64) -> Option<i64> {
        if !self.pending.remove(&offset) {
            return None;
        }
        let candidate = self.pending.first().copied().or(self.next)?;
        if self.stored.is_some_and(|s| s >= candidate) {
            return None;
        }
        self.stored = Some(candidate);
        Some(candidate)
    }
}

/// The partitions a consumer owns now, each with the generation of its assignment.
#[derive(Debug, Default)]
pub struct Assignment {
    partitions: HashMap<(String, i32), (u64, PartitionProgress)>,
    generation: u64,
}

/// Where a message came from, and under which assignment it was begun.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub generation: u64,
}

impl Assignment {
    pub fn assign(&mut self, partitions: impl IntoIterator<Item = (String, i32)>) {
        self.generation += 1;
        for tp in partitions {
            self.partitions
                .insert(tp, (self.generation, PartitionProgress::default()));
        }
    }

    pub fn revoke(&mut self, partitions: impl IntoIterator<Item = (String, i32)>) {
        for tp in partitions {
            self.partitions.remove(&tp);
        }
    }

    /// Begins work on a message; `None` when its partition is not assigned or it was begun already.
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) -> Option<Position> {
        let (generation, progress) = self.partitions.get_mut(&(topic.to_owned(), partition))?;
        progress.begin(offset).then(|| Position {
            topic: topic.to_owned(),
            partition,
            offset,
            generation: *generation,
        })
    }

    /// Finishes work; the offset to store when the partition's low-water mark moved.
    pub fn finish(&mut self, pos: &Position) -> Option<i64> {
        let (generation, progress) = self
            .partitions
            .get_mut(&(pos.topic.clone(), pos.partition))?;
        if *generation != pos.generation {
            return None;
        }
        progress.finish(pos.offset)
    }

    /// Whether `pos` still belongs to the current assignment.
    pub fn is_current(&self, pos: &Position) -> bool {
        self.partitions
            .get(&(pos.topic.clone(), pos.partition))
            .is_some_and(|(g, _)| *g == pos.generation)
    }

    pub fn owns(&self, topic: &str, partition: i32) -> bool {
        self.partitions.contains_key(&(topic.to_owned(), partition))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_offset_never_passes_unfinished_work() {
        let mut p = PartitionProgress::default();
        for o in 10..14 {
            assert!(p.begin(o));
        }
        assert_eq!(p.finish(11), None, "10 is still in flight");
        assert_eq!(p.finish(13), None);
        assert_eq!(p.finish(10), Some(12), "12 is the lowest unfinished");
        assert_eq!(p.finish(12), Some(14), "all done: store one past the last");
        assert_eq!(p.finish(12), None, "finishing twice changes nothing");
        assert!(!p.begin(13), "a re-fetched message is not begun again");
        assert!(p.begin(20), "a gap (compaction) is fine");
        assert_eq!(p.finish(20), Some(21));
    }

    #[test]
    fn a_revoked_generation_stores_nothing() {
        let mut a = Assignment::default();
        a.assign([("t".to_owned(), 0)]);
        let old = a.begin("t", 0, 5).unwrap();
        assert!(a.begin("t", 1, 0).is_none(), "partition 1 is not ours");
        a.revoke([("t".to_owned(), 0)]);
        assert!(!a.is_current(&old));
        a.assign([("t".to_owned(), 0)]);
        assert_eq!(
            a.finish(&old),
            None,
            "work from before the rebalance is ignored"
        );
        let new = a.begin("t", 0, 5).unwrap();
        assert_eq!(a.finish(&new), Some(6));
    }
}
