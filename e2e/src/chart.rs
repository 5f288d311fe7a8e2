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
