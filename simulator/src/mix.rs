//! Workload mixes derived from a shared pod list the way the FGD paper derives its variants: a
//! share of GPU pods pinned to GPU models, sharing a GPU, or asking for several GPUs, or extra
//! CPU-only pods. The same base list, family, share and seed give the same list on every machine,
//! so a mix nobody tuned on can be studied again. Only the shared lists have published figures.

use std::fmt;

use yiyun_engine::{model::GpuRequest, rng::Rng};

use crate::{
    Error,
    trace::{TraceNode, TracePod},
};

/// What a mix changes in the base list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `share`% of GPU pods may only use one GPU model (drawn by installed GPUs among the models
    /// with a node that can hold the pod).
    GpuSpec,
    /// `share`% of GPU pods take a fraction of one GPU (the rest whole GPUs).
    GpuShare,
    /// `share`% of GPU pods ask for two or more GPUs (the rest one GPU or a fraction).
    MultiGpu,
    /// CPU-only pods make up `share`% of all pods (GPU pods kept as they are).
    CpuOnly,
}

impl Family {
    const ALL: [Family; 4] = [Family::GpuSpec, Family::GpuShare, Family::MultiGpu, Family::CpuOnly];

    pub fn name(self) -> &'static str {
        match self {
            Family::GpuSpec => "gpuspec",
            Family::GpuShare => "gpushare",
            Family::MultiGpu => "multigpu",
            Family::CpuOnly => "cpuonly",
        }
    }
}

/// A generated workload mix: `family` at `share` percent, drawn with `seed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    pub family: Family,
    pub share: u8,
    pub seed: u64,
}

impl fmt::Display for Mix {
    /// `gpuspec-20`: a dash keeps generated mixes apart from the shared lists (`gpushare40`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.family.name(), self.share)
    }
}

impl Mix {
    /// Parses `family-share`, e.g. `gpuspec-20` (share 1–99 percent).
    pub fn parse(text: &str, seed: u64) -> Result<Mix, Error> {
        let expected = || {
            let families: Vec<&str> = Family::ALL.iter().map(|family| family.name()).collect();
            format!(
                "mix `{text}`: expected FAMILY-SHARE with FAMILY one of {} and SHARE a percentage from 1 to 99, e.g. gpuspec-20",
                families.join(", ")
            )
        };
        let (family, share) = text.split_once('-').ok_or_else(|| Error::Config(expected()))?;
        let family = Family::ALL
            .into_iter()
            .find(|candidate| candidate.name() == family)
            .ok_or_else(|| Error::Config(expected()))?;
        let share = share.parse::<u8>().ok().filter(|share| (1..=99).contains(share));
        let share = share.ok_or_else(|| Error::Config(expected()))?;
        Ok(Mix { family, share, seed })
    }

    /// The mix's pod list, as long as `base` (CPU-only mixes: as many GPU pods as `base`).
    pub fn generate(&self, base: &[TracePod], nodes: &[TraceNode]) -> Result<Vec<TracePod>, Error> {
        let mut rng = Rng::new(self.seed);
        let share = f64::from(self.share) / 100.0;
        let gpu_pods: Vec<&TracePod> = base.iter().filter(|pod| pod.gpu != GpuRequest::None).collect();
        let cpu_pods: Vec<&TracePod> = base.iter().filter(|pod| pod.gpu == GpuRequest::None).collect();
        let pool = |keep: &dyn Fn(&TracePod) -> bool| -> Vec<&TracePod> {
            gpu_pods.iter().copied().filter(|pod| keep(pod)).collect()
        };
        let missing =
            |what: &str| Error::Config(format!("mix {self}: the base list has no {what} to draw from"));
        let mut list: Vec<TracePod> = match self.family {
            Family::GpuSpec => base.to_vec(),
            Family::GpuShare | Family::MultiGpu => {
                let (chosen, rest) = match self.family {
                    Family::GpuShare => (
                        pool(&|pod| matches!(pod.gpu, GpuRequest::Fraction(_))),
                        pool(&|pod| matches!(pod.gpu, GpuRequest::Whole(_))),
                    ),
                    _ => (
                        pool(&|pod| matches!(pod.gpu, GpuRequest::Whole(count) if count > 1)),
                        pool(&|pod| !matches!(pod.gpu, GpuRequest::Whole(count) if count > 1)),
                    ),
                };
                if chosen.is_empty() || rest.is_empty() {
                    return Err(missing("pods of one of the two kinds the share splits"));
                }
                let mut list: Vec<TracePod> = cpu_pods.iter().map(|&pod| pod.clone()).collect();
                for _ in 0..gpu_pods.len() {
                    let from = if draw(&mut rng, share) { &chosen } else { &rest };
                    list.push(from[rng.below(from.len() as u64) as usize].clone());
                }
                list
            }
            Family::CpuOnly => {
                if cpu_pods.is_empty() {
                    return Err(missing("CPU-only pods"));
                }
                let wanted = (gpu_pods.len() as f64 * share / (1.0 - share)).round() as usize;
                let mut list: Vec<TracePod> = gpu_pods.iter().map(|&pod| pod.clone()).collect();
                list.extend((0..wanted).map(|_| cpu_pods[rng.below(cpu_pods.len() as u64) as usize].clone()));
                list
            }
        };
        if self.family == Family::GpuSpec {
            for pod in list.iter_mut().filter(|pod| pod.gpu != GpuRequest::None) {
                if draw(&mut rng, share) {
                    pod.gpu_models = pinned_model(pod, nodes, &mut rng).into_iter().collect();
                }
            }
        }
        for (index, pod) in list.iter_mut().enumerate() {
            pod.name = format!("{self}-{index:05}");
        }
        Ok(list)
    }
}

