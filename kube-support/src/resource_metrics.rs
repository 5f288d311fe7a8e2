//! The resource metrics API (`metrics.k8s.io`, served by metrics-server through the aggregation
//! layer): what pods use now, as `kubectl top` shows it.

use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, ListParams},
};

fn pod_metrics_resource() -> ApiResource {
    ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    }
}

/// Every pod's latest PodMetrics, as JSON objects (`metadata`, `timestamp`, `window`,
/// `containers[].usage`). Fails with the apiserver's answer (404, 503) where the API is not
/// served or its server is down.
pub async fn pod_metrics(client: &Client) -> Result<Vec<serde_json::Value>, kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &pod_metrics_resource());
    let list = api.list(&ListParams::default()).await?;
    list.items.into_iter().map(|item| serde_json::to_value(item).map_err(kube::Error::SerdeError)).collect()
}
