//! The disaster-recovery slot of the API: the service, its messages and its REST paths exist so
//! that clients can be written against them. Every call is authenticated and audited like any
//! other, then answers UNIMPLEMENTED (REST 501) until yiyun's disaster recovery is built.

use std::sync::Arc;

use axum::{
    Router,
    extract::{Path, State},
    http::HeaderMap,
    response::Response,
    routing::{get, post},
};
use tonic::{Request, Response as GrpcResponse, Status};

use crate::{
    caller::{Audit, Gate},
    error::{ApiError, Problem, respond},
    proto::{
        Drill, ListProtectionRequest, ListProtectionResponse, RequestDrillRequest, disaster_recovery_server,
    },
};

/// What a call of the slot can answer, for the OpenAPI document (only its shape is used).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum SlotAnswers {
    /// No bearer token, or one the apiserver does not accept.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthenticated(Problem),
    /// The caller's rate limit; `Retry-After` says when to try again.
    #[response(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Problem),
    /// Disaster recovery is not built yet.
    #[response(status = 501, content_type = "application/problem+json")]
    NotImplemented(Problem),
    /// The apiserver cannot be reached; try again.
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem),
}

const NOT_YET: &str = "disaster recovery is not built yet: protection status and drills arrive with it";

pub struct DisasterRecoveryService {
    gate: Arc<Gate>,
}

impl DisasterRecoveryService {
    pub fn new(gate: Arc<Gate>) -> Arc<DisasterRecoveryService> {
        Arc::new(DisasterRecoveryService { gate })
    }
}

/// What every call of the slot answers once its caller is known.
async fn not_yet<T>() -> Result<T, ApiError> {
    Err(ApiError::Unimplemented(NOT_YET.into()))
}

#[tonic::async_trait]
impl disaster_recovery_server::DisasterRecovery for Arc<DisasterRecoveryService> {
    async fn list_protection(
        &self,
        request: Request<ListProtectionRequest>,
    ) -> Result<GrpcResponse<ListProtectionResponse>, Status> {
        let audit = Audit::new("ListProtection", "grpc", &request.get_ref().tenant, "");
        self.gate.grpc(&request, audit, async |_, _| not_yet().await).await
    }

    async fn request_drill(
        &self,
        request: Request<RequestDrillRequest>,
    ) -> Result<GrpcResponse<Drill>, Status> {
        let body = request.get_ref();
        let audit = Audit::new("RequestDrill", "grpc", &body.tenant, &body.namespace);
        self.gate.grpc(&request, audit, async |_, _| not_yet().await).await
    }
}

/// REST: `GET /v1/tenants/{tenant}/protection` and `POST /v1/tenants/{tenant}/drills`.
pub fn routes(service: Arc<DisasterRecoveryService>) -> Router {
    Router::new()
        .route("/v1/tenants/{tenant}/protection", get(rest_list_protection))
        .route("/v1/tenants/{tenant}/drills", post(rest_request_drill))
        .with_state(service)
}

/// Protection status of a tenant's namespaces (not built yet: 501).
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/protection",
    tag = "DisasterRecovery",
    operation_id = "ListProtection",
    params(("tenant" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")),
    responses(SlotAnswers),
    security(("bearer" = []))
)]
pub(crate) async fn rest_list_protection(
    State(service): State<Arc<DisasterRecoveryService>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let audit = Audit::new("ListProtection", "rest", &tenant, "");
    respond::<ListProtectionResponse>(service.gate.call(&headers, audit, async |_| not_yet().await).await)
}

/// Asks for a failover drill (not built yet: 501).
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/drills",
    tag = "DisasterRecovery",
    operation_id = "RequestDrill",
    params(("tenant" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")),
    responses(SlotAnswers),
    security(("bearer" = []))
)]
pub(crate) async fn rest_request_drill(
    State(service): State<Arc<DisasterRecoveryService>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let audit = Audit::new("RequestDrill", "rest", &tenant, "");
    respond::<Drill>(service.gate.call(&headers, audit, async |_| not_yet().await).await)
}
