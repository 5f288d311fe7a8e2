//! Usage and bills: a tenant's month from the billing ledger, as gRPC (`yiyun.api.v1.Billing`)
//! and as REST (`GET /v1/bills/{month}`, `GET /v1/bills/{month}/export`), one handler each.
//!
//! Access is `get` on `billing.yiyun.io` named after the tenant (finance's role grants it
//! without a name, for every tenant), or `get` on `billing.yiyun.io` in one of the tenant's own
//! namespaces (what the chart's `yiyun-billing-viewer` aggregates into `admin`, so a tenant's
//! owners read its bills with no binding of their own). It is asked before the ledger is read: a
//! refusal says nothing of whether the tenant exists.

use std::sync::Arc;

use axum::{
    Router,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tonic::{Request, Response as GrpcResponse, Status};
use yiyun_billing::{
    calendar::{Month, format_rfc3339},
    export::{self, Format, Headers},
    ledger::{Ledger, now},
    statement::{Statement, statement},
};
use yiyun_kube::access::{Action, Decision, User};

use crate::{
    caller::{Audit, Gate, authorize},
    error::{ApiError, FieldViolation, Refusals, is_label, respond},
    proto::{self, Bill, BillLine, ExportBillRequest, ExportedBill, GetBillRequest, TenantTotal},
};

/// The Billing service: bills read from the ledger for callers the apiserver allows.
pub struct BillingService {
    gate: Arc<Gate>,
    client: kube::Client,
    ledger: Ledger,
}

impl BillingService {
    pub fn new(gate: Arc<Gate>, client: kube::Client, ledger: Ledger) -> Arc<BillingService> {
        Arc::new(BillingService { gate, client, ledger })
    }

    /// Whether `user` may read `tenant`'s bills through a role in one of its namespaces.
    async fn allowed_in_namespaces(&self, user: &User, tenant: &str) -> Result<bool, ApiError> {
        let found = kube::Api::<yiyun_crds::Tenant>::all(self.client.clone())
            .get_opt(tenant)
            .await
            .map_err(|err| ApiError::Unavailable(format!("the apiserver: {err}")))?;
        for namespace in found.iter().flat_map(|t| t.spec.namespaces.iter()) {
            let action = Action {
                group: yiyun_crds::GROUP.into(),
                resource: "billing".into(),
                verb: "get".into(),
                namespace: Some(namespace.name.clone()),
                ..Action::default()
            };
            match self.gate.access.authorize(user, &action).await {
                Ok(Decision::Allowed) => return Ok(true),
                Ok(Decision::Denied(_)) => {}
                Err(err) => {
                    return Err(ApiError::Unavailable(format!(
                        "cannot check access with the apiserver: {err}"
                    )));
                }
            }
        }
        Ok(false)
    }

    pub async fn read_bill(&self, user: &User, request: &GetBillRequest) -> Result<Bill, ApiError> {
        let (tenant, month) = checked(&request.tenant, &request.month, Vec::new())?;
        let statement = self.statement(user, tenant.as_deref(), month).await?;
        Ok(bill(&statement, tenant.as_deref()))
    }

    pub async fn export(&self, user: &User, request: &ExportBillRequest) -> Result<ExportedBill, ApiError> {
        let mut violations = Vec::new();
        let format = match request.format.as_str() {
            "" => Some(Format::Csv),
            name => Format::from_name(name),
        };
        if format.is_none() {
            violations.push(FieldViolation::new(
                "format",
                format!("{:?} is not csv, xlsx, parquet or json", request.format),
            ));
        }
        let headers = match request.headers.as_str() {
            "" | "chinese" => Some(Headers::Chinese),
            "english" => Some(Headers::English),
            other => {
                violations
                    .push(FieldViolation::new("headers", format!("{other:?} is not chinese or english")));
                None
            }
        };
        let (tenant, month) = checked(&request.tenant, &request.month, violations)?;
        let (Some(format), Some(headers)) = (format, headers) else {
            return Err(ApiError::Internal("checked fields missing".into()));
        };
        let statement = self.statement(user, tenant.as_deref(), month).await?;
        let content = export::render(&statement, format, tenant.as_deref(), headers)
            .map_err(|err| ApiError::Internal(err.to_string()))?;
        Ok(ExportedBill {
            content_type: format.content_type().into(),
            filename: format!(
                "bill-{month}{}.{}",
                tenant.as_deref().map(|t| format!("-{t}")).unwrap_or_default(),
                format.name()
            ),
            content,
        })
    }

    /// The month's statement of `tenant`'s subtree (every tenant's without one), once the
    /// caller may read it.
    async fn statement(
        &self,
        user: &User,
        tenant: Option<&str>,
        month: Month,
    ) -> Result<Statement, ApiError> {
        let action = Action {
            group: yiyun_crds::GROUP.into(),
            resource: "billing".into(),
            verb: "get".into(),
            name: tenant.map(String::from),
            ..Action::default()
        };
        let what =
            tenant.map_or("get every tenant's bills".to_string(), |t| format!("get the bills of tenant {t}"));
        match authorize(&self.gate.access, user, &action, &what).await {
            Ok(()) => {}
            Err(ApiError::PermissionDenied(refusal)) => match tenant {
                Some(tenant) if self.allowed_in_namespaces(user, tenant).await? => {}
                _ => return Err(ApiError::PermissionDenied(refusal)),
            },
            Err(err) => return Err(err),
        }
        let unavailable =
            |err: &dyn std::fmt::Display| ApiError::Unavailable(format!("the billing ledger: {err}"));
        if let Some(tenant) = tenant {
            let known = self.ledger.tenants().await.map_err(|err| unavailable(&err))?;
            if !known.contains_key(tenant) {
                return Err(ApiError::NotFound(format!(
                    "tenant {tenant:?} has no bills (it is not in the ledger)"
                )));
            }
        }
        statement(&self.ledger, month, now(), tenant).await.map_err(|err| match err {
            yiyun_billing::Error::Rating(rating) => ApiError::FailedPrecondition(rating.to_string()),
            other => unavailable(&other),
        })
    }
}

/// The query of the REST routes. A parameter is left out to take its default (every tenant,
/// CSV, Chinese headers); given empty, it is refused, as the OpenAPI document says.
#[derive(Default, serde::Deserialize)]
pub(crate) struct RestQuery {
    tenant: Option<String>,
    format: Option<String>,
    headers: Option<String>,
}

impl RestQuery {
    fn checked(query: Result<Query<RestQuery>, QueryRejection>) -> Result<RestQuery, ApiError> {
        let Query(query) = query.map_err(|rejection| ApiError::invalid("query", rejection.body_text()))?;
        let empty = [("tenant", &query.tenant), ("format", &query.format), ("headers", &query.headers)]
            .into_iter()
            .filter(|(_, value)| value.as_deref() == Some(""))
            .map(|(field, _)| FieldViolation::new(field, "empty: leave it out to take its default"))
            .collect::<Vec<_>>();
        if empty.is_empty() { Ok(query) } else { Err(ApiError::InvalidArgument(empty)) }
    }
}

/// The formats of an export, for the OpenAPI document (the handler reads the text itself, so that
/// a wrong one gets the API's own problem naming the field).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ExportFormat {
    Csv,
    Xlsx,
    Parquet,
    Json,
}

