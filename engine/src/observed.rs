//! The workload measured online: the shapes of the last pods the engine was asked to place, from
//! which the typical pods that fragmentation is measured against are drawn. A scheduler never
//! knows the pod list in advance; it learns what arrives, and follows it when it changes.

use std::{
    collections::{HashMap, HashSet, VecDeque, hash_map::DefaultHasher},
    hash::{Hash, Hasher},
};

use crate::{
    gpu::{Shape, Workload, WorkloadShape},
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
    /// Pods in arrival order: a hash of the pod's key (None for a pod recalled from an earlier
    /// measure) and its shape.
    window: VecDeque<(Option<u64>, Shape)>,
    /// Keys in the window, so a pod asked about again (retried) counts once.
    keys: HashSet<u64>,
    counts: HashMap<Shape, u32>,
    since_check: usize,
}

impl Observed {
    /// Counts `pod` (unless it is in the window already); returns the typical pods to use from
    /// now on when they moved away from `current`.
    pub(crate) fn record(&mut self, pod: &Pod, current: &Workload) -> Option<Workload> {
        // Pod names are input, and names alike in all but a few bytes collide under the Fx hash
        // (16 of 800 in a test): SipHash counts every pod.
        let mut hasher = DefaultHasher::new();
        pod.key.hash(&mut hasher);
        let key = hasher.finish();
        if !self.keys.insert(key) {
            return None;
        }
        let shape = Shape::of(pod);
        *self.counts.entry(shape.clone()).or_insert(0) += 1;
        self.window.push_back((Some(key), shape));
        if self.window.len() > WINDOW {
            self.forget_oldest();
        }
        self.since_check += 1;
        // Early on every few pods, so the first decisions already see a workload.
        let due = self.since_check >= CHECK_EVERY.min(self.window.len().next_power_of_two());
        if !due {
            return None;
        }
        self.since_check = 0;
        let measured = self.typical();
        // Only a workload that moved is built for measuring.
        (Workload::distance_of(&measured, current.shapes()) > REBUILD_DISTANCE)
            .then(|| Workload::new(measured))
    }

    /// How many pods of each shape the window holds, by shape.
    pub(crate) fn counts(&self) -> Vec<(Shape, u32)> {
        let mut counts: Vec<(Shape, u32)> =
            self.counts.iter().map(|(shape, &count)| (shape.clone(), count)).collect();
        counts.sort();
        counts
    }

    /// Takes an earlier measure (`counts`, as [`counts`](Self::counts) gave them) as older than
    /// every pod measured since, and returns the workload to use from now on. Each shape's pods
    /// are spread evenly through the recalled part, so as they leave the window the shapes keep
    /// their proportions.
    pub(crate) fn recall(&mut self, counts: &[(Shape, u32)]) -> Workload {
        let mut recalled: Vec<(f64, &Shape)> = counts
            .iter()
            .flat_map(|(shape, count)| {
                (0..*count).map(move |index| ((f64::from(index) + 0.5) / f64::from(*count), shape))
            })
            .collect();
        recalled.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        for (_, shape) in recalled.into_iter().rev() {
            *self.counts.entry(shape.clone()).or_insert(0) += 1;
            self.window.push_front((None, shape.clone()));
        }
        while self.window.len() > WINDOW {
            self.forget_oldest();
        }
        self.since_check = 0;
        Workload::new(self.typical())
    }

    fn typical(&self) -> Vec<WorkloadShape> {
        Workload::typical(
            self.counts.iter().map(|(shape, &count)| (shape.clone(), f64::from(count))),
            TYPICAL_POD_COVERAGE,
        )
    }

    fn forget_oldest(&mut self) {
        let Some((old_key, old_shape)) = self.window.pop_front() else { return };
        if let Some(old_key) = old_key {
            self.keys.remove(&old_key);
        }
        if let Some(count) = self.counts.get_mut(&old_shape) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&old_shape);
            }
        }
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
    fn a_recalled_measure_scores_from_the_first_pod_and_gives_way_to_what_arrives() {
        let (mut earlier, mut workload) = (Observed::default(), Workload::default());
        let wholes = (0..600).map(|index| pod(&format!("whole-{index}"), GpuRequest::Whole(8)));
        let halves = (0..200).map(|index| pod(&format!("half-{index}"), GpuRequest::Fraction(500)));
        feed(&mut earlier, &mut workload, wholes.chain(halves));
        let counts = earlier.counts();
        assert_eq!(counts.iter().map(|(_, count)| count).sum::<u32>(), 800);

        let mut recalled = Observed::default();
        let workload = recalled.recall(&counts);
        assert_eq!(weight_of(&workload, GpuRequest::Whole(8)), 0.75);
        assert_eq!(recalled.counts(), counts);
        // Recalled pods are no real pods: the same keys arriving now count.
        let mut workload = workload;
        let again = (0..WINDOW).map(|index| pod(&format!("half-{index}"), GpuRequest::Fraction(500)));
        feed(&mut recalled, &mut workload, again);
        assert_eq!(weight_of(&workload, GpuRequest::Fraction(500)), 1.0);
        assert_eq!(recalled.window.len(), WINDOW);
        assert_eq!(recalled.keys.len(), WINDOW);
    }

    #[test]
    fn recalled_shapes_leave_the_window_in_proportion() {
        let counts = vec![
            (Shape { cpu_milli: 4000, gpu: GpuRequest::Whole(1), gpu_models: Vec::new() }, 9_000),
            (Shape { cpu_milli: 4000, gpu: GpuRequest::Whole(8), gpu_models: Vec::new() }, 1_000),
        ];
        let (mut observed, _) = (Observed::default(), Workload::default());
        let mut workload = observed.recall(&counts);
        // Half the window replaced by new pods: half of each recalled shape is left.
        let new = (0..WINDOW / 2).map(|index| pod(&format!("new-{index}"), GpuRequest::Fraction(250)));
        feed(&mut observed, &mut workload, new);
        let left: Vec<u32> = observed.counts().iter().map(|(_, count)| *count).collect();
        assert_eq!(left, vec![4_500, 500, 5_000]);
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
