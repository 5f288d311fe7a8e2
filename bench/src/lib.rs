//! Benchmarks of yiyun against a real cluster (`KUBECONFIG`), printed as tables. Each compares
//! against a baseline measured in the same run.

pub mod tenancy;

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out: {0}")]
    Timeout(String),
}

/// Progress on stderr, so the table on stdout stays clean.
fn progress(message: &str) {
    eprintln!("[bench] {message}");
}