/// The languages of export headers, for the OpenAPI document (read as text, as above).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum HeaderLanguage {
    Chinese,
    English,
}

/// The tenant (`None`: every tenant) and month of a request, or every field that is wrong.
fn checked(
    tenant: &str,
    month: &str,
    mut violations: Vec<FieldViolation>,
) -> Result<(Option<String>, Month), ApiError> {
    let month = if month.is_empty() {
        Some(Month::of(now()))
    } else {
        month
            .parse::<Month>()
            .map_err(|err| violations.push(FieldViolation::new("month", err.to_string())))
            .ok()
    };
    if !tenant.is_empty() && !is_label(tenant) {
        violations.push(FieldViolation::new(
            "tenant",
            format!("{tenant:?} is not a tenant name (lowercase letters, digits and '-', at most 63)"),
        ));
    }
    match month {
        Some(month) if violations.is_empty() => Ok(((!tenant.is_empty()).then(|| tenant.to_string()), month)),
        _ => Err(ApiError::InvalidArgument(violations)),
    }
}

/// A statement as the API's Bill: the tenants in scope with their totals, and their lines.
fn bill(statement: &Statement, tenant: Option<&str>) -> Bill {
    let rollup = statement.rollup();
    let in_scope = export::scope(statement, tenant);
    let tenants: Vec<TenantTotal> = rollup
        .order
        .iter()
        .filter(|(name, _)| in_scope.contains(name))
        .map(|(name, _)| {
            let info = statement.tenants.get(name);
            TenantTotal {
                tenant: name.clone(),
                display_name: info.map(|t| t.display_name.clone()).unwrap_or_default(),
                parent: info.and_then(|t| t.parent.clone()).unwrap_or_default(),
                cost_center: rollup.cost_center.get(name).cloned().unwrap_or_default(),
                own: rollup.own.get(name).copied().unwrap_or_default().to_string(),
                subtree: rollup.subtree.get(name).copied().unwrap_or_default().to_string(),
            }
        })
        .collect();
    let total: yiyun_billing::money::Fen =
        tenants.iter().map(|t| rollup.own.get(&t.tenant).copied().unwrap_or_default()).sum();
    let lines = export::line_rows(statement, tenant, Headers::English)
        .into_iter()
        .map(|row| BillLine {
            tenant: row.tenant,
            site: row.site,
            region_class: row.region_class,
            resource: row.resource,
            gpu_model: row.gpu_model,
            from: row.from,
            to: row.to,
            quantity: row.quantity,
            unit: row.unit,
            unit_price: row.unit_price,
            discount: row.discount,
            amount: row.amount,
            price_book: row.price_book,
            corrects: row.corrects,
        })
        .collect();
    Bill {
        tenant: tenant.unwrap_or_default().to_string(),
        month: statement.month().to_string(),
        status: if statement.closed_at.is_some() { "closed" } else { "open" }.into(),
        as_of: format_rfc3339(statement.as_of),
        currency: "CNY".into(),
        total: total.to_string(),
        tenants,
        lines,
    }
}

