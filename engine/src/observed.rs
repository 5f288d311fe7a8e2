//! The workload measured online: the shapes of the last pods the engine was asked to place, from
//! which the typical pods that fragmentation is measured against are drawn. A scheduler never
//! knows the pod list in advance; it learns what arrives, and follows it when it changes.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    hash::{Hash, Hasher},
};

use crate::{
    fxhash::FxHasher,
    gpu::{Shape, Workload},
    model::Pod,
};

/// Pods the measure remembers: enough for the rare shapes of a GPU cluster (multi-GPU pods are
/// about 1% of the trace) to be counted, few enough to follow a change within a working day.
pub const WINDOW: usize = 10_000;

/// Share of the pods' most popular shapes taken as typical (the FGD paper's 95%).
pub const TYPICAL_POD_COVERAGE: f64 = 0.95;

/// New pods between two looks at whether the typical pods moved.
const CHECK_EVERY: usize = 64;

/// How far (total variation distance, 0–1) the measured distribution must move from the one in
/// use before scores change: small drifts would only empty the fragmentation memo.
const REBUILD_DISTANCE: f64 = 0.05;

#[derive(Debug, Default)]
pub(crate) struct Observed {
    /// Pods in arrival order: a hash of the pod's key and its shape.
    window: VecDeque<(u64, Shape)>,
    /// Keys in the window, so a pod asked about again (retried) counts once.
    keys: HashSet<u64>,
    counts: HashMap<Shape, u32>,
    since_check: usize,
}

impl Observed {
    /// Counts `pod` (unless it is in the window already); returns the typical pods to use from
    /// now on when they moved away from `current`.
    pub(crate) fn record(&mut self, pod: &Pod, current: &Workload) -> Option<Workload> {
        let mut hasher = FxHasher::default();
        pod.key.hash(&mut hasher);
        let key = hasher.finish();
        if !self.keys.insert(key) {
            return None;
        }
        let shape = Shape::of(pod);
        *self.counts.entry(shape.clone()).or_insert(0) += 1;
        self.window.push_back((key, shape));
        if self.window.len() > WINDOW
            && let Some((old_key, old_shape)) = self.window.pop_front()
        {
            self.keys.remove(&old_key);
            if let Some(count) = self.counts.get_mut(&old_shape) {
                *count -= 1;
                if *count == 0 {
                    self.counts.remove(&old_shape);
                }
            }
        }
        self.since_check += 1;
        // Early on every few pods, so the first decisions already see a workload.
        let due = self.since_check >= CHECK_EVERY.min(self.window.len().next_power_of_two());
        if !due {
            return None;
        }
        self.since_check = 0;
        let measured = Workload::typical(
            self.counts.iter().map(|(shape, &count)| (shape.clone(), f64::from(count))),
            TYPICAL_POD_COVERAGE,
        );
        // Only a workload that moved is built for measuring.
        (Workload::distance_of(&measured, current.shapes()) > REBUILD_DISTANCE)
            .then(|| Workload::new(measured))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GpuRequest, Resources};

    fn pod(key: &str, gpu: GpuRequest) -> Pod {
        let mut pod = Pod::new(key, Resources::new(4000, 1 << 30));
        pod.gpu = gpu;
        pod
    }

    /// Feeds pods to the measure as the engine does, keeping the workload it hands back.
    fn feed(observed: &mut Observed, workload: &mut Workload, pods: impl IntoIterator<Item = Pod>) -> usize {
        let mut rebuilds = 0;
        for pod in pods {
            if let Some(measured) = observed.record(&pod, workload) {
                *workload = measured;
                rebuilds += 1;
            }
        }
        rebuilds
    }

    fn weight_of(workload: &Workload, gpu: GpuRequest) -> f64 {
        workload.shapes().iter().filter(|shape| shape.gpu == gpu).map(|shape| shape.weight).sum()
    }

    #[test]
    fn the_measure_follows_what_arrives_and_counts_a_retried_pod_once() {
        let (mut observed, mut workload) = (Observed::default(), Workload::default());
        let halves = (0..300).map(|index| pod(&format!("half-{index}"), GpuRequest::Fraction(500)));
        feed(&mut observed, &mut workload, halves);
        assert_eq!(weight_of(&workload, GpuRequest::Fraction(500)), 1.0);
        // The same pod asked about a thousand times is one pod.
        let retried = (0..1000).map(|_| pod("big", GpuRequest::Whole(8)));
        assert_eq!(feed(&mut observed, &mut workload, retried), 0);
        // A new kind of pod arriving as often as the first shows up at about half.
        let wholes = (0..300).map(|index| pod(&format!("whole-{index}"), GpuRequest::Whole(1)));
        feed(&mut observed, &mut workload, wholes);
        let whole = weight_of(&workload, GpuRequest::Whole(1));
        assert!((0.4..=0.5).contains(&whole), "{whole}");
    }

    #[test]
    fn old_pods_leave_the_window() {
        let (mut observed, mut workload) = (Observed::default(), Workload::default());
        let old = (0..WINDOW).map(|index| pod(&format!("old-{index}"), GpuRequest::Whole(1)));
        feed(&mut observed, &mut workload, old);
        let new = (0..WINDOW).map(|index| pod(&format!("new-{index}"), GpuRequest::Fraction(250)));
        feed(&mut observed, &mut workload, new);
        assert_eq!(weight_of(&workload, GpuRequest::Fraction(250)), 1.0);
        assert_eq!(observed.window.len(), WINDOW);
        assert_eq!(observed.keys.len(), WINDOW);
        assert_eq!(observed.counts.len(), 1);
    }
}
