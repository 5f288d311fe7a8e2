//! Leader election on a `coordination.k8s.io/v1` Lease: one scheduler binds, standbys wait.
//! A leader that cannot renew for a whole lease term stops, so two never bind at once; the
//! apiserver refuses a second binding of a pod anyway.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long a lease holds without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(10);
/// How often the leader renews and standbys retry.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Outcome of a lease attempt.
enum Attempt {
    Acquired,
    HeldBy(String),
}

/// Leader election for one identity on one lease.
pub struct Election {
    api: Api<Lease>,
    name: String,
    identity: String,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl Election {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Election { api: Api::namespaced(client, namespace), name: name.into(), identity: identity.into() }
    }

    /// Waits until this identity holds the lease, or `shutdown`. Returns whether it leads.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> bool {
        let mut last_holder = String::new();
        loop {
            match self.try_acquire().await {
                Ok(Attempt::Acquired) => {
                    info!(lease = %self.name, identity = %self.identity, "became the leader");
                    return true;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    if holder != last_holder {
                        info!(lease = %self.name, %holder, "standing by: the lease is held");
                        last_holder = holder;
                    }
                }
                Err(err) => warn!(lease = %self.name, error = %err, "cannot read or take the lease"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(RETRY_PERIOD) => {}
            }
        }
    }

    async fn try_acquire(&self) -> Result<Attempt, kube::Error> {
        let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: acquired.or_else(|| Some(now())),
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Acquired),
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    Ok(Attempt::HeldBy("another candidate".into()))
                }
                Err(err) => Err(err),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        let holder = current.holder_identity.clone().unwrap_or_default();
        let duration = i64::from(current.lease_duration_seconds.unwrap_or(LEASE_DURATION.as_secs() as i32));
        let renewed = current.renew_time.as_ref().map(|t| t.0.as_second()).unwrap_or(0);
        let expired = Timestamp::now().as_second() > renewed + duration;
        if !holder.is_empty() && holder != self.identity && !expired {
            return Ok(Attempt::HeldBy(holder));
        }
        let transitions = current.lease_transitions.unwrap_or(0) + i32::from(holder != self.identity);
        let acquired = if holder == self.identity { current.acquire_time.clone() } else { None };
        lease.spec = Some(spec(transitions, acquired));
        // The resourceVersion read above makes this a compare-and-swap: of two standbys taking
        // an expired lease, one gets a conflict.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Acquired),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                Ok(Attempt::HeldBy("another candidate".into()))
            }
            Err(err) => Err(err),
        }
    }

    /// Renews the lease until `shutdown`; returns when it is lost (not renewed for a whole
    /// term, or taken), after which the caller must stop binding.
    pub async fn keep(&self, shutdown: &CancellationToken) {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY_PERIOD) => {}
            }
            match self.try_acquire().await {
                Ok(Attempt::Acquired) => last_renewal = tokio::time::Instant::now(),
                Ok(Attempt::HeldBy(holder)) => {
                    warn!(lease = %self.name, %holder, "the lease was taken: no longer the leader");
                    return;
                }
                Err(err) => warn!(lease = %self.name, error = %err, "cannot renew the lease"),
            }
            if last_renewal.elapsed() >= LEASE_DURATION {
                warn!(lease = %self.name, "the lease was not renewed in time: no longer the leader");
                return;
            }
        }
    }
}