#[tonic::async_trait]
impl proto::billing_server::Billing for Arc<BillingService> {
    async fn get_bill(&self, request: Request<GetBillRequest>) -> Result<GrpcResponse<Bill>, Status> {
        let body = request.get_ref();
        let audit = Audit::new("GetBill", "grpc", &body.tenant, &body.month);
        self.gate.grpc(&request, audit, async |user, body| self.read_bill(user, body).await).await
    }

    async fn export_bill(
        &self,
        request: Request<ExportBillRequest>,
    ) -> Result<GrpcResponse<ExportedBill>, Status> {
        let body = request.get_ref();
        let audit = Audit::new("ExportBill", "grpc", &body.tenant, &body.month);
        self.gate.grpc(&request, audit, async |user, body| self.export(user, body).await).await
    }
}

/// REST: `GET /v1/bills/{month}?tenant=T` (a Bill as JSON) and
/// `GET /v1/bills/{month}/export?tenant=T&format=F&headers=H` (the file).
pub fn routes(service: Arc<BillingService>) -> Router {
    Router::new()
        .route("/v1/bills/{month}", get(rest_get_bill))
        .route("/v1/bills/{month}/export", get(rest_export_bill))
        .with_state(service)
}

/// The month's bill of a tenant and its subtree (every tenant's without `tenant`).
#[utoipa::path(
    get,
    path = "/v1/bills/{month}",
    tag = "Billing",
    operation_id = "GetBill",
    params(
        ("month" = String, Path, description = "YYYY-MM, China Standard Time, 2000 to 2199", pattern = r"^2[01][0-9]{2}-(0[1-9]|1[0-2])$"),
        ("tenant" = Option<String>, Query, description = "The tenant whose subtree is billed; every tenant when absent",
            pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"),
    ),
    responses((status = 200, description = "The bill", body = Bill), Refusals),
    security(("bearer" = []))
)]
pub(crate) async fn rest_get_bill(
    State(service): State<Arc<BillingService>>,
    Path(month): Path<String>,
    query: Result<Query<RestQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let query = RestQuery::checked(query);
    let tenant = query.as_ref().ok().and_then(|q| q.tenant.clone()).unwrap_or_default();
    let audit = Audit::new("GetBill", "rest", &tenant, &month);
    let call = async |user: &User| {
        let request = GetBillRequest { tenant: query?.tenant.unwrap_or_default(), month: month.clone() };
        service.read_bill(user, &request).await
    };
    respond(service.gate.call(&headers, audit, call).await)
}

