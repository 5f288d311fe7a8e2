//! The OpenAPI 3 document of the REST side, generated from the handlers and the message types
//! (the same types gRPC serves), at `GET /openapi.json`: no token needed, it describes only
//! what every caller may already read in the `.proto` files.

use axum::{Json, Router, routing::get};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::{billing, disaster_recovery, error, jobs, proto, resource_requests};

/// Where the document is served.
pub const PATH: &str = "/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "yiyun self-service API",
        description = "REST/JSON of the departments' self-service API; gRPC serves the same \
            operations (yiyun.api.v1, with server reflection). Every call carries a Kubernetes \
            bearer token and is allowed or refused by the apiserver's RBAC."
    ),
    paths(
        billing::rest_get_bill,
        billing::rest_export_bill,
        resource_requests::rest_create,
        resource_requests::rest_list,
        resource_requests::rest_get,
        resource_requests::rest_decide,
        jobs::rest_submit,
        jobs::rest_list,
        jobs::rest_get,
        jobs::rest_cancel,
        jobs::rest_events,
        disaster_recovery::rest_list_protection,
        disaster_recovery::rest_request_drill,
        disaster_recovery::rest_get_drill
    ),
    components(schemas(
        proto::Bill,
        proto::TenantTotal,
        proto::BillLine,
        billing::ExportFormat,
        proto::ResourceRequest,
        proto::CreateResourceRequestRequest,
        proto::DecideResourceRequestRequest,
        proto::ListResourceRequestsResponse,
        proto::Quota,
        proto::Amounts,
        proto::SubmitJobRequest,
        proto::Job,
        proto::JobPod,
        proto::ListJobsResponse,
        proto::JobEvent,
        proto::JobEvents,
        proto::ListProtectionResponse,
        proto::Protection,
        proto::Drill,
        proto::DrillReport,
        proto::RequestDrillRequest,
        billing::HeaderLanguage,
        error::Problem,
        error::FieldViolation
    )),
    modifiers(&BearerToken),
    tags(
        (name = "Billing", description = "Usage and bills from the billing ledger"),
        (name = "ResourceRequests", description = "Quota requests, decided by the parent tenant's admins"),
        (name = "Jobs", description = "Compute work placed by yiyun-scheduler"),
        (name = "DisasterRecovery", description = "Protection of a tenant's namespaces and drills, from yiyun dr run")
    )
)]
pub struct Document;

/// Kubernetes bearer tokens, as every operation requires.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A token the apiserver accepts (e.g. `kubectl create token`)"))
                    .build(),
            ),
        );
    }
}

pub fn routes() -> Router {
    Router::new().route(PATH, get(|| async { Json(Document::openapi()) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_every_rest_operation_and_its_refusals() {
        let document = serde_json::to_value(Document::openapi()).unwrap();
        assert!(document["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{document}");
        let get_bill = &document["paths"]["/v1/bills/{month}"]["get"];
        assert_eq!(get_bill["operationId"], "GetBill");
        for status in ["200", "400", "401", "403", "404", "422", "429", "503"] {
            assert!(get_bill["responses"][status].is_object(), "{status} documented: {get_bill}");
        }
        assert_eq!(get_bill["security"][0]["bearer"], serde_json::json!([]));
        let bill = &document["components"]["schemas"]["Bill"]["properties"];
        for field in ["tenant", "month", "status", "asOf", "total", "tenants", "lines"] {
            assert!(bill[field].is_object(), "Bill.{field}: {bill}");
        }
        assert!(document["paths"]["/v1/bills/{month}/export"]["get"].is_object());
    }
}
