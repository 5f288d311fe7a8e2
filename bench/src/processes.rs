//! Schedulers the benchmarks run as processes of their own, each stopped when dropped (what
//! they log goes to `yiyun-bench-<name>.log` in the temporary directory), and local clusters
//! brought up for one run, each taken down when dropped.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use crate::Error;

/// A scheduler process, killed when dropped.
pub(crate) struct Process(pub(crate) Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn log(name: &str) -> std::io::Result<std::fs::File> {
    std::fs::File::create(std::env::temp_dir().join(format!("yiyun-bench-{name}.log")))
}

/// The kubeconfig of the cluster the benchmarks run on, from `KUBECONFIG`.
pub(crate) fn kubeconfig() -> Result<PathBuf, Error> {
    std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .ok_or_else(|| Error::Setup("KUBECONFIG is not set".into()))
}

/// kube-scheduler from `binary` on the cluster of `kubeconfig` with the client limits given,
/// without leader election.
pub(crate) fn kube_scheduler(
    binary: &Path,
    kubeconfig: &Path,
    qps: u32,
    burst: u32,
) -> Result<Process, Error> {
    let kubeconfig = kubeconfig.display();
    let file = std::env::temp_dir().join(format!("yiyun-bench-kube-scheduler-{qps}.yaml"));
    std::fs::write(
        &file,
        format!(
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n\
             clientConnection:\n  kubeconfig: {kubeconfig}\n  qps: {qps}\n  burst: {burst}\n\
             leaderElection:\n  leaderElect: false\n"
        ),
    )?;
    let child = Command::new(binary)
        .args(["--config", &file.display().to_string(), "--secure-port", "0"])
        .stdout(Stdio::null())
        .stderr(log("kube-scheduler")?)
        .spawn()?;
    Ok(Process(child))
}

/// yiyun-scheduler from this very binary, without leader election, with `extra` flags.
pub(crate) fn yiyun_scheduler(extra: &[&str]) -> Result<Process, Error> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(std::env::current_exe()?)
        .args(["scheduler", "--leader-elect=false", "--admin-addr", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log("yiyun-scheduler")?)
        .spawn()?;
    Ok(Process(child))
}

/// A local cluster of its own for one run, taken down when dropped.
pub(crate) struct Cluster {
    script: PathBuf,
    name: String,
    pub(crate) kubeconfig: PathBuf,
}

impl Cluster {
    pub(crate) fn up(script: &Path) -> Result<Cluster, Error> {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("perf-{}-{run}", std::process::id());
        crate::progress(&format!("starting local cluster {name} (about 10 s)"));
        // Taken down when dropped, also if it fails to come up.
        let mut cluster =
            Cluster { script: script.to_path_buf(), name: name.clone(), kubeconfig: PathBuf::new() };
        // `up` says what it does on stderr and prints the cluster's environment on stdout.
        let output = std::process::Command::new(script)
            .args(["up", &name])
            .stderr(std::process::Stdio::inherit())
            .output()?;
        if !output.status.success() {
            return Err(Error::Setup(format!("{} up {name} failed", script.display())));
        }
        cluster.kubeconfig = String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|line| line.strip_prefix("export KUBECONFIG=").map(PathBuf::from))
            .ok_or_else(|| Error::Setup(format!("{} up {name} names no KUBECONFIG", script.display())))?;
        Ok(cluster)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.script)
            .args(["down", &self.name])
            .stdout(std::process::Stdio::null())
            .status();
    }
}
