//! Groups of nodes kept in score order for each typical pod shape, so a decision reads the best
//! group instead of scoring every one. A placement changes one or two groups; each ranking
//! catches up with the changes when its shape is next asked about, rescoring only the groups
//! that changed since (each once, however often it changed).

use std::{cmp::Ordering, collections::BTreeSet};

use crate::{
    fxhash::{FxHashMap, FxHashSet},
    gpu::{Shape, Workload, WorkloadShape},
};

/// A group's score for one pod shape: compared lexicographically, higher is better.
pub(crate) type Score = [f64; 4];

pub(crate) fn compare(a: &Score, b: &Score) -> Ordering {
    a.iter().zip(b).map(|(a, b)| a.total_cmp(b)).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
}

/// What a group's score depends on besides the group: the pod's shape, and its memory under a
/// policy that scores memory.
pub(crate) type Ask = (Shape, u64);

/// One group in a ranking.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub score: Score,
    /// Rank of the group's first member, which ties go to.
    pub rank: u64,
    pub group: u32,
    /// For a GPU fraction, the free milli of the device it takes.
    pub device: Option<u16>,
}

impl Entry {
    /// Best first: higher score, then lower rank.
    fn order(&self, other: &Self) -> Ordering {
        compare(&other.score, &self.score).then(self.rank.cmp(&other.rank)).then(self.group.cmp(&other.group))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.order(other).is_eq()
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.order(other)
    }
}

#[derive(Debug, Default)]
struct Ranking {
    order: BTreeSet<Entry>,
    by_group: FxHashMap<u32, Entry>,
    /// Position in the change log this ranking has caught up to.
    seen: u64,
    /// When it was last asked about (decisions), to drop the least used.
    used: u64,
}

impl Ranking {
    /// Puts `group` where `entry` ranks it, or out when it cannot take the shape.
    fn put(&mut self, group: u32, entry: Option<Entry>) {
        if let Some(old) = self.by_group.remove(&group) {
            self.order.remove(&old);
        }
        if let Some(entry) = entry {
            self.order.insert(entry);
            self.by_group.insert(group, entry);
        }
    }
}

/// Rankings kept at most: a ranking holds an entry per group that can take its shape.
const RANKINGS_KEPT: usize = 256;

/// Changes remembered before the oldest are forgotten (rankings behind them are dropped).
const LOG_LIMIT: usize = 1 << 16;

/// The rankings of the workload's typical pod shapes and the log of changed groups they catch
/// up from.
#[derive(Debug, Default)]
pub(crate) struct Rankings {
    rankings: FxHashMap<Ask, Ranking>,
    /// Shapes worth a ranking: the typical pods of the workload scores are measured against.
    typical: FxHashSet<Shape>,
    /// Groups changed, in order; `log[0]` is change number `base`.
    log: Vec<u32>,
    base: u64,
    /// Per group, the number of its latest change.
    latest: Vec<u64>,
    asked: u64,
}

impl Rankings {
    /// Forgets every ranking: what scores depend on changed (the workload, or the largest node
    /// scores are normalised by).
    pub(crate) fn reset(&mut self, workload: &Workload) {
        self.rankings.clear();
        self.typical = workload.shapes().iter().map(WorkloadShape::shape).collect();
    }

    /// Notes that `group` changed: it was made, emptied or its members changed.
    pub(crate) fn changed(&mut self, group: u32) {
        let number = self.base + self.log.len() as u64;
        let index = group as usize;
        if self.latest.len() <= index {
            self.latest.resize(index + 1, 0);
        }
        self.latest[index] = number;
        self.log.push(group);
        if self.log.len() > LOG_LIMIT {
            let forget = self.log.len() - LOG_LIMIT / 2;
            self.log.drain(..forget);
            self.base += forget as u64;
            let base = self.base;
            self.rankings.retain(|_, ranking| ranking.seen >= base);
        }
    }

    /// Rankings kept now.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.rankings.len()
    }

    /// Whether `shape` is one rankings are kept for.
    pub(crate) fn keeps(&self, shape: &Shape) -> bool {
        self.typical.contains(shape)
    }

    /// The groups that can take `ask`, best first, brought up to date: `score` gives a group's
    /// entry, or None when it cannot take the shape (or is empty); `all` lists every group.
    pub(crate) fn ranked(
        &mut self,
        ask: &Ask,
        all: impl Iterator<Item = u32>,
        mut score: impl FnMut(u32) -> Option<Entry>,
    ) -> impl Iterator<Item = &Entry> {
        self.asked += 1;
        let end = self.base + self.log.len() as u64;
        if !self.rankings.contains_key(ask) && self.rankings.len() >= RANKINGS_KEPT {
            let least_used =
                self.rankings.iter().min_by_key(|(_, ranking)| ranking.used).map(|(ask, _)| ask.clone());
            if let Some(least_used) = least_used {
                self.rankings.remove(&least_used);
            }
        }
        let ranking = self.rankings.entry(ask.clone()).or_default();
        let behind = (end - ranking.seen) as usize;
        if ranking.used == 0 || behind > ranking.by_group.len().max(64) {
            // New, or so far behind that scoring everything is cheaper than catching up.
            ranking.order.clear();
            ranking.by_group.clear();
            for group in all {
                ranking.put(group, score(group));
            }
        } else {
            for number in ranking.seen..end {
                let group = self.log[(number - self.base) as usize];
                if self.latest[group as usize] != number {
                    continue; // changed again later: rescored then
                }
                ranking.put(group, score(group));
            }
        }
        ranking.seen = end;
        ranking.used = self.asked;
        ranking.order.iter()
    }
}
