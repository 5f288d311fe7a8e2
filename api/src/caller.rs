//! Who is calling and whether they may: the bearer token of a gRPC call or an HTTP request,
//! reviewed by the apiserver (`yiyun_kube::access`), the caller's rate limit, and the audit line
//! every call leaves.

use std::{sync::Arc, time::Instant};

use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tracing::info;
use yiyun_kube::access::{Access, Action, Decision, User};

use crate::{error::ApiError, limits::RateLimiter};

/// What every call passes through before its operation runs.
pub struct Gate {
    pub access: Arc<Access>,
    pub limiter: RateLimiter,
    pub metrics: Metrics,
}

type Labels = Vec<(&'static str, &'static str)>;

/// The calls served, for `/metrics`.
pub struct Metrics {
    calls: Family<Labels, Counter>,
    seconds: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Metrics {
    /// Registers the call counters and latencies, and `access`'s review cache lookups.
    pub fn register(registry: &mut Registry, access: &Access) -> Metrics {
        fn latency() -> Histogram {
            // 0.25 ms to about 4 s.
            Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
        }
        let metrics = Metrics { calls: Family::default(), seconds: Family::new_with_constructor(latency) };
        registry.register("calls", "Calls by operation, protocol and result", metrics.calls.clone());
        registry.register("call_seconds", "How long calls took, by operation", metrics.seconds.clone());
        registry.register(
            "auth_cache_lookups",
            "Token and access review cache lookups, by kind (token, access) and result (hit, miss)",
            access.cache_lookups(),
        );
        metrics
    }

    fn record(&self, audit: &Audit<'_>, result: &'static str) {
        let labels = vec![("operation", audit.operation), ("protocol", audit.protocol), ("result", result)];
        self.calls.get_or_create(&labels).inc();
        self.seconds
            .get_or_create(&vec![("operation", audit.operation)])
            .observe(audit.started.elapsed().as_secs_f64());
    }
}

impl Gate {
    /// A gRPC call through [`Gate::call`]: the token travels in the request's metadata, the
    /// refusal as a status.
    pub async fn grpc<T, R>(
        &self,
        request: &tonic::Request<T>,
        audit: Audit<'_>,
        operation: impl AsyncFnOnce(&User, &T) -> Result<R, ApiError>,
    ) -> Result<tonic::Response<R>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        let body = request.get_ref();
        self.call(&headers, audit, async |user| operation(user, body).await)
            .await
            .map(tonic::Response::new)
            .map_err(|err| err.status())
    }

    /// Authenticates the caller, admits them under their rate limit, runs `operation` and
    /// writes the audit line.
    pub async fn call<T>(
        &self,
        headers: &http::HeaderMap,
        audit: Audit<'_>,
        operation: impl AsyncFnOnce(&User) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let user = authenticate(&self.access, headers).await;
        let result = match &user {
            Ok(user) => match self.limiter.admit(&user.name, Instant::now()) {
                Ok(()) => operation(user).await,
                Err(retry_after) => {
                    Err(ApiError::ResourceExhausted { caller: user.name.clone(), retry_after })
                }
            },
            Err(err) => Err(err.clone()),
        };
        audit.record(user.as_ref().ok(), &result);
        self.metrics.record(&audit, result.as_ref().map_or_else(ApiError::label, |_| "ok"));
        result
    }
}

/// The bearer token of `headers` (gRPC metadata are HTTP headers too).
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The user whose token the request carries.
pub async fn authenticate(access: &Access, headers: &http::HeaderMap) -> Result<User, ApiError> {
    let Some(token) = bearer(headers) else {
        return Err(ApiError::Unauthenticated(
            "a bearer token is required (authorization: Bearer <ServiceAccount token>)".into(),
        ));
    };
    match access.authenticate(token).await {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err(ApiError::Unauthenticated("the apiserver does not accept this token".into())),
        Err(err) => {
            tracing::warn!(%err, "TokenReview failed");
            Err(ApiError::Unavailable("cannot review the token with the apiserver; try again".into()))
        }
    }
}

/// Refuses unless `user` may do `action`; `what` says it in the refusal.
pub async fn authorize(access: &Access, user: &User, action: &Action, what: &str) -> Result<(), ApiError> {
    match access.authorize(user, action).await {
        Ok(Decision::Allowed) => Ok(()),
        Ok(Decision::Denied(reason)) => {
            Err(ApiError::PermissionDenied(format!("{} may not {what}: {reason}", user.name)))
        }
        Err(err) => {
            tracing::warn!(%err, "SubjectAccessReview failed");
            Err(ApiError::Unavailable("cannot check access with the apiserver; try again".into()))
        }
    }
}

/// One call, as the audit log records it (MLPS level 3 asks for every call).
pub struct Audit<'a> {
    pub operation: &'static str,
    pub protocol: &'static str,
    pub tenant: &'a str,
    pub object: &'a str,
    pub started: Instant,
}

impl<'a> Audit<'a> {
    /// A call starting now.
    pub fn new(
        operation: &'static str,
        protocol: &'static str,
        tenant: &'a str,
        object: &'a str,
    ) -> Audit<'a> {
        Audit { operation, protocol, tenant, object, started: Instant::now() }
    }

    /// Writes the audit line: who, their groups, the tenant, the operation and object, the
    /// result and how long it took.
    pub fn record<T>(&self, user: Option<&User>, result: &Result<T, ApiError>) {
        let outcome = result.as_ref().map_or_else(ApiError::label, |_| "ok");
        info!(
            target: "yiyun_api::audit",
            user = user.map_or("", |u| u.name.as_str()),
            groups = user.map(|u| u.groups.join(",")).unwrap_or_default(),
            tenant = self.tenant,
            operation = self.operation,
            protocol = self.protocol,
            object = self.object,
            result = outcome,
            latency_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            "api call"
        );
    }
}
