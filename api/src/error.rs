//! Every refusal of the API, once: as a gRPC status (field violations in google.rpc.BadRequest)
//! and as an RFC 9457 problem for REST. 401 and 403 say nothing of whether what was asked for
//! exists.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// A field of a request and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FieldViolation {
    /// The field as the request names it (`month`, `format`).
    pub field: String,
    pub description: String,
}

/// Why a call did not succeed; `label()` is stable for metrics and the audit log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{0}")]
    NotFound(String),
    /// The request is well-formed but cannot be served as things stand (e.g. usage no
    /// PriceBook prices).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Internal(String),
}

fn describe(violations: &[FieldViolation]) -> String {
    let each: Vec<String> = violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect();
    format!("invalid request: {}", each.join("; "))
}

impl ApiError {
    /// One field that is wrong.
    pub fn invalid(field: &str, description: impl Into<String>) -> ApiError {
        ApiError::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }

    pub fn label(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::PermissionDenied(_) => "permission_denied",
            ApiError::InvalidArgument(_) => "invalid_argument",
            ApiError::NotFound(_) => "not_found",
            ApiError::FailedPrecondition(_) => "failed_precondition",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Unimplemented(_) => "unimplemented",
            ApiError::Internal(_) => "internal",
        }
    }

    fn codes(&self) -> (Code, StatusCode) {
        match self {
            ApiError::Unauthenticated(_) => (Code::Unauthenticated, StatusCode::UNAUTHORIZED),
            ApiError::PermissionDenied(_) => (Code::PermissionDenied, StatusCode::FORBIDDEN),
            ApiError::InvalidArgument(_) => (Code::InvalidArgument, StatusCode::BAD_REQUEST),
            ApiError::NotFound(_) => (Code::NotFound, StatusCode::NOT_FOUND),
            ApiError::FailedPrecondition(_) => (Code::FailedPrecondition, StatusCode::UNPROCESSABLE_ENTITY),
            ApiError::Unavailable(_) => (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
            ApiError::Unimplemented(_) => (Code::Unimplemented, StatusCode::NOT_IMPLEMENTED),
            ApiError::Internal(_) => (Code::Internal, StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    /// The gRPC status; field violations travel as google.rpc.BadRequest details.
    pub fn status(&self) -> tonic::Status {
        let (code, _) = self.codes();
        match self {
            ApiError::InvalidArgument(violations) => {
                let details = ErrorDetails::with_bad_request(
                    violations
                        .iter()
                        .map(|v| tonic_types::FieldViolation::new(&v.field, &v.description))
                        .collect::<Vec<_>>(),
                );
                tonic::Status::with_error_details(code, self.to_string(), details)
            }
            _ => tonic::Status::new(code, self.to_string()),
        }
    }
}

/// An RFC 9457 problem: `application/problem+json` with the status, a title, the detail and,
/// for a bad request, every field that is wrong.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (_, status) = self.codes();
        let mut problem = serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("error"),
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        if let ApiError::InvalidArgument(violations) = &self {
            problem["errors"] = serde_json::json!(violations);
        }
        let mut response = (status, problem.to_string()).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_request_names_each_field_in_both_protocols() {
        let error = ApiError::InvalidArgument(vec![
            FieldViolation { field: "month".into(), description: "write it as YYYY-MM".into() },
            FieldViolation { field: "format".into(), description: "csv, xlsx, parquet or json".into() },
        ]);
        let status = error.status();
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let violations = &details.bad_request().expect("BadRequest details").field_violations;
        assert_eq!(violations.iter().map(|v| v.field.as_str()).collect::<Vec<_>>(), ["month", "format"]);
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
    }

    #[test]
    fn refusals_map_to_their_codes() {
        assert_eq!(ApiError::Unauthenticated("x".into()).status().code(), Code::Unauthenticated);
        assert_eq!(ApiError::PermissionDenied("x".into()).into_response().status(), StatusCode::FORBIDDEN);
        assert_eq!(
            ApiError::FailedPrecondition("x".into()).into_response().status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
