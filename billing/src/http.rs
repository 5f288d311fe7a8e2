//! The read-only bill endpoint: `GET /v1/bills/{month}?format=csv|xlsx|parquet|json
//! [&tenant=T][&headers=english]`, for finance's tools (and, later, the self-service API).
//!
//! Every request carries a Kubernetes bearer token. The apiserver says who it is (TokenReview)
//! and whether they may `get` the `billing` resource of group `yiyun.io` (SubjectAccessReview)
//! named after the tenant asked for, or with no name for the whole province: finance's role
//! grants `billing` without `resourceNames`; a department's role grants it for its own tenant
//! only. No token, a token the apiserver does not know, or a tenant that is not the caller's:
//! refused, and nothing read. Answers are reused for 10 s (`yiyun_kube::access`).

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use kube::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use yiyun_kube::access::{Access, Action, Decision};

use crate::{
    calendar::Month,
    export::{self, Format, Headers},
    ledger::{Ledger, now},
    statement::statement,
};

struct Shared {
    ledger: Ledger,
    access: Access,
}

/// How long the apiserver's answers about a token or an access are reused.
const ACCESS_TTL: Duration = Duration::from_secs(10);

/// Serves the endpoint on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    ledger: Ledger,
    client: Client,
    shutdown: CancellationToken,
) -> Result<(), crate::Error> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|source| crate::Error::Bind { addr, source })?;
    let router = Router::new()
        .route("/v1/bills/{month}", get(bill))
        .with_state(Arc::new(Shared { ledger, access: Access::new(client, ACCESS_TTL) }));
    info!(%addr, "bill endpoint listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(|source| crate::Error::Bind { addr, source })
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{}\n", message.into()))
        .into_response()
}

async fn bill(
    State(shared): State<Arc<Shared>>,
    Path(month): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.trim().is_empty())
    else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required (Authorization: Bearer <ServiceAccount token>)",
        );
    };
    let month: Month = match month.parse() {
        Ok(month) => month,
        Err(err) => return refuse(StatusCode::BAD_REQUEST, format!("month: {err}")),
    };
    let tenant = params.get("tenant").filter(|t| !t.is_empty()).cloned();
    let format_name = params.get("format").map_or("csv", String::as_str);
    let column_headers = match params.get("headers").map(String::as_str) {
        None | Some("chinese") => Headers::Chinese,
        Some("english") => Headers::English,
        Some(other) => {
            return refuse(StatusCode::BAD_REQUEST, format!("headers: {other:?} is not chinese or english"));
        }
    };
    let Some(format) = Format::from_name(format_name) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("format: {format_name:?} is not csv, xlsx, parquet or json"),
        );
    };
    // Who is asking, and may they read this?
    let user = match shared.access.authenticate(token).await {
        Ok(Some(user)) => user,
        Ok(None) => return refuse(StatusCode::UNAUTHORIZED, "the apiserver does not accept this token"),
        Err(err) => {
            warn!(%err, "TokenReview failed");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot review the token with the apiserver; try again",
            );
        }
    };
    let action = Action {
        group: yiyun_crds::GROUP.into(),
        resource: "billing".into(),
        verb: "get".into(),
        name: tenant.clone(),
        ..Action::default()
    };
    match shared.access.authorize(&user, &action).await {
        Ok(Decision::Allowed) => {}
        Ok(Decision::Denied(reason)) => {
            let what = tenant
                .as_deref()
                .map_or("every tenant's bills".to_string(), |t| format!("the bills of tenant {t}"));
            return refuse(
                StatusCode::FORBIDDEN,
                format!("{} may not get {what} (billing.yiyun.io): {reason}", user.name),
            );
        }
        Err(err) => {
            warn!(%err, "SubjectAccessReview failed");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot check access with the apiserver; try again",
            );
        }
    }

    if let Some(tenant) = &tenant {
        match shared.ledger.tenants().await {
            Ok(tenants) if !tenants.contains_key(tenant) => {
                return refuse(
                    StatusCode::NOT_FOUND,
                    format!("tenant {tenant:?} does not exist in the ledger"),
                );
            }
            Ok(_) => {}
            Err(err) => return refuse(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
        }
    }
    let statement = match statement(&shared.ledger, month, now(), tenant.as_deref()).await {
        Ok(statement) => statement,
        Err(err @ crate::Error::Rating(_)) => {
            return refuse(StatusCode::UNPROCESSABLE_ENTITY, err.to_string());
        }
        Err(err) => return refuse(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
    };
    let bytes = export::render(&statement, format, tenant.as_deref(), column_headers);
    match bytes {
        Ok(bytes) => {
            let file = format!(
                "bill-{month}{}.{}",
                tenant.map(|t| format!("-{t}")).unwrap_or_default(),
                format.name()
            );
            let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{file}\""))
                .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static(format.content_type())),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                bytes,
            )
                .into_response()
        }
        Err(err) => refuse(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}
