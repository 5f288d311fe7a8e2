//! Leader election on a `coordination.k8s.io/v1` Lease with client-go's semantics: one replica
//! writes, standbys wait.
//!
//! - A standby judges the lease expired by its own monotonic clock: `leaseDuration` after it
//!   last saw the lease record change, never by comparing the holder's `renewTime` with its own
//!   wall clock (clocks of two machines differ; a paused process's does not stop).
//! - The leader gives up once it has not renewed for `renew_deadline`, which is shorter than
//!   the lease duration, so it has stopped before any standby can take over. It measures from
//!   when it sent its last successful renewal, the earliest moment a standby can have seen it.
//! - Every API call has a deadline; a hung call cannot keep a leader believing it leads.
//! - Losing the lease ends the [`Leadership`] handle: a component sends every write through
//!   [`Leadership::while_leading`], which refuses to start one past the renew deadline (even
//!   before the renewal loop has run again, as after SIGSTOP) and drops the ones in flight.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use prometheus_client::{metrics::gauge::Gauge, registry::Registry};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Leader election flags, the same for every component (`--leader-elect`, `--lease-*`).
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Lead through a Lease so that standbys can take over; off for a single instance.
    #[arg(long, env = "YIYUN_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the Lease.
    #[arg(long, env = "YIYUN_LEASE_NAMESPACE", default_value = "yiyun-system")]
    pub lease_namespace: String,
    /// Name of the Lease; the component's name (`yiyun-controller`, `yiyun-scheduler`) by default.
    #[arg(long, env = "YIYUN_LEASE_NAME")]
    pub lease_name: Option<String>,
    /// Identity in the Lease; the host name and process id by default.
    #[arg(long, env = "YIYUN_LEASE_IDENTITY")]
    pub identity: Option<String>,
    /// Seconds standbys wait after the lease last changed before taking it.
    #[arg(long, env = "YIYUN_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Seconds the leader keeps leading without a successful renewal (below the lease duration).
    #[arg(long, env = "YIYUN_RENEW_DEADLINE_SECONDS", default_value_t = 10)]
    pub renew_deadline_seconds: u64,
    /// Seconds between renewals and between a standby's attempts.
    #[arg(long, env = "YIYUN_RETRY_PERIOD_SECONDS", default_value_t = 2)]
    pub retry_period_seconds: u64,
}

/// Registers the gauge `leader`: 1 while this replica leads (holds the lease, or runs alone),
/// 0 while it stands by. Every replica reports, so `sum(…_leader)` is 1 when all is well.
pub fn leader_gauge(registry: &mut Registry) -> Gauge {
    let leading = Gauge::default();
    registry.register("leader", "1 while this replica leads, 0 while it stands by", leading.clone());
    leading
}

impl Args {
    /// The election these flags ask for, `None` with `--leader-elect=false` (this replica then
    /// leads alone: `leading` reads 1 at once). The election sets `leading` as it takes and
    /// loses the lease.
    pub fn election(
        &self,
        client: Client,
        component: &str,
        leading: Gauge,
    ) -> Result<Option<Election>, Error> {
        if !self.leader_elect {
            leading.set(1);
            return Ok(None);
        }
        let timing = Timing {
            lease_duration: Duration::from_secs(self.lease_duration_seconds),
            renew_deadline: Duration::from_secs(self.renew_deadline_seconds),
            retry_period: Duration::from_secs(self.retry_period_seconds),
        }
        .validated()?;
        let name = self.lease_name(component);
        let election = Election::new(client, &self.lease_namespace, &name, &self.identity(), timing);
        Ok(Some(election.reporting_to(leading)))
    }

    /// The Lease's name: `--lease-name`, or the component's. It names the group of replicas
    /// that take over from one another, so what they hand over is kept under it too.
    pub fn lease_name(&self, component: &str) -> String {
        self.lease_name.clone().unwrap_or_else(|| component.to_string())
    }

    /// This replica's identity: `--identity`, or the host name and process id.
    fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        })
    }
}