/// True with probability `share`.
fn draw(rng: &mut Rng, share: f64) -> bool {
    ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < share
}

/// A GPU model for `pod`, drawn in proportion to the GPUs installed of each model on nodes that
/// could hold the pod alone; none when no node can.
fn pinned_model(pod: &TracePod, nodes: &[TraceNode], rng: &mut Rng) -> Option<String> {
    let (count, _) = pod.gpu.per_device();
    let mut models: Vec<(&str, u64)> = Vec::new();
    for node in nodes {
        let Some(model) = node.model.as_deref() else { continue };
        if node.gpus < count || node.cpu_milli < pod.cpu_milli || node.memory_mib < pod.memory_mib {
            continue;
        }
        match models.iter_mut().find(|(name, _)| *name == model) {
            Some((_, gpus)) => *gpus += u64::from(node.gpus),
            None => models.push((model, u64::from(node.gpus))),
        }
    }
    models.sort();
    let total: u64 = models.iter().map(|(_, gpus)| gpus).sum();
    if total == 0 {
        return None;
    }
    let mut pick = rng.below(total);
    models.into_iter().find_map(|(model, gpus)| {
        if pick < gpus {
            Some(model.to_string())
        } else {
            pick -= gpus;
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::fixtures::{node, pod};

    fn base() -> Vec<TracePod> {
        let mut pods = Vec::new();
        for index in 0..400 {
            pods.push(pod(&format!("whole{index}"), 8000, GpuRequest::Whole(1)));
            pods.push(pod(&format!("half{index}"), 4000, GpuRequest::Fraction(500)));
            pods.push(pod(&format!("cpu{index}"), 16000, GpuRequest::None));
        }
        pods.extend((0..100).map(|index| pod(&format!("eight{index}"), 64_000, GpuRequest::Whole(8))));
        pods
    }

    fn share_of(pods: &[TracePod], keep: impl Fn(&TracePod) -> bool) -> f64 {
        let gpu: Vec<&TracePod> = pods.iter().filter(|pod| pod.gpu != GpuRequest::None).collect();
        gpu.iter().filter(|pod| keep(pod)).count() as f64 / gpu.len() as f64
    }

    #[test]
    fn names_parse_and_bad_ones_say_what_is_expected() {
        let mix = Mix::parse("gpushare-60", 7).expect("valid");
        assert_eq!(mix, Mix { family: Family::GpuShare, share: 60, seed: 7 });
        assert_eq!(mix.to_string(), "gpushare-60");
        for bad in ["gpushare60", "gpu-20", "cpuonly-0", "multigpu-100", "gpuspec-x"] {
            let err = Mix::parse(bad, 1).expect_err(bad).to_string();
            assert!(err.starts_with(&format!("mix `{bad}`: expected FAMILY-SHARE")), "{err}");
        }
    }

    #[test]
    fn each_family_hits_its_share_and_repeats_with_its_seed() {
        let (base, nodes) = (base(), vec![node("a", 64_000, 8, "G2"), node("b", 64_000, 2, "T4")]);
        let generate =
            |text: &str, seed: u64| Mix::parse(text, seed).and_then(|mix| mix.generate(&base, &nodes));
        let shared = generate("gpushare-70", 1).expect("gpushare");
        assert_eq!(shared.len(), base.len());
        assert!((share_of(&shared, |pod| matches!(pod.gpu, GpuRequest::Fraction(_))) - 0.7).abs() < 0.05);
        let multi = generate("multigpu-40", 1).expect("multigpu");
        assert!((share_of(&multi, |pod| matches!(pod.gpu, GpuRequest::Whole(8))) - 0.4).abs() < 0.05);
        let cpu = generate("cpuonly-50", 1).expect("cpuonly");
        let cpu_share =
            cpu.iter().filter(|pod| pod.gpu == GpuRequest::None).count() as f64 / cpu.len() as f64;
        assert!((cpu_share - 0.5).abs() < 0.01, "{cpu_share}");
        assert_eq!(cpu.iter().filter(|pod| pod.gpu != GpuRequest::None).count(), 900);
        let pinned = generate("gpuspec-30", 1).expect("gpuspec");
        assert!((share_of(&pinned, |pod| !pod.gpu_models.is_empty()) - 0.3).abs() < 0.05);
        // Eight-GPU pods only on the eight-GPU model; CPU-only pods never pinned.
        assert!(
            pinned
                .iter()
                .filter(|pod| pod.gpu == GpuRequest::Whole(8))
                .all(|pod| pod.gpu_models.is_empty() || pod.gpu_models == ["G2"])
        );
        assert!(pinned.iter().filter(|pod| pod.gpu == GpuRequest::None).all(|pod| pod.gpu_models.is_empty()));
        assert_eq!(generate("gpuspec-30", 1).expect("again"), pinned);
        assert_ne!(generate("gpuspec-30", 2).expect("other seed"), pinned);
    }

    #[test]
    fn a_base_without_the_pods_a_family_draws_from_is_a_clear_error() {
        let base = vec![pod("a", 1000, GpuRequest::Whole(1))];
        let err =
            Mix::parse("cpuonly-20", 1).and_then(|mix| mix.generate(&base, &[])).expect_err("no CPU pods");
        assert_eq!(err.to_string(), "mix cpuonly-20: the base list has no CPU-only pods to draw from");
    }
}
