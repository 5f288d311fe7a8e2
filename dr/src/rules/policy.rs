//! A policy's targets by GB/T 20988 level, and what is wrong with a policy, field by field.

use yiyun_crds::{ReplicationMode, ReplicationPolicySpec};

use super::{durations, objects};

/// What a level demands: the loosest RPO and RTO it allows, which are also its defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelTargets {
    pub rpo_seconds: u64,
    pub rto_seconds: u64,
    /// Whether the level needs every change transferred as it happens (real-time transfer).
    pub continuous: bool,
}

/// The default targets of each level (GB/T 20988: 1 weekly backup off site; 2 daily backup and
/// a backup site; 3 electronic transfer several times a day; 4 complete standby equipment;
/// 5 real-time transfer, RPO up to 30 minutes; 6 zero data loss, RTO in minutes). A policy
/// may set tighter targets, never looser ones.
///
/// Level 6's "zero data loss" needs synchronous replication of the data itself (storage, or
/// databases in two same-city centres); yiyun's copy of the Kubernetes objects is asynchronous,
/// so its level-6 RPO target is the smallest it can keep (10 s), not zero.
pub fn level_targets(level: i32) -> Option<LevelTargets> {
    const HOUR: u64 = 3_600;
    const DAY: u64 = 24 * HOUR;
    let (rpo_seconds, rto_seconds, continuous) = match level {
        1 => (7 * DAY, 7 * DAY, false),
        2 => (DAY, 2 * DAY, false),
        3 => (12 * HOUR, DAY, false),
        4 => (HOUR, 4 * HOUR, false),
        5 => (30 * 60, HOUR, true),
        6 => (10, 15 * 60, true),
        _ => return None,
    };
    Some(LevelTargets { rpo_seconds, rto_seconds, continuous })
}

/// A policy's effective settings, once it is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets {
    pub rpo_seconds: u64,
    pub rto_seconds: u64,
    /// For scheduled copies: the interval.
    pub every_seconds: Option<u64>,
    /// How long a copy of a deleted object stays on the standby.
    pub keep_deleted_seconds: u64,
    pub drills_kept: usize,
}

