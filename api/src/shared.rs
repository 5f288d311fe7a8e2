//! What the services check and answer alike: names, idempotency keys, the apiserver's
//! refusals, REST bodies and pages.

use axum::{
    Json,
    extract::{Query, rejection::JsonRejection, rejection::QueryRejection},
};
use kube::{
    Resource, ResourceExt,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use crate::error::{ApiError, FieldViolation, is_label};

/// Why `namespace` is not a namespace name, if it is not.
pub fn namespace_violation(namespace: &str) -> Option<FieldViolation> {
    (!is_label(namespace))
        .then(|| FieldViolation::new("namespace", format!("{namespace:?} is not a namespace name")))
}

/// The name an idempotency key gives an object: the same caller and key, the same name.
pub fn idempotent_name(prefix: &str, user: &str, key: &str) -> String {
    format!("{prefix}-{}", digest(&[user.as_bytes(), key.as_bytes()], 10))
}

/// The first `bytes` bytes of the SHA-256 of `parts` (each ended by a NUL), in hex.
pub fn digest(parts: &[&[u8]], bytes: usize) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(part);
        context.update(b"\0");
    }
    context.finish().as_ref()[..bytes].iter().map(|b| format!("{b:02x}")).collect()
}

/// The tenant whose namespace `namespace` is (its `yiyun.io/tenant` label).
pub async fn tenant_of(client: &kube::Client, namespace: &str) -> Result<String, ApiError> {
    let ns = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .get_opt(namespace)
        .await
        .map_err(|err| kube_error(err, "the namespace"))?;
    ns.as_ref()
        .and_then(|ns| kube::ResourceExt::labels(ns).get(yiyun_crds::labels::TENANT).cloned())
        .ok_or_else(|| ApiError::invalid("namespace", format!("{namespace:?} is not a tenant's namespace")))
}

/// A refusal of the apiserver, as the API's own; `what` names what was asked for.
pub fn kube_error(err: kube::Error, what: &str) -> ApiError {
    match err {
        kube::Error::Api(status) if status.code == 404 => {
            ApiError::NotFound(format!("{what} does not exist"))
        }
        kube::Error::Api(status) if status.code == 409 => {
            ApiError::Conflict(format!("{what}: {}", status.message))
        }
        kube::Error::Api(status) if status.code == 422 || status.code == 400 => {
            ApiError::invalid("request", status.message)
        }
        other => ApiError::Unavailable(format!("the apiserver: {other}")),
    }
}

/// An integer of a JSON body: JSON Schema counts `18.0` as one, so it is taken as 18; a number
/// with a fraction or out of range is refused.
pub fn integral<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::{Deserialize, de::Error};
    let number = serde_json::Number::deserialize(deserializer)?;
    let whole = number
        .as_i64()
        .or_else(|| number.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64));
    whole
        .and_then(|whole| T::try_from(whole).ok())
        .ok_or_else(|| D::Error::custom(format!("{number} is not a whole number in range")))
}

/// The Kubernetes Events the API leaves on the objects it changes (reported by `yiyun-api`),
/// so `kubectl describe` tells who did what through it.
pub struct Events(Recorder);

impl Events {
    pub fn new(client: &kube::Client) -> Events {
        Events(Recorder::new(client.clone(), Reporter { controller: "yiyun-api".into(), instance: None }))
    }

    /// An Event on `object`, written in the background: best effort, for the call has happened
    /// whether or not it is told, and the caller need not wait for it.
    pub fn tell<K>(&self, object: &K, warning: bool, reason: &str, action: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        let (recorder, reference, name) = (self.0.clone(), object.object_ref(&()), object.name_any());
        tokio::spawn(async move {
            if let Err(error) = recorder.publish(&event, &reference).await {
                tracing::warn!(object = %name, %error, "cannot publish an event");
            }
        });
    }
}

/// A REST body, or the field `body` named with what is wrong with it.
pub fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(body)| body).map_err(|rejection| ApiError::invalid("body", rejection.body_text()))
}

/// The query of a list: `pageSize` and `pageToken`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// At most this many, 1 to 500 (100 when absent).
    #[param(minimum = 1, maximum = 500)]
    page_size: Option<i32>,
    /// A previous page's `nextPageToken`.
    #[param(min_length = 1)]
    page_token: Option<String>,
}

/// The page size (0 for the default) and token of a REST list's query.
pub fn page_query(page: Result<Query<Page>, QueryRejection>) -> Result<(i32, String), ApiError> {
    let Query(page) = page.map_err(|rejection| ApiError::invalid("query", rejection.body_text()))?;
    if page.page_size == Some(0) || page.page_token.as_deref() == Some("") {
        return Err(ApiError::invalid(
            "query",
            "pageSize is 1 to 500 and pageToken is not empty: leave them out for their defaults",
        ));
    }
    Ok((page.page_size.unwrap_or(0), page.page_token.unwrap_or_default()))
}

/// Why a list's page size is wrong, if it is.
pub fn page_size_violation(asked: i32) -> Option<FieldViolation> {
    (!(0..=500).contains(&asked)).then(|| FieldViolation::new("page_size", "1 to 500 (0 for 100)"))
}

/// The page size a list asked for (checked by [`page_size_violation`]).
pub fn page_size(asked: i32) -> usize {
    if asked <= 0 { 100 } else { asked.min(500) as usize }
}

#[cfg(test)]
mod tests {
    use crate::proto::SubmitJobRequest;

    #[test]
    fn whole_numbers_may_be_written_with_a_point_but_fractions_are_refused() {
        let job: SubmitJobRequest =
            serde_json::from_str(r#"{"replicas": 4.0, "deadlineSeconds": 18}"#).unwrap();
        assert_eq!((job.replicas, job.deadline_seconds), (4, 18));
        assert!(serde_json::from_str::<SubmitJobRequest>(r#"{"replicas": 4.5}"#).is_err());
        assert!(serde_json::from_str::<SubmitJobRequest>(r#"{"replicas": 3000000000}"#).is_err());
    }
}