/// The lease's timing; kube-scheduler's and kube-controller-manager's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long standbys wait after the lease last changed before taking it.
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal; shorter than
    /// `lease_duration`.
    pub renew_deadline: Duration,
    /// How often the leader renews and standbys try.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "leader election needs renew_deadline ({renew:?}) shorter than lease_duration ({lease:?}) and retry_period ({retry:?}) shorter than renew_deadline"
    )]
    Timing { lease: Duration, renew: Duration, retry: Duration },
}

impl Timing {
    /// Checks the ordering client-go insists on: retry period < renew deadline < lease duration.
    pub fn validated(self) -> Result<Self, Error> {
        if self.retry_period < self.renew_deadline && self.renew_deadline < self.lease_duration {
            Ok(self)
        } else {
            Err(Error::Timing {
                lease: self.lease_duration,
                renew: self.renew_deadline,
                retry: self.retry_period,
            })
        }
    }
}

/// The lease record as a candidate last saw it, and when by its own clock it saw it change.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub record: LeaseSpec,
    pub changed_at: Instant,
}

/// Folds a newly read `record` into the previous observation: the time moves only when the
/// record changed. A holder that keeps renewing changes its `renewTime` every retry period.
pub fn observe(previous: Option<Observation>, record: LeaseSpec, now: Instant) -> Observation {
    match previous {
        Some(previous) if previous.record == record => previous,
        _ => Observation { record, changed_at: now },
    }
}

/// The holder, when someone other than `identity` holds the lease and it has not expired by
/// the observer's clock. The lease's own duration counts, as the holder wrote it.
pub fn held_by_another(
    observation: &Observation,
    identity: &str,
    fallback: Duration,
    now: Instant,
) -> Option<String> {
    let holder = observation.record.holder_identity.clone().filter(|h| !h.is_empty() && h != identity)?;
    let duration = observation
        .record
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(fallback, Duration::from_secs);
    (now < observation.changed_at + duration).then_some(holder)
}

/// Whether this process may still write as the leader; cheap to clone into every task.
#[derive(Clone, Debug)]
pub struct Leadership {
    lost: CancellationToken,
    /// The renew deadline: leading until this moment unless renewed; `None` for a process that
    /// leads alone.
    until: Option<Arc<Mutex<Instant>>>,
    /// The metric that tells whether this replica leads.
    leading: Gauge,
}

impl Leadership {
    /// For a single instance without election: always leading.
    pub fn alone() -> Self {
        Leadership { lost: CancellationToken::new(), until: None, leading: Gauge::default() }
    }

    /// Whether the lease is still held by this process's own reckoning.
    fn is_leading(&self) -> bool {
        !self.lost.is_cancelled() && self.until.as_ref().is_none_or(|until| Instant::now() < read(until))
    }

    /// Runs `write` only while leading: `None` when the lease was lost before it started or
    /// while it was in flight (the request is dropped then).
    pub async fn while_leading<F: Future>(&self, write: F) -> Option<F::Output> {
        if !self.is_leading() {
            return None;
        }
        tokio::select! {
            biased;
            _ = self.lost.cancelled() => None,
            output = write => Some(output),
        }
    }

    fn lose(&self) {
        self.lost.cancel();
        self.leading.set(0);
    }
}

