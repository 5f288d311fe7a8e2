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
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct FieldViolation {
    /// The field as the request names it (`month`, `format`).
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: &str, description: impl Into<String>) -> FieldViolation {
        FieldViolation { field: field.into(), description: description.into() }
    }
}

/// Whether `name` is a Kubernetes object name of the kind namespaces and tenants have (an RFC
/// 1123 label).
pub fn is_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A REST answer: the value as JSON, or the problem.
pub fn respond<T: serde::Serialize>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(value) => axum::Json(value).into_response(),
        Err(err) => err.into_response(),
    }
}

/// A refused REST call (RFC 9457, `application/problem+json`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// For a bad request, every field that is wrong.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldViolation>,
}

/// Every refusal a REST call can get, for the OpenAPI document (only its shape is used: the
/// responses themselves are made by `ApiError`).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum Refusals {
    /// A field is wrong: each one is named in `errors`.
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    /// No bearer token, or one the apiserver does not accept.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthenticated(Problem),
    /// The caller's roles do not allow it (whether the object exists is not said).
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    /// An idempotency key already used for a different request.
    #[response(status = 409, content_type = "application/problem+json")]
    Conflict(Problem),
    /// Well-formed, but not possible as things stand (e.g. usage no PriceBook prices).
    #[response(status = 422, content_type = "application/problem+json")]
    Unprocessable(Problem),
    /// The caller's rate limit; `Retry-After` says when to try again.
    #[response(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Problem),
    /// The apiserver or the ledger cannot be reached; try again.
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem),
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
    /// Something else already holds the name (an idempotency key reused for another request).
    #[error("{0}")]
    Conflict(String),
    /// The request is well-formed but cannot be served as things stand (e.g. usage no
    /// PriceBook prices).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    /// The caller's rate limit: try again after the time given.
    #[error("too many calls from {caller}: try again in {} ms", .retry_after.as_millis())]
    ResourceExhausted { caller: String, retry_after: std::time::Duration },
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
        ApiError::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn label(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::PermissionDenied(_) => "permission_denied",
            ApiError::InvalidArgument(_) => "invalid_argument",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::FailedPrecondition(_) => "failed_precondition",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::ResourceExhausted { .. } => "resource_exhausted",
            ApiError::Internal(_) => "internal",
        }
    }

    fn codes(&self) -> (Code, StatusCode) {
        match self {
            ApiError::Unauthenticated(_) => (Code::Unauthenticated, StatusCode::UNAUTHORIZED),
            ApiError::PermissionDenied(_) => (Code::PermissionDenied, StatusCode::FORBIDDEN),
            ApiError::InvalidArgument(_) => (Code::InvalidArgument, StatusCode::BAD_REQUEST),
            ApiError::NotFound(_) => (Code::NotFound, StatusCode::NOT_FOUND),
            ApiError::Conflict(_) => (Code::AlreadyExists, StatusCode::CONFLICT),
            ApiError::FailedPrecondition(_) => (Code::FailedPrecondition, StatusCode::UNPROCESSABLE_ENTITY),
            ApiError::Unavailable(_) => (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
            ApiError::ResourceExhausted { .. } => (Code::ResourceExhausted, StatusCode::TOO_MANY_REQUESTS),
            ApiError::Internal(_) => (Code::Internal, StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    /// The gRPC status; field violations travel as google.rpc.BadRequest details, the time to
    /// wait as google.rpc.RetryInfo.
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
            ApiError::ResourceExhausted { retry_after, .. } => tonic::Status::with_error_details(
                code,
                self.to_string(),
                ErrorDetails::with_retry_info(Some(*retry_after)),
            ),
            _ => tonic::Status::new(code, self.to_string()),
        }
    }
}

/// An RFC 9457 problem: `application/problem+json` with the status, a title, the detail and,
/// for a bad request, every field that is wrong.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (_, status) = self.codes();
        let problem = Problem {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("error").into(),
            status: status.as_u16(),
            detail: self.to_string(),
            errors: match &self {
                ApiError::InvalidArgument(violations) => violations.clone(),
                _ => Vec::new(),
            },
        };
        let body = serde_json::to_string(&problem).unwrap_or_else(|_| problem.detail.clone());
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let ApiError::ResourceExhausted { retry_after, .. } = &self {
            // Whole seconds, rounded up: never sooner than the limit allows.
            let seconds = retry_after.as_millis().div_ceil(1000).max(1);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds as u64));
        }
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
    fn a_rate_limited_call_says_when_to_try_again() {
        let error = ApiError::ResourceExhausted {
            caller: "dept".into(),
            retry_after: std::time::Duration::from_millis(1500),
        };
        let status = error.status();
        assert_eq!(status.code(), Code::ResourceExhausted);
        let retry = status.get_error_details().retry_info().expect("RetryInfo").retry_delay;
        assert_eq!(retry, Some(std::time::Duration::from_millis(1500)));
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
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
