//! Which offset may be stored: the lowest offset of a partition whose work is not finished.
//! Work finishes out of order (deliveries run concurrently), the stored offset never passes
//! an unfinished one. Generations keep work from a revoked assignment from storing anything.

use std::collections::{BTreeMap, HashMap};

/// Progress of one partition within one assignment.
#[derive(Debug, Default)]
pub struct PartitionProgress {
    /// Offsets begun and not finished, with their record timestamps (ms since the epoch).
    pending: BTreeMap<i64, Option<i64>>,
    /// One past the highest offset begun.
    next: Option<i64>,
    stored: Option<i64>,
}

impl PartitionProgress {
    /// Registers work on `offset`. False when it was already begun (a re-fetched message).
    pub fn begin(&mut self, offset: i64, timestamp_ms: Option<i64>) -> bool {
        if self.next.is_some_and(|next| offset < next) {
            return false;
        }
        self.pending.insert(offset, timestamp_ms);
        self.next = Some(offset + 1);
        // Where reading started is already the committed position: nothing to store for it.
        self.stored.get_or_insert(offset);
        true
    }

    /// Marks `offset` finished; returns the offset to store (the next one to read) when it advanced.
    pub fn finish(&mut self, offset: i64) -> Option<i64> {
        self.pending.remove(&offset)?;
        let candidate = self
            .pending
            .first_key_value()
            .map(|(o, _)| *o)
            .or(self.next)?;
        if self.stored.is_some_and(|s| s >= candidate) {
            return None;
        }
        self.stored = Some(candidate);
        Some(candidate)
    }

    /// Age of the oldest record begun and not finished: records not yet received are newer
    /// still, so this is the age of the oldest record not yet processed. Zero when idle.
    pub fn oldest_age_ms(&self, now_ms: i64) -> i64 {
        self.pending
            .first_key_value()
            .and_then(|(_, ts)| *ts)
            .map_or(0, |ts| (now_ms - ts).max(0))
    }
}

/// The partitions a consumer owns now, each with the generation of its assignment.
#[derive(Debug, Default)]
pub struct Assignment {
    partitions: HashMap<(String, i32), (u64, PartitionProgress)>,
    generation: u64,
    assigned_at: Option<std::time::Instant>,
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
        self.assigned_at = Some(std::time::Instant::now());
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
    pub fn begin(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
    ) -> Option<Position> {
        let (generation, progress) = self.partitions.get_mut(&(topic.to_owned(), partition))?;
        progress.begin(offset, timestamp_ms).then(|| Position {
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

    /// When the last assignment came: work of the partitions' previous owners may have
    /// reached the providers right up to it.
    pub fn assigned_at(&self) -> Option<std::time::Instant> {
        self.assigned_at
    }

    /// Whether `pos` still belongs to the current assignment.
    pub fn is_current(&self, pos: &Position) -> bool {
        self.partitions
            .get(&(pos.topic.clone(), pos.partition))
            .is_some_and(|(g, _)| *g == pos.generation)
    }

    /// The oldest unprocessed record's age per owned partition, in milliseconds.
    pub fn oldest_age_ms(&self, topic: &str, partition: i32, now_ms: i64) -> Option<i64> {
        self.partitions
            .get(&(topic.to_owned(), partition))
            .map(|(_, progress)| progress.oldest_age_ms(now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_offset_never_passes_unfinished_work() {
        let mut p = PartitionProgress::default();
        for o in 10..14 {
            assert!(p.begin(o, Some(o * 1000)));
        }
        assert_eq!(
            p.oldest_age_ms(15_000),
            5_000,
            "offset 10 is the oldest pending"
        );
        assert_eq!(p.finish(11), None, "10 is still in flight");
        assert_eq!(p.finish(13), None);
        assert_eq!(p.finish(10), Some(12), "12 is the lowest unfinished");
        assert_eq!(p.oldest_age_ms(15_000), 3_000);
        assert_eq!(p.finish(12), Some(14), "all done: store one past the last");
        assert_eq!(p.oldest_age_ms(15_000), 0, "idle");
        assert_eq!(p.finish(12), None, "finishing twice changes nothing");
        assert!(
            !p.begin(13, None),
            "a re-fetched message is not begun again"
        );
        assert!(p.begin(20, None), "a gap (compaction) is fine");
        assert_eq!(p.finish(20), Some(21));
    }

    #[test]
    fn a_revoked_generation_stores_nothing() {
        let mut a = Assignment::default();
        a.assign([("t".to_owned(), 0)]);
        let old = a.begin("t", 0, 5, None).unwrap();
        assert!(
            a.begin("t", 1, 0, None).is_none(),
            "partition 1 is not ours"
        );
        a.revoke([("t".to_owned(), 0)]);
        assert!(!a.is_current(&old));
        a.assign([("t".to_owned(), 0)]);
        assert_eq!(
            a.finish(&old),
            None,
            "work from before the rebalance is ignored"
        );
        let new = a.begin("t", 0, 5, None).unwrap();
        assert_eq!(a.finish(&new), Some(6));
    }
}