fn read(instant: &Mutex<Instant>) -> Instant {
    *instant.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Outcome of a lease attempt.
enum Attempt {
    /// Taken or renewed; the request was sent at this moment.
    Held {
        sent_at: Instant,
    },
    HeldBy(String),
}

/// Leader election for one identity on one lease.
pub struct Election {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    observed: Mutex<Option<Observation>>,
    /// The renew deadline, which the leadership handed out reads too.
    until: Arc<Mutex<Instant>>,
    leadership: Leadership,
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl Election {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, timing: Timing) -> Self {
        // Not leading until the lease is taken.
        let until = Arc::new(Mutex::new(Instant::now()));
        Election {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            timing,
            observed: Mutex::new(None),
            leadership: Leadership {
                lost: CancellationToken::new(),
                until: Some(until.clone()),
                leading: Gauge::default(),
            },
            until,
        }
    }

    /// Reports whether this replica leads to `leading` (0 until the lease is taken).
    pub fn reporting_to(mut self, leading: Gauge) -> Self {
        leading.set(0);
        self.leadership.leading = leading;
        self
    }

    /// The handle the component writes through; valid once [`acquire`](Self::acquire) returned
    /// true, ended when [`keep`](Self::keep) finds the lease lost.
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// Waits until this identity holds the lease, or `shutdown`. Returns whether it leads.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> bool {
        let mut last_holder = String::new();
        loop {
            let attempt = tokio::time::timeout(self.timing.renew_deadline, self.try_acquire()).await;
            match attempt {
                Ok(Ok(Attempt::Held { sent_at })) => {
                    self.renewed(sent_at);
                    self.leadership.leading.set(1);
                    info!(lease = %self.name, identity = %self.identity, "became the leader");
                    return true;
                }
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    if holder != last_holder {
                        info!(lease = %self.name, %holder, "standing by: the lease is held");
                        last_holder = holder;
                    }
                }
                Ok(Err(err)) => warn!(lease = %self.name, error = %err, "cannot read or take the lease"),
                Err(_) => warn!(lease = %self.name, "taking the lease timed out"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(self.timing.retry_period) => {}
            }
        }
    }

    /// Renews the lease until `shutdown`, and returns when it is lost: taken by another, or not
    /// renewed within the renew deadline. The [`Leadership`] ends before this returns. On
    /// shutdown the lease is given up, so a standby takes over at once rather than after the
    /// lease duration (client-go's `ReleaseOnCancel`).
    pub async fn keep(&self, shutdown: &CancellationToken) {
        let leading = &self.leadership;
        loop {
            let deadline = read(&self.until);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    leading.lose();
                    if Instant::now() < deadline {
                        self.release(deadline).await;
                    }
                    return;
                }
                // Paused or starved past the deadline: lost, whatever a renewal would say.
                _ = tokio::time::sleep_until(deadline) => {}
                _ = tokio::time::sleep(self.timing.retry_period) => {}
            }
            if Instant::now() >= deadline {
                warn!(lease = %self.name, "the lease was not renewed within the renew deadline: no longer the leader");
                leading.lose();
                return;
            }
            match tokio::time::timeout_at(deadline, self.try_acquire()).await {
                Ok(Ok(Attempt::Held { sent_at })) => self.renewed(sent_at),
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    warn!(lease = %self.name, %holder, "the lease was taken: no longer the leader");
                    leading.lose();
                    return;
                }
                Ok(Err(err)) => warn!(lease = %self.name, error = %err, "cannot renew the lease"),
                Err(_) => warn!(lease = %self.name, "renewing the lease timed out"),
            }
        }
    }

    /// Empties the holder of a lease this identity still holds; best effort before `deadline`.
    async fn release(&self, deadline: Instant) {
        let released = async {
            let mut lease = self.api.get(&self.name).await?;
            let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(now_micro());
            self.api.replace(&self.name, &PostParams::default(), &lease).await.map(|_| ())
        };
        match tokio::time::timeout_at(deadline, released).await {
            Ok(Ok(())) => info!(lease = %self.name, "gave the lease up"),
            Ok(Err(err)) => warn!(lease = %self.name, error = %err, "cannot give the lease up"),
            Err(_) => warn!(lease = %self.name, "giving the lease up timed out"),
        }
    }

    /// A take or renewal sent at `sent_at` succeeded: leading until the renew deadline after it,
    /// the earliest moment a standby can have seen it.
    fn renewed(&self, sent_at: Instant) {
        *self.until.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            sent_at + self.timing.renew_deadline;
    }

    fn observe(&self, record: LeaseSpec) -> Observation {
        let mut observed = self.observed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let observation = observe(observed.take(), record, Instant::now());
        *observed = Some(observation.clone());
        observation
    }

    async fn try_acquire(&self) -> Result<Attempt, kube::Error> {
        let seconds = i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: acquired.or_else(|| Some(now_micro())),
            renew_time: Some(now_micro()),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(spec(0, None)),
            };
            let sent_at = Instant::now();
            return self.taken(self.api.create(&PostParams::default(), &lease).await, sent_at);
        };
        let current = lease.spec.clone().unwrap_or_default();
        let observation = self.observe(current.clone());
        if let Some(holder) =
            held_by_another(&observation, &self.identity, self.timing.lease_duration, Instant::now())
        {
            return Ok(Attempt::HeldBy(holder));
        }
        let holder = current.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        let transitions = current.lease_transitions.unwrap_or(0).saturating_add(i32::from(!ours));
        let acquired = if ours { current.acquire_time.clone() } else { None };
        lease.spec = Some(spec(transitions, acquired));
        // The resourceVersion read above makes this a compare-and-swap: of two standbys taking
        // an expired lease, one gets a conflict.
        let sent_at = Instant::now();
        self.taken(self.api.replace(&self.name, &PostParams::default(), &lease).await, sent_at)
    }

    /// The outcome of writing the lease as ours (created or replaced) at `sent_at`: a conflict
    /// means another candidate wrote it first.
    fn taken(&self, written: Result<Lease, kube::Error>, sent_at: Instant) -> Result<Attempt, kube::Error> {
        match written {
            Ok(lease) => {
                self.observe(lease.spec.unwrap_or_default());
                Ok(Attempt::Held { sent_at })
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                Ok(Attempt::HeldBy("another candidate".into()))
            }
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str, renewed_second: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed_second).unwrap())),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn expiry_is_judged_by_the_observers_clock_not_the_holders_renew_time() {
        let start = Instant::now();
        // The holder's clock is a day behind: by wall clocks it expired long ago.
        let stale_clock = record("a", 0, 15);
        let seen = observe(None, stale_clock.clone(), start);
        let fallback = Duration::from_secs(15);
        assert_eq!(held_by_another(&seen, "b", fallback, start + Duration::from_secs(14)), Some("a".into()));
        // The same record read again does not move the observation…
        let again = observe(Some(seen.clone()), stale_clock, start + Duration::from_secs(10));
        assert_eq!(again.changed_at, start);
        // …so 15 s after it was first seen unchanged, it has expired.
        assert_eq!(held_by_another(&again, "b", fallback, start + Duration::from_secs(15)), None);
    }

    #[test]
    fn a_renewal_restarts_the_standbys_wait() {
        let start = Instant::now();
        let seen = observe(None, record("a", 100, 15), start);
        let renewed = observe(Some(seen), record("a", 102, 15), start + Duration::from_secs(12));
        assert_eq!(renewed.changed_at, start + Duration::from_secs(12));
        let later = start + Duration::from_secs(20);
        assert_eq!(held_by_another(&renewed, "b", Duration::from_secs(15), later), Some("a".into()));
    }

    #[test]
    fn an_own_or_empty_lease_is_nobody_elses() {
        let now = Instant::now();
        let fallback = Duration::from_secs(15);
        assert_eq!(held_by_another(&observe(None, record("b", 0, 15), now), "b", fallback, now), None);
        assert_eq!(held_by_another(&observe(None, record("", 0, 15), now), "b", fallback, now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_refuses_writes_past_the_renew_deadline_and_drops_those_in_flight() {
        let until = Instant::now() + Duration::from_secs(10);
        let leadership = Leadership {
            lost: CancellationToken::new(),
            until: Some(Arc::new(Mutex::new(until))),
            leading: Gauge::default(),
        };
        assert_eq!(leadership.while_leading(async { 1 }).await, Some(1));
        // A write that would finish after the loss is dropped when the lease is lost.
        let slow = leadership.while_leading(tokio::time::sleep(Duration::from_secs(5)));
        let lose = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            leadership.lose();
        };
        let (written, ()) = tokio::join!(slow, lose);
        assert_eq!(written, None);
        // Past the renew deadline nothing starts, even before the renewal loop notices.
        let paused = Leadership { lost: CancellationToken::new(), ..leadership.clone() };
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!paused.is_leading());
        assert_eq!(paused.while_leading(async { 1 }).await, None);
        assert!(Leadership::alone().is_leading());
    }

    #[test]
    fn timing_must_order_retry_renew_and_lease() {
        assert!(Timing::default().validated().is_ok());
        let equal = Timing { renew_deadline: Duration::from_secs(15), ..Timing::default() };
        assert!(equal.validated().is_err());
        let slow_retry = Timing { retry_period: Duration::from_secs(10), ..Timing::default() };
        assert!(slow_retry.validated().is_err());
    }
}