/// What is wrong with one field of a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The policy's targets, or every problem found (each naming its field).
pub fn validate(spec: &ReplicationPolicySpec) -> Result<Targets, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut problem = |field: &'static str, message: String| problems.push(Problem { field, message });
    let Some(level) = level_targets(spec.level) else {
        problem("spec.level", format!("{} is not a GB/T 20988 level (1 to 6)", spec.level));
        return Err(problems);
    };
    let mut target = |field: &'static str, given: Option<&String>, loosest: u64, what: &str| -> u64 {
        let Some(text) = given else { return loosest };
        match durations::parse(text) {
            Ok(seconds) if seconds > loosest => {
                problem(
                    field,
                    format!(
                        "{text} is looser than level {} allows for the {what} (at most {}); tighten it or lower spec.level",
                        spec.level,
                        durations::format(loosest)
                    ),
                );
                loosest
            }
            Ok(seconds) => seconds,
            Err(message) => {
                problem(field, message);
                loosest
            }
        }
    };
    let rpo_seconds = target("spec.rpo", spec.rpo.as_ref(), level.rpo_seconds, "RPO");
    let rto_seconds = target("spec.rto", spec.rto.as_ref(), level.rto_seconds, "RTO");
    let every_seconds = match (spec.mode, &spec.schedule) {
        (ReplicationMode::Continuous, _) => None,
        (ReplicationMode::Scheduled, None) => {
            problem("spec.schedule", "scheduled replication needs spec.schedule.every (e.g. 1h)".into());
            None
        }
        (ReplicationMode::Scheduled, Some(schedule)) => match durations::parse(&schedule.every) {
            Ok(0) => {
                problem("spec.schedule.every", "must be longer than 0s".into());
                None
            }
            Ok(every) => Some(every),
            Err(message) => {
                problem("spec.schedule.every", message);
                None
            }
        },
    };
    if spec.mode == ReplicationMode::Scheduled && level.continuous {
        problem(
            "spec.mode",
            format!(
                "level {} needs real-time transfer of every change: use mode continuous, or a level of 4 or lower",
                spec.level
            ),
        );
    }
    if let Some(every) = every_seconds
        && every > rpo_seconds
    {
        problem(
            "spec.schedule.every",
            format!(
                "a copy every {} cannot keep an RPO of {}: copy at least that often",
                durations::format(every),
                durations::format(rpo_seconds)
            ),
        );
    }
    for (field, selection) in [("spec.include.kinds", &spec.include), ("spec.exclude.kinds", &spec.exclude)] {
        for kind in selection.iter().flat_map(|s| &s.kinds) {
            if objects::kind(kind).is_none() {
                problem(
                    field,
                    format!(
                        "{kind} is not a kind yiyun replicates (it replicates {})",
                        objects::kind_names()
                    ),
                );
            }
        }
    }
    let retention = spec.retention.clone().unwrap_or_default();
    let keep_deleted_seconds = match retention.deleted.as_deref().map(durations::parse) {
        None => 0,
        Some(Ok(seconds)) => seconds,
        Some(Err(message)) => {
            problem("spec.retention.deleted", message);
            0
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Targets {
        rpo_seconds,
        rto_seconds,
        every_seconds,
        keep_deleted_seconds,
        drills_kept: usize::try_from(retention.drills.unwrap_or(10)).unwrap_or(10),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> ReplicationPolicySpec {
        let base = "target: {kubeconfigSecret: {name: standby}, site: west}\n";
        serde_saphyr::from_str(&format!("{base}{yaml}")).expect("a valid spec")
    }

    #[test]
    fn the_level_sets_the_targets() {
        let targets = validate(&spec("level: 5")).unwrap();
        assert_eq!((targets.rpo_seconds, targets.rto_seconds), (1_800, 3_600));
        assert_eq!(targets.every_seconds, None);
        assert_eq!(targets.keep_deleted_seconds, 0);
        assert_eq!(targets.drills_kept, 10);
    }

    #[test]
    fn tighter_targets_are_kept() {
        let targets = validate(&spec("level: 5\nrpo: 30s\nrto: 10m")).unwrap();
        assert_eq!((targets.rpo_seconds, targets.rto_seconds), (30, 600));
    }

    #[test]
    fn a_looser_rpo_than_the_level_allows_names_the_field() {
        let problems = validate(&spec("level: 5\nrpo: 2h")).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "spec.rpo");
        assert!(problems[0].message.contains("at most 30m"), "{}", problems[0]);
    }

    #[test]
    fn high_levels_need_continuous_replication() {
        let problems = validate(&spec("level: 6\nmode: scheduled\nschedule: {every: 5s}")).unwrap_err();
        assert_eq!(problems.iter().map(|p| p.field).collect::<Vec<_>>(), ["spec.mode"]);
    }

    #[test]
    fn a_schedule_slower_than_the_rpo_is_a_contradiction() {
        let problems = validate(&spec("level: 4\nmode: scheduled\nschedule: {every: 2h}")).unwrap_err();
        assert_eq!(problems[0].field, "spec.schedule.every");
        assert!(problems[0].message.contains("cannot keep an RPO of 1h"), "{}", problems[0]);
        let targets = validate(&spec("level: 3\nmode: scheduled\nschedule: {every: 6h}")).unwrap();
        assert_eq!(targets.every_seconds, Some(21_600));
    }

    #[test]
    fn unknown_kinds_and_levels_are_named() {
        let problems = validate(&spec("level: 3\ninclude: {kinds: [Deployment, Widget]}")).unwrap_err();
        assert_eq!(problems[0].field, "spec.include.kinds");
        assert!(problems[0].message.starts_with("Widget is not a kind"));
        let problems = validate(&spec("level: 7")).unwrap_err();
        assert_eq!(problems[0].field, "spec.level");
    }
}
