//! What the measurements of a policy say: replication lag over the last hour, the achieved
//! RPO, and the conditions an admin reads (`Protected`, `Degraded` with its reason).

use std::{collections::VecDeque, time::Duration};

use super::durations;

/// Lags of the last `span` seconds, for their percentiles.
#[derive(Clone, Debug)]
pub struct LagWindow {
    span: f64,
    samples: VecDeque<(f64, f64)>,
}

impl LagWindow {
    /// Keeps the samples of the last `span` seconds.
    pub fn new(span: f64) -> Self {
        LagWindow { span, samples: VecDeque::new() }
    }

    /// A change applied at `at` (seconds on any clock), `lag` seconds after it was seen.
    pub fn record(&mut self, at: f64, lag: f64) {
        self.samples.push_back((at, lag));
        self.forget_before(at - self.span);
    }

    fn forget_before(&mut self, start: f64) {
        while self.samples.front().is_some_and(|(at, _)| *at < start) {
            self.samples.pop_front();
        }
    }

    /// The `q` quantile (0..=1) of the lags of the span before `now`; `None` without samples.
    pub fn quantile(&mut self, now: f64, q: f64) -> Option<f64> {
        self.forget_before(now - self.span);
        let mut lags: Vec<f64> = self.samples.iter().map(|(_, lag)| *lag).collect();
        if lags.is_empty() {
            return None;
        }
        lags.sort_by(f64::total_cmp);
        // Nearest rank: the smallest lag with at least q of the samples at or below it.
        let rank = ((q * lags.len() as f64).ceil() as usize).clamp(1, lags.len());
        Some(lags[rank - 1])
    }
}

/// What the controller knows of a policy now.
#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    pub achieved_rpo_seconds: f64,
    pub rpo_target_seconds: u64,
    /// Why the standby cannot be written, if it cannot.
    pub unreachable: Option<String>,
    /// The standby answers again after missing writes; the namespace is being compared in full.
    pub catching_up: bool,
    /// Copies edited by hand on the standby.
    pub conflicts: usize,
    /// The standby serves now (failed over): nothing is replicated until failback.
    pub failed_over: bool,
}

/// A condition's status, reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub holds: bool,
    pub reason: &'static str,
    pub message: String,
}

/// `Protected`: the standby holds a copy within the RPO target.
pub fn protected(health: &Health) -> Verdict {
    let rpo = durations::format(health.achieved_rpo_seconds.ceil() as u64);
    let target = durations::format(health.rpo_target_seconds);
    if health.failed_over {
        return Verdict {
            holds: false,
            reason: "FailedOver",
            message: "the standby serves the workloads; nothing is protected until failback".into(),
        };
    }
    if health.achieved_rpo_seconds > health.rpo_target_seconds as f64 {
        return Verdict {
            holds: false,
            reason: "RPOBreached",
            message: format!("the standby's copy is {rpo} old, over the RPO target of {target}"),
        };
    }
    Verdict { holds: true, reason: "WithinRPO", message: format!("achieved RPO {rpo}, target {target}") }
}

/// `Degraded`: something keeps the copy from being whole or current, the worst first.
pub fn degraded(health: &Health) -> Verdict {
    if let Some(why) = &health.unreachable {
        return Verdict {
            holds: true,
            reason: "TargetUnreachable",
            message: format!(
                "the standby cannot be written ({why}); changes are kept and copied once it answers"
            ),
        };
    }
    if health.catching_up {
        return Verdict {
            holds: true,
            reason: "CatchingUp",
            message:
                "the standby answers again after missing writes; the namespace is being compared in full"
                    .into(),
        };
    }
    if health.achieved_rpo_seconds > health.rpo_target_seconds as f64 && !health.failed_over {
        return Verdict { holds: true, reason: "RPOBreached", message: protected(health).message };
    }
    if health.conflicts > 0 {
        return Verdict {
            holds: true,
            reason: "Conflicts",
            message: format!(
                "{} copies were edited by hand on the standby and are left as they are (see status.conflicts)",
                health.conflicts
            ),
        };
    }
    Verdict { holds: false, reason: "Healthy", message: "every change reaches the standby".into() }
}

/// How long to wait before trying an unreachable standby again after `failures` failures in a
/// row: from one second, doubling, to a minute.
pub fn retry_delay(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_a_minute() {
        let delays: Vec<u64> = (1..=9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn quantiles_cover_the_last_span_only() {
        let mut window = LagWindow::new(3_600.0);
        for i in 0..100 {
            window.record(f64::from(i), f64::from(i) / 100.0);
        }
        assert_eq!(window.quantile(100.0, 0.99), Some(0.98));
        assert_eq!(window.quantile(100.0, 0.5), Some(0.49));
        window.record(4_000.0, 5.0);
        assert_eq!(window.quantile(4_000.0, 0.99), Some(5.0), "the old samples left the window");
        assert_eq!(window.quantile(9_000.0, 0.99), None);
    }

    fn health() -> Health {
        Health {
            achieved_rpo_seconds: 1.2,
            rpo_target_seconds: 30,
            unreachable: None,
            catching_up: false,
            conflicts: 0,
            failed_over: false,
        }
    }

    #[test]
    fn within_the_target_it_is_protected_and_healthy() {
        let verdict = protected(&health());
        assert!(verdict.holds);
        assert_eq!(verdict.message, "achieved RPO 2s, target 30s");
        assert!(!degraded(&health()).holds);
    }

    #[test]
    fn the_worst_reason_is_shown_first() {
        let late = Health { achieved_rpo_seconds: 95.0, conflicts: 2, ..health() };
        assert_eq!(protected(&late).reason, "RPOBreached");
        assert_eq!(degraded(&late).reason, "RPOBreached");
        let unreachable = Health { unreachable: Some("connection refused".into()), ..late.clone() };
        assert_eq!(degraded(&unreachable).reason, "TargetUnreachable");
        let back = Health { catching_up: true, ..late.clone() };
        assert_eq!(degraded(&back).reason, "CatchingUp", "back, it says so until the full comparison");
        let conflicts = Health { conflicts: 2, ..health() };
        assert_eq!(degraded(&conflicts).reason, "Conflicts");
        assert!(protected(&conflicts).holds);
    }

    #[test]
    fn failed_over_is_not_protected_but_not_breached() {
        let failed_over = Health { achieved_rpo_seconds: 500.0, failed_over: true, ..health() };
        assert_eq!(protected(&failed_over).reason, "FailedOver");
        assert!(!degraded(&failed_over).holds);
    }
}