/// The month's bill as finance exports it.
#[utoipa::path(
    get,
    path = "/v1/bills/{month}/export",
    tag = "Billing",
    operation_id = "ExportBill",
    params(
        ("month" = String, Path, description = "YYYY-MM, China Standard Time, 2000 to 2199", pattern = r"^2[01][0-9]{2}-(0[1-9]|1[0-2])$"),
        ("tenant" = Option<String>, Query, description = "The tenant whose subtree is exported; every tenant when absent",
            pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"),
        ("format" = Option<ExportFormat>, Query, description = "csv when absent"),
        ("headers" = Option<HeaderLanguage>, Query, description = "CSV and XLSX headers: chinese when absent"),
    ),
    responses(
        (status = 200, description = "The file (Content-Disposition names it)", content(
            (String = "text/csv"),
            (Vec<u8> = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
            (Vec<u8> = "application/vnd.apache.parquet"),
            (Object = "application/json"),
        )),
        Refusals,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn rest_export_bill(
    State(service): State<Arc<BillingService>>,
    Path(month): Path<String>,
    query: Result<Query<RestQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let query = RestQuery::checked(query);
    let tenant = query.as_ref().ok().and_then(|q| q.tenant.clone()).unwrap_or_default();
    let audit = Audit::new("ExportBill", "rest", &tenant, &month);
    let call = async |user: &User| {
        let query = query?;
        let request = ExportBillRequest {
            tenant: query.tenant.unwrap_or_default(),
            month: month.clone(),
            format: query.format.unwrap_or_default(),
            headers: query.headers.unwrap_or_default(),
        };
        service.export(user, &request).await
    };
    match service.gate.call(&headers, audit, call).await {
        Ok(file) => {
            let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", file.filename))
                .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
            let content_type = HeaderValue::from_str(&file.content_type)
                .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, content_type), (header::CONTENT_DISPOSITION, disposition)],
                file.content,
            )
                .into_response()
        }
        Err(err) => err.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wrong_field_is_named_at_once() {
        let Err(ApiError::InvalidArgument(violations)) = checked("Bad_Tenant", "2026-13", Vec::new()) else {
            panic!("refused");
        };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["month", "tenant"]);
        assert!(violations[0].description.contains("months run from 01 to 12"), "{violations:?}");
    }

    #[test]
    fn an_empty_tenant_is_every_tenant_and_an_empty_month_the_current_one() {
        let (tenant, month) = checked("", "", Vec::new()).unwrap();
        assert_eq!((tenant, month), (None, Month::of(now())));
        let (tenant, month) = checked("health", "2026-11", Vec::new()).unwrap();
        assert_eq!((tenant.as_deref(), month.to_string().as_str()), (Some("health"), "2026-11"));
    }

    #[test]
    fn tenant_names_are_rfc_1123_labels() {
        for good in ["a", "health-2", "x1"] {
            assert!(is_label(good), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", &"a".repeat(64)] {
            assert!(!is_label(bad), "{bad}");
        }
    }
}
