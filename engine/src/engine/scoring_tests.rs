//! What the scan and the rankings rely on in a group's score, and the fragmentation a group
//! keeps for itself.

use super::{scoring::NOT_MEASURED, *};

/// What a decision of `engine` scores groups with.
fn scoring(engine: &Engine) -> Scoring<'_> {
    Scoring {
        policy: engine.policy,
        workload: &engine.workload,
        workload_generation: engine.workload_generation,
        classes: &engine.classes,
        largest_cpu: engine.largest_cpu,
        largest_gpu: engine.largest_gpu,
        cpu_binds: engine.cpu_binds,
    }
}

/// A pod visits only the buckets from `first_fitting_bucket` on: every node its GPUs fit
/// must be in one of them.
#[test]
fn no_node_a_request_fits_is_in_a_bucket_it_skips() {
    let amounts: Vec<u16> = (0..=10).map(|tenths| tenths * 100).collect();
    let mut requests = vec![GpuRequest::None];
    requests.extend((1..=4).map(GpuRequest::Whole));
    requests.extend((1..20).map(|twentieths| GpuRequest::Fraction(twentieths * 50)));
    for a in &amounts {
        for b in &amounts {
            for c in &amounts {
                let mut gpus = GpuFree::idle(3);
                gpus.take(&[(0, 1000 - a), (1, 1000 - b), (2, 1000 - c)]);
                for &request in &requests {
                    if gpus.fits(request) {
                        assert!(
                            gpu_bucket(&gpus) >= first_fitting_bucket(request),
                            "{request:?} fits {:?} but its bucket is skipped",
                            gpus.devices()
                        );
                    }
                }
            }
        }
    }
}

/// A decision lowers yiyun's scores by whole steps per GPU model and reads each model's
/// ranking in order until below the best, which holds only if no score is a negative zero:
/// ordered below zero, it is the same number once lowered.
#[test]
fn yiyun_scores_carry_no_negative_zero() {
    let mut engine = Engine::new(Policy::Yiyun, 7);
    for index in 0..12 {
        let cpu = [32_000, 64_000, 96_000][index % 3];
        let mut node = Node::new(
            format!("n{index}"),
            Resources { cpu_milli: cpu, memory_bytes: 256 << 30, pods: 110, ..Default::default() },
        );
        node.gpus = [2, 4, 8][index % 3];
        node.gpu_model = Some(["A10", "V100"][index % 2].to_string());
        engine.upsert_node(node);
    }
    let requests =
        [GpuRequest::Fraction(250), GpuRequest::Fraction(500), GpuRequest::Whole(1), GpuRequest::Whole(2)];
    let mut memo = FxHashMap::default();
    let mut zeros = 0;
    for index in 0..80u64 {
        let mut pod = Pod::new(format!("p{index}"), Resources::new(2_000 + 1_000 * (index % 5), 4 << 30));
        pod.gpu = requests[index as usize % requests.len()];
        for group in engine.groups.iter().filter(|group| {
            !group.members.is_empty()
                && group.key.free.first_shortage(&pod.requests).is_none()
                && group.key.gpus.fits(pod.gpu)
        }) {
            let (score, _) = score_group(&scoring(&engine), &pod, group, 0, 0.0, &mut memo);
            assert!(
                !(score[2] == 0.0 && score[2].is_sign_negative()),
                "{pod:?} on {:?}: {score:?}",
                group.key
            );
            zeros += usize::from(score[2] == 0.0);
        }
        engine.try_schedule(&pod);
    }
    assert!(zeros > 0, "no placement left fragmentation as it was: the check above saw no zero");
}

/// Each group keeps the fragmentation it was measured at; a new workload measures it again.
#[test]
fn a_group_measures_its_fragmentation_again_under_a_new_workload() {
    let mut engine = Engine::new(Policy::Yiyun, 7);
    let mut node = Node::new(
        "n",
        Resources { cpu_milli: 32_000, memory_bytes: 64 << 30, pods: 110, ..Default::default() },
    );
    node.gpus = 3;
    engine.upsert_node(node);
    let mut pod = Pod::new("p", Resources::new(4_000, 1 << 30));
    pod.gpu = GpuRequest::Whole(1);
    let shape = |cpu_milli, gpu| (Shape { cpu_milli, gpu, gpu_models: Vec::new() }, 1.0);
    // Under one-GPU pods alone the three GPUs are all usable; beside four-GPU pods they are
    // half lost already, and less so once the pod takes one.
    let ones = Workload::from_counts([shape(4_000, GpuRequest::Whole(1))], 1.0);
    let fours = Workload::from_counts(
        [shape(4_000, GpuRequest::Fraction(500)), shape(16_000, GpuRequest::Whole(4))],
        1.0,
    );
    let mut memo = FxHashMap::default();
    let mut scores = Vec::new();
    for workload in [ones, fours] {
        engine.set_workload(workload);
        let scoring = scoring(&engine);
        let group = engine.groups.iter().find(|group| !group.members.is_empty()).expect("the node's group");
        let cached = score_group(&scoring, &pod, group, 0, 0.0, &mut memo).0;
        let unmeasured = Group {
            bucket: group.bucket,
            position: group.position,
            key: group.key.clone(),
            members: group.members.clone(),
            fragmentation: Cell::new([(NOT_MEASURED, 0.0); 2]),
        };
        assert_eq!(cached, score_group(&scoring, &pod, &unmeasured, 0, 0.0, &mut FxHashMap::default()).0);
        scores.push(cached);
    }
    assert_ne!(scores[0], scores[1], "the two workloads score the node alike: the test shows nothing");
}
