//! The chart as the tests use it: rendered by helm (built from the Go module proxy by
//! `e2e/build-binaries.sh`) with every component on, so a test applies exactly what
//! `helm install` would.

use std::{path::PathBuf, process::Command};

use crate::{cached_binary, repo_path};

/// Where the e2e tests install yiyun's ServiceAccounts and Leases.
pub const NAMESPACE: &str = "yiyun-system";

/// Values that turn every component on (the Secrets they name need not exist to render).
pub const EVERY_COMPONENT: &[&str] = &[
    "billing.enabled=true",
    "billing.database.existingSecret=yiyun-ledger",
    "api.enabled=true",
    "api.tlsSecret=yiyun-api-tls",
    "dr.enabled=true",
];

pub fn helm() -> PathBuf {
    cached_binary("helm", "HELM_VERSION")
}

pub fn chart_dir() -> PathBuf {
    repo_path("charts/yiyun")
}

/// `helm <args>`: whether it succeeded, and what it printed (stdout, then stderr).
pub fn helm_run(args: &[&str]) -> (bool, String) {
    let out = Command::new(helm()).args(args).output().expect("run helm");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `templates/<template>` of the chart, rendered as release `yiyun` in [`NAMESPACE`] with every
/// component on.
pub fn render(template: &str) -> String {
    let chart = chart_dir();
    let mut args = vec!["template", "yiyun", chart.to_str().expect("a path"), "--namespace", NAMESPACE];
    for value in EVERY_COMPONENT {
        args.extend(["--set", value]);
    }
    let show = format!("templates/{template}");
    args.extend(["--show-only", &show]);
    let (ok, out) = helm_run(&args);
    assert!(ok, "helm renders {template}: {out}");
    out
}

/// The sample names a `/metrics` page (Prometheus's text format) can hold: each family's name
/// from its `# TYPE` line, a histogram's with `_bucket`, `_sum` and `_count`. Families without
/// samples yet count: their names are as stable as the others'.
pub fn exposed_names(metrics: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in metrics.lines() {
        let Some(declared) = line.strip_prefix("# TYPE ") else { continue };
        let mut words = declared.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else { continue };
        if kind == "histogram" {
            names.extend(["_bucket", "_sum", "_count"].map(|suffix| format!("{name}{suffix}")));
        } else {
            names.insert(name.to_string());
        }
    }
    names
}

/// The families a `/metrics` page declares (`# TYPE` lines), by the name documentation gives.
pub fn families(metrics: &str) -> std::collections::BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split_whitespace().next().map(String::from))
        .collect()
}

/// What yiyun metrics a rule file or dashboard reads: the names it spells out, and the patterns
/// it selects names by (`{__name__=~"…"}`).
pub fn referenced_metrics(text: &str) -> (std::collections::BTreeSet<String>, Vec<String>) {
    let name = regex::Regex::new(r"\byiyun_[a-z0-9_]*[a-z0-9]\b").expect("a regex");
    let pattern = regex::Regex::new(r#"__name__=~\\?"([^"\\]+)\\?""#).expect("a regex");
    let patterns: Vec<String> = pattern.captures_iter(text).map(|c| c[1].to_string()).collect();
    let names = name
        .find_iter(text)
        .filter(|found| !patterns.iter().any(|p| p.contains(found.as_str())))
        .map(|found| found.as_str().to_string())
        .collect();
    (names, patterns)
}

/// What of `text`'s references no component exposes: names missing, and patterns matching no name.
pub fn unknown_metrics(text: &str, exposed: &std::collections::BTreeSet<String>) -> Vec<String> {
    let (names, patterns) = referenced_metrics(text);
    let mut unknown: Vec<String> = names.into_iter().filter(|name| !exposed.contains(name)).collect();
    for pattern in patterns {
        let anchored = regex::Regex::new(&format!("^(?:{pattern})$")).expect("a valid pattern");
        if !exposed.iter().any(|name| anchored.is_match(name)) {
            unknown.push(format!("__name__=~\"{pattern}\""));
        }
    }
    unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP yiyun_scheduler_bound_total Pods bound.\n# TYPE yiyun_scheduler_bound_total counter\nyiyun_scheduler_bound_total 3\n# HELP yiyun_scheduler_bind_duration_seconds Binding.\n# TYPE yiyun_scheduler_bind_duration_seconds histogram\n# TYPE yiyun_scheduler_leader gauge\n";

    #[test]
    fn names_come_from_type_lines_with_a_histograms_series() {
        let names = exposed_names(PAGE);
        assert!(names.contains("yiyun_scheduler_bound_total"));
        assert!(names.contains("yiyun_scheduler_bind_duration_seconds_bucket"));
        assert!(!names.contains("yiyun_scheduler_bind_duration_seconds"), "a histogram has no bare series");
        assert!(families(PAGE).contains("yiyun_scheduler_bind_duration_seconds"));
    }

    #[test]
    fn unknown_names_and_patterns_are_reported_and_known_ones_are_not() {
        let exposed = exposed_names(PAGE);
        let rules = r#"expr: rate(yiyun_scheduler_bound_total[5m]) + yiyun_scheduler_bounds
  sum(label_replace({__name__=~"yiyun_(scheduler|dr)_leader"}, "c", "$1", "__name__", "yiyun_(.+)_leader"))
  {__name__=~\"yiyun_billing_leader\"}"#;
        assert_eq!(
            unknown_metrics(rules, &exposed),
            ["yiyun_scheduler_bounds", r#"__name__=~"yiyun_billing_leader""#],
            "a typo and a pattern matching nothing; the label_replace regex is not a selector"
        );
    }
}
