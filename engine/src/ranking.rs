//! Groups of nodes kept in score order for each typical pod shape, so a decision reads the best
//! group instead of scoring every one. A placement changes one or two groups; each ranking
//! catches up with the changes when its shape is next asked about, rescoring only the groups
//! that changed since (each once, however often it changed).
//!
//! A group's score does not depend on the GPU models a pod is pinned to, only on whether the
//! pod may use the group's model: pods of one CPU and GPU request share a ranking, kept apart by
//! GPU model. A pinned pod reads only its models' orders, and a ranking scores a model's groups
//! only once a pod that may use the model asks.

use std::{cmp::Ordering, collections::BTreeSet};

use crate::{
    fxhash::{FxHashMap, FxHashSet},
    gpu::{Shape, Workload, WorkloadShape},
    model::GpuRequest,
};

/// A group's score for one pod shape: compared lexicographically, higher is better.
pub(crate) type Score = [f64; 4];

pub(crate) fn compare(a: &Score, b: &Score) -> Ordering {
    a.iter().zip(b).map(|(a, b)| a.total_cmp(b)).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
}

/// What a group's score depends on besides the group: the pod's CPU and GPU request, and its
/// memory under a policy that scores memory.
pub(crate) type Ask = (u64, GpuRequest, u64);

/// One group in a ranking.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub score: Score,
    /// The group's GPU model (its slot).
    pub model: usize,
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
    /// Entries by GPU model slot, best first.
    by_model: Vec<BTreeSet<Entry>>,
    by_group: FxHashMap<u32, Entry>,
    /// Model slots whose groups are scored; the others are once a pod that may use them asks.
    covered: Vec<bool>,
    /// Position in the change log this ranking has caught up to.
    seen: u64,
    /// When it was last asked about (decisions), to drop the least used.
    used: u64,
}

impl Ranking {
    /// Puts `group` where `entry` ranks it, or out when it cannot take the shape.
    fn put(&mut self, group: u32, entry: Option<Entry>) {
        if let Some(old) = self.by_group.remove(&group) {
            self.by_model[old.model].remove(&old);
        }
        if let Some(entry) = entry {
            if self.by_model.len() <= entry.model {
                self.by_model.resize_with(entry.model + 1, BTreeSet::new);
            }
            self.by_model[entry.model].insert(entry);
            self.by_group.insert(group, entry);
        }
    }

    fn covers(&self, model: usize) -> bool {
        self.covered.get(model).copied().unwrap_or(false)
    }

    fn clear(&mut self) {
        self.by_model.clear();
        self.by_group.clear();
        self.covered.clear();
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

    /// The groups that can take `ask` by GPU model slot, each best first, brought up to date
    /// for the models `allowed` (by slot): `score` gives a group's entry, or None when it cannot
    /// take the shape (or is empty), `model_of` a group's model slot, `groups_of` every group of
    /// a model slot that may take the shape.
    pub(crate) fn ranked<G: IntoIterator<Item = u32>>(
        &mut self,
        ask: &Ask,
        allowed: &[bool],
        groups_of: impl Fn(usize) -> G,
        model_of: impl Fn(u32) -> usize,
        mut score: impl FnMut(u32) -> Option<Entry>,
    ) -> &[BTreeSet<Entry>] {
        self.asked += 1;
        let end = self.base + self.log.len() as u64;
        if !self.rankings.contains_key(ask) && self.rankings.len() >= RANKINGS_KEPT {
            let least_used =
                self.rankings.iter().min_by_key(|(_, ranking)| ranking.used).map(|(ask, _)| *ask);
            if let Some(least_used) = least_used {
                self.rankings.remove(&least_used);
            }
        }
        let ranking = self.rankings.entry(*ask).or_default();
        // Catching up rescores each group changed since once, never more than scoring them all
        // would; walking the log (at most `LOG_LIMIT` entries) costs little beside.
        if ranking.used == 0 {
            ranking.clear();
        } else {
            for number in ranking.seen..end {
                let group = self.log[(number - self.base) as usize];
                if self.latest[group as usize] != number {
                    continue; // changed again later: rescored then
                }
                let entry = if ranking.covers(model_of(group)) { score(group) } else { None };
                ranking.put(group, entry);
            }
        }
        for (model, _) in allowed.iter().enumerate().filter(|(_, allowed)| **allowed) {
            if ranking.covers(model) {
                continue;
            }
            for group in groups_of(model) {
                ranking.put(group, score(group));
            }
            if ranking.covered.len() <= model {
                ranking.covered.resize(model + 1, false);
            }
            ranking.covered[model] = true;
        }
        ranking.seen = end;
        ranking.used = self.asked;
        &ranking.by_model
    }
}
