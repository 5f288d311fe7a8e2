//! Quota requests (`yiyun.api.v1.ResourceRequests`, REST under
//! `/v1/namespaces/{namespace}/resourcerequests`): a department files a ResourceRequest in one
//! of its tenant's namespaces; an admin of the parent tenant approves or rejects it; an approved
//! request is checked against the tenant tree's own rules (`yiyun_quota::plan`, what the
//! tenancy controller plans with) and applied to the Tenant only if no tenant gets a problem it
//! did not have, else it fails with the rules' message.
//!
//! Every call is a SubjectAccessReview on `resourcerequests.yiyun.io` in the request's namespace
//! (`create`, `get`, `list`, `approve`), asked before anything is read. What changes a request
//! (filed, rejected, applied, failed) is also a Kubernetes Event on it, naming who did it, so
//! `kubectl describe rr` tells its story.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State, rejection::JsonRejection, rejection::QueryRejection},
    http::HeaderMap,
    response::Response,
    routing::{get, post},
};
use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Time};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use tonic::{Request, Response as GrpcResponse, Status};
use yiyun_crds::{
    ResourceAmounts, ResourceRequest as Stored, ResourceRequestPhase, ResourceRequestSpec, Tenant,
    TenantQuota,
};
use yiyun_kube::access::{Action, User};
use yiyun_quota::{Milli, World};

use crate::{
    caller::{Audit, Gate, authorize},
    error::{ApiError, FieldViolation, Refusals, respond},
    proto::{
        self, Amounts, CreateResourceRequestRequest, DecideResourceRequestRequest, GetResourceRequestRequest,
        ListResourceRequestsRequest, ListResourceRequestsResponse, Quota, ResourceRequest,
    },
    shared::{
        Events, Page, body, idempotent_name, kube_error, namespace_violation, page_query, page_size,
        page_size_violation, tenant_of,
    },
};

/// The ResourceRequests service.
pub struct ResourceRequestService {
    gate: Arc<Gate>,
    client: Client,
    events: Events,
}

/// The amounts of a request, in the Tenant's form; every malformed one named.
fn amounts(
    field: &str,
    given: Option<&Amounts>,
    violations: &mut Vec<FieldViolation>,
) -> Option<ResourceAmounts> {
    let given = given?;
    let mut parse = |name: &str, text: &str| -> Option<Quantity> {
        if text.is_empty() {
            return None;
        }
        match Milli::parse(text) {
            Ok(m) if m.0 >= 0 => Some(Quantity(text.to_string())),
            Ok(_) => {
                violations
                    .push(FieldViolation::new(&format!("{field}.{name}"), format!("{text:?} is negative")));
                None
            }
            Err(err) => {
                violations.push(FieldViolation::new(&format!("{field}.{name}"), err.to_string()));
                None
            }
        }
    };
    let out = ResourceAmounts {
        cpu: parse("cpu", &given.cpu),
        memory: parse("memory", &given.memory),
        gpu: parse("gpu", &given.gpu),
        storage: parse("storage", &given.storage),
        pods: parse("pods", &given.pods),
    };
    (out != ResourceAmounts::default()).then_some(out)
}

/// A create request checked: the namespace, the quota in the Tenant's form and the reason.
fn checked_create(request: &CreateResourceRequestRequest) -> Result<(String, TenantQuota), ApiError> {
    let mut violations = Vec::new();
    violations.extend(namespace_violation(&request.namespace));
    let quota = request.quota.as_ref();
    let asked = TenantQuota {
        guaranteed: amounts("quota.guaranteed", quota.and_then(|q| q.guaranteed.as_ref()), &mut violations),
        max: amounts("quota.max", quota.and_then(|q| q.max.as_ref()), &mut violations),
    };
    if asked == TenantQuota::default() && violations.is_empty() {
        violations.push(FieldViolation::new("quota", "ask for at least one guaranteed or max amount"));
    }
    let reason = request.reason.trim();
    if reason.is_empty() || reason.chars().count() > 1024 {
        violations.push(FieldViolation::new("reason", "say why, in 1 to 1024 characters"));
    }
    if request.idempotency_key.chars().count() > 128 {
        violations.push(FieldViolation::new("idempotency_key", "at most 128 characters"));
    }
    if violations.is_empty() {
        Ok((request.namespace.clone(), asked))
    } else {
        Err(ApiError::InvalidArgument(violations))
    }
}

/// `current` with what `asked` names replaced.
fn merged(current: &TenantQuota, asked: &TenantQuota) -> TenantQuota {
    let merge =
        |current: &Option<ResourceAmounts>, asked: &Option<ResourceAmounts>| -> Option<ResourceAmounts> {
            let Some(asked) = asked else { return current.clone() };
            let base = current.clone().unwrap_or_default();
            Some(ResourceAmounts {
                cpu: asked.cpu.clone().or(base.cpu),
                memory: asked.memory.clone().or(base.memory),
                gpu: asked.gpu.clone().or(base.gpu),
                storage: asked.storage.clone().or(base.storage),
                pods: asked.pods.clone().or(base.pods),
            })
        };
    TenantQuota {
        guaranteed: merge(&current.guaranteed, &asked.guaranteed),
        max: merge(&current.max, &asked.max),
    }
}

/// What the tenant tree's rules say of `tenant` taking `asked`: `Err` with the message of every
/// tenant that would get a problem it does not have now (the tenancy controller's messages).
pub fn tree_allows(tenants: &[Tenant], tenant: &str, asked: &TenantQuota) -> Result<(), String> {
    let before =
        World { tenants: tenants.iter().map(yiyun_kube::tenants::tenant_node).collect(), ..World::default() };
    let mut after = before.clone();
    let current = tenants.iter().find(|t| t.name_any() == tenant);
    if let (Some(node), Some(current)) = (after.tenants.iter_mut().find(|n| n.name == tenant), current) {
        let quota = merged(&current.spec.quota, asked);
        node.guaranteed =
            quota.guaranteed.as_ref().map(yiyun_kube::tenants::tenant_amounts).unwrap_or_default();
        node.max = quota.max.as_ref().map(yiyun_kube::tenants::tenant_amounts).unwrap_or_default();
    }
    let (before, after) = (yiyun_quota::plan(&before), yiyun_quota::plan(&after));
    let new_problems: Vec<String> = after
        .tenants
        .iter()
        .filter(|(name, plan)| plan.problem.is_some() && before.get(name).is_none_or(|b| b.problem.is_none()))
        .filter_map(|(name, plan)| plan.problem.as_ref().map(|p| format!("tenant {name}: {}", p.message)))
        .collect();
    if new_problems.is_empty() { Ok(()) } else { Err(new_problems.join("; ")) }
}

fn amounts_message(amounts: Option<&ResourceAmounts>) -> Option<Amounts> {
    let amounts = amounts?;
    let text = |q: &Option<Quantity>| q.as_ref().map(|q| q.0.clone()).unwrap_or_default();
    Some(Amounts {
        cpu: text(&amounts.cpu),
        memory: text(&amounts.memory),
        gpu: text(&amounts.gpu),
        storage: text(&amounts.storage),
        pods: text(&amounts.pods),
    })
}

fn time(t: Option<&Time>) -> String {
    t.map(|t| t.0.to_string()).unwrap_or_default()
}

/// A stored request as the API shows it.
fn message(stored: &Stored) -> ResourceRequest {
    let status = stored.status.clone().unwrap_or_default();
    ResourceRequest {
        name: stored.name_any(),
        namespace: stored.namespace().unwrap_or_default(),
        tenant: stored.spec.tenant.clone(),
        quota: Some(Quota {
            guaranteed: amounts_message(stored.spec.quota.guaranteed.as_ref()),
            max: amounts_message(stored.spec.quota.max.as_ref()),
        }),
        reason: stored.spec.reason.clone(),
        requested_by: stored.spec.requested_by.clone().unwrap_or_default(),
        phase: format!("{:?}", status.phase),
        decided_by: status.decided_by.unwrap_or_default(),
        decided_at: time(status.decided_at.as_ref()),
        message: status.message.unwrap_or_default(),
        applied_at: time(status.applied_at.as_ref()),
        created_at: time(stored.metadata.creation_timestamp.as_ref()),
    }
}

impl ResourceRequestService {
    pub fn new(gate: Arc<Gate>, client: Client) -> Arc<ResourceRequestService> {
        let events = Events::new(&client);
        Arc::new(ResourceRequestService { gate, client, events })
    }

    async fn allow(
        &self,
        user: &User,
        verb: &str,
        namespace: &str,
        name: Option<&str>,
    ) -> Result<(), ApiError> {
        let action = Action {
            group: yiyun_crds::GROUP.into(),
            resource: "resourcerequests".into(),
            verb: verb.into(),
            namespace: Some(namespace.into()),
            name: name.map(String::from),
            ..Action::default()
        };
        authorize(
            &self.gate.access,
            user,
            &action,
            &format!("{verb} resourcerequests in namespace {namespace}"),
        )
        .await
    }

    /// An Event on `stored`; best effort, for the call has happened whether or not it is told.
    fn tell(&self, stored: &Stored, warning: bool, reason: &str, note: String) {
        // Filing is the department's action; everything after it is a decision.
        let action = if reason == "Filed" { "File" } else { "Decide" };
        self.events.tell(stored, warning, reason, action, note);
    }

    fn requests(&self, namespace: &str) -> Api<Stored> {
        Api::namespaced(self.client.clone(), namespace)
    }

    pub async fn create(
        &self,
        user: &User,
        request: &CreateResourceRequestRequest,
    ) -> Result<ResourceRequest, ApiError> {
        // Who may file here first: the rules of a request are for those who may make one.
        if let Some(violation) = namespace_violation(&request.namespace) {
            return Err(ApiError::InvalidArgument(vec![violation]));
        }
        self.allow(user, "create", &request.namespace, None).await?;
        let (namespace, quota) = checked_create(request)?;
        let tenant = tenant_of(&self.client, &namespace).await?;
        let spec = ResourceRequestSpec {
            tenant,
            quota,
            reason: request.reason.trim().to_string(),
            requested_by: Some(user.name.clone()),
        };
        let mut object = Stored::new("", spec.clone());
        if request.idempotency_key.is_empty() {
            object.metadata.generate_name = Some("rr-".into());
        } else {
            object.metadata.name = Some(idempotent_name("rr", &user.name, &request.idempotency_key));
        }
        let api = self.requests(&namespace);
        match api.create(&PostParams::default(), &object).await {
            Ok(created) => {
                self.tell(&created, false, "Filed", format!("{} asked: {}", user.name, created.spec.reason));
                Ok(message(&created))
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                // The same key again: the same request, unless it asked for something else.
                let name = object.metadata.name.unwrap_or_default();
                let existing = api.get(&name).await.map_err(|err| kube_error(err, "the request"))?;
                if existing.spec == spec {
                    Ok(message(&existing))
                } else {
                    Err(ApiError::Conflict(format!(
                        "idempotency key {:?} was used for request {name}, which asked for something else",
                        request.idempotency_key
                    )))
                }
            }
            Err(err) => Err(kube_error(err, "the request")),
        }
    }

    pub async fn read(
        &self,
        user: &User,
        request: &GetResourceRequestRequest,
    ) -> Result<ResourceRequest, ApiError> {
        let mut violations = Vec::new();
        violations.extend(namespace_violation(&request.namespace));
        if request.name.is_empty() || request.name.len() > 253 {
            violations.push(FieldViolation::new("name", "a request's name"));
        }
        if !violations.is_empty() {
            return Err(ApiError::InvalidArgument(violations));
        }
        self.allow(user, "get", &request.namespace, Some(&request.name)).await?;
        let stored = self
            .requests(&request.namespace)
            .get(&request.name)
            .await
            .map_err(|err| kube_error(err, &format!("request {}", request.name)))?;
        Ok(message(&stored))
    }

    pub async fn list(
        &self,
        user: &User,
        request: &ListResourceRequestsRequest,
    ) -> Result<ListResourceRequestsResponse, ApiError> {
        let mut violations = Vec::new();
        violations.extend(namespace_violation(&request.namespace));
        violations.extend(page_size_violation(request.page_size));
        if !violations.is_empty() {
            return Err(ApiError::InvalidArgument(violations));
        }
        self.allow(user, "list", &request.namespace, None).await?;
        let mut params = ListParams::default().limit(page_size(request.page_size) as u32);
        if !request.page_token.is_empty() {
            params = params.continue_token(&request.page_token);
        }
        let page = self.requests(&request.namespace).list(&params).await.map_err(|err| match err {
            // An expired or foreign continue token.
            kube::Error::Api(status) if status.code == 410 || status.code == 400 => {
                ApiError::invalid("page_token", "expired or not from this list: start again without one")
            }
            other => kube_error(other, "the requests"),
        })?;
        Ok(ListResourceRequestsResponse {
            items: page.items.iter().map(message).collect(),
            next_page_token: page.metadata.continue_.unwrap_or_default(),
        })
    }

    pub async fn decide(
        &self,
        user: &User,
        request: &DecideResourceRequestRequest,
    ) -> Result<ResourceRequest, ApiError> {
        let mut violations = Vec::new();
        violations.extend(namespace_violation(&request.namespace));
        if request.name.is_empty() || request.name.len() > 253 {
            violations.push(FieldViolation::new("name", "a request's name"));
        }
        if request.message.chars().count() > 1024 {
            violations.push(FieldViolation::new("message", "at most 1024 characters"));
        }
        if !violations.is_empty() {
            return Err(ApiError::InvalidArgument(violations));
        }
        self.allow(user, "approve", &request.namespace, Some(&request.name)).await?;
        let api = self.requests(&request.namespace);
        let what = format!("request {}", request.name);
        let stored = api.get(&request.name).await.map_err(|err| kube_error(err, &what))?;
        let phase = stored.status.as_ref().map(|s| s.phase).unwrap_or_default();
        // Approved but not applied yet (a decider interrupted): approving again finishes it.
        let open = phase == ResourceRequestPhase::Pending
            || (phase == ResourceRequestPhase::Approved && request.approve);
        if !open {
            return Err(ApiError::FailedPrecondition(format!("{what} is {phase:?} already")));
        }
        let now = Time(jiff::Timestamp::now());
        let decided = json!({"status": {
            "phase": if request.approve { "Approved" } else { "Rejected" },
            "decidedBy": user.name,
            "decidedAt": now,
            "message": request.message,
        }});
        let status = |patch: serde_json::Value| {
            let api = api.clone();
            let name = request.name.clone();
            async move { api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await }
        };
        let stored = status(decided).await.map_err(|err| kube_error(err, &what))?;
        if !request.approve {
            self.tell(&stored, false, "Rejected", format!("{} rejected it: {}", user.name, request.message));
            return Ok(message(&stored));
        }
        let tenants_api: Api<Tenant> = Api::all(self.client.clone());
        let tenants =
            tenants_api.list(&ListParams::default()).await.map_err(|err| kube_error(err, "the tenants"))?;
        let tenant = &stored.spec.tenant;
        if !tenants.items.iter().any(|t| &t.name_any() == tenant) {
            return Err(ApiError::FailedPrecondition(format!("tenant {tenant} does not exist any more")));
        }
        if let Err(refusal) = tree_allows(&tenants.items, tenant, &stored.spec.quota) {
            let failed = status(json!({"status": {"phase": "Failed", "message": refusal}}))
                .await
                .map_err(|err| kube_error(err, &what))?;
            self.tell(
                &failed,
                true,
                "Failed",
                format!("approved by {}, refused by the tenant tree: {refusal}", user.name),
            );
            return Err(ApiError::FailedPrecondition(format!(
                "the tenant tree does not allow {what}: {refusal}"
            )));
        }
        tenants_api
            .patch(
                tenant,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"quota": stored.spec.quota}})),
            )
            .await
            .map_err(|err| kube_error(err, &format!("tenant {tenant}")))?;
        let applied = json!({"status": {"phase": "Applied", "appliedAt": Time(jiff::Timestamp::now())}});
        let stored = status(applied).await.map_err(|err| kube_error(err, &what))?;
        self.tell(
            &stored,
            false,
            "Applied",
            format!("{} approved it; tenant {tenant}'s quota changed", user.name),
        );
        Ok(message(&stored))
    }
}

#[tonic::async_trait]
impl proto::resource_requests_server::ResourceRequests for Arc<ResourceRequestService> {
    async fn create_resource_request(
        &self,
        request: Request<CreateResourceRequestRequest>,
    ) -> Result<GrpcResponse<ResourceRequest>, Status> {
        let body = request.get_ref();
        let audit = Audit::new("CreateResourceRequest", "grpc", "", &body.namespace);
        self.gate.grpc(&request, audit, async |user, body| self.create(user, body).await).await
    }

    async fn get_resource_request(
        &self,
        request: Request<GetResourceRequestRequest>,
    ) -> Result<GrpcResponse<ResourceRequest>, Status> {
        let body = request.get_ref();
        let audit = Audit::new("GetResourceRequest", "grpc", "", &body.name);
        self.gate.grpc(&request, audit, async |user, body| self.read(user, body).await).await
    }

    async fn list_resource_requests(
        &self,
        request: Request<ListResourceRequestsRequest>,
    ) -> Result<GrpcResponse<ListResourceRequestsResponse>, Status> {
        let body = request.get_ref();
        let audit = Audit::new("ListResourceRequests", "grpc", "", &body.namespace);
        self.gate.grpc(&request, audit, async |user, body| self.list(user, body).await).await
    }

    async fn decide_resource_request(
        &self,
        request: Request<DecideResourceRequestRequest>,
    ) -> Result<GrpcResponse<ResourceRequest>, Status> {
        let body = request.get_ref();
        let audit = Audit::new("DecideResourceRequest", "grpc", "", &body.name);
        self.gate.grpc(&request, audit, async |user, body| self.decide(user, body).await).await
    }
}

/// REST: `POST /v1/namespaces/{namespace}/resourcerequests`, `GET` it for a page,
/// `GET .../{name}`, and `POST .../{name}/decision`.
pub fn routes(service: Arc<ResourceRequestService>) -> Router {
    Router::new()
        .route("/v1/namespaces/{namespace}/resourcerequests", post(rest_create).get(rest_list))
        .route("/v1/namespaces/{namespace}/resourcerequests/{name}", get(rest_get))
        .route("/v1/namespaces/{namespace}/resourcerequests/{name}/decision", post(rest_decide))
        .with_state(service)
}

/// Files a quota request.
#[utoipa::path(
    post,
    path = "/v1/namespaces/{namespace}/resourcerequests",
    tag = "ResourceRequests",
    operation_id = "CreateResourceRequest",
    params(("namespace" = String, Path, description = "A namespace of the caller's tenant", pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")),
    request_body = CreateResourceRequestRequest,
    responses((status = 200, description = "The request, Pending", body = ResourceRequest), Refusals),
    security(("bearer" = []))
)]
pub(crate) async fn rest_create(
    State(service): State<Arc<ResourceRequestService>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    request: Result<Json<CreateResourceRequestRequest>, JsonRejection>,
) -> Response {
    let audit = Audit::new("CreateResourceRequest", "rest", "", &namespace);
    let call = async |user: &User| {
        let request = CreateResourceRequestRequest { namespace: namespace.clone(), ..body(request)? };
        service.create(user, &request).await
    };
    respond(service.gate.call(&headers, audit, call).await)
}

/// One quota request.
#[utoipa::path(
    get,
    path = "/v1/namespaces/{namespace}/resourcerequests/{name}",
    tag = "ResourceRequests",
    operation_id = "GetResourceRequest",
    params(("namespace" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"), ("name" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")),
    responses((status = 200, description = "The request", body = ResourceRequest), Refusals),
    security(("bearer" = []))
)]
pub(crate) async fn rest_get(
    State(service): State<Arc<ResourceRequestService>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let audit = Audit::new("GetResourceRequest", "rest", "", &name);
    let request = GetResourceRequestRequest { namespace: namespace.clone(), name: name.clone() };
    respond(service.gate.call(&headers, audit, async |user| service.read(user, &request).await).await)
}

/// A page of a namespace's quota requests.
#[utoipa::path(
    get,
    path = "/v1/namespaces/{namespace}/resourcerequests",
    tag = "ResourceRequests",
    operation_id = "ListResourceRequests",
    params(("namespace" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"), Page),
    responses((status = 200, description = "A page", body = ListResourceRequestsResponse), Refusals),
    security(("bearer" = []))
)]
pub(crate) async fn rest_list(
    State(service): State<Arc<ResourceRequestService>>,
    Path(namespace): Path<String>,
    page: Result<Query<Page>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let audit = Audit::new("ListResourceRequests", "rest", "", &namespace);
    let call = async |user: &User| {
        let (page_size, page_token) = page_query(page)?;
        let request = ListResourceRequestsRequest { namespace: namespace.clone(), page_size, page_token };
        service.list(user, &request).await
    };
    respond(service.gate.call(&headers, audit, call).await)
}

/// Approves (and applies) or rejects a pending quota request.
#[utoipa::path(
    post,
    path = "/v1/namespaces/{namespace}/resourcerequests/{name}/decision",
    tag = "ResourceRequests",
    operation_id = "DecideResourceRequest",
    params(("namespace" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"), ("name" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")),
    request_body = DecideResourceRequestRequest,
    responses((status = 200, description = "The request, Applied or Rejected", body = ResourceRequest), Refusals),
    security(("bearer" = []))
)]
pub(crate) async fn rest_decide(
    State(service): State<Arc<ResourceRequestService>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    request: Result<Json<DecideResourceRequestRequest>, JsonRejection>,
) -> Response {
    let audit = Audit::new("DecideResourceRequest", "rest", "", &name);
    let call = async |user: &User| {
        let request = DecideResourceRequestRequest {
            namespace: namespace.clone(),
            name: name.clone(),
            ..body(request)?
        };
        service.decide(user, &request).await
    };
    respond(service.gate.call(&headers, audit, call).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str, parent: Option<&str>, level: &str, guaranteed: &str, max: &str) -> Tenant {
        serde_json::from_value(json!({
            "apiVersion": "yiyun.io/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
            "spec": {"displayName": name, "level": level, "parent": parent,
                "quota": {"guaranteed": {"cpu": guaranteed}, "max": {"cpu": max}}}
        }))
        .unwrap()
    }

    fn cpu(guaranteed: Option<&str>, max: Option<&str>) -> TenantQuota {
        let amounts = |cpu: Option<&str>| {
            cpu.map(|c| ResourceAmounts { cpu: Some(Quantity(c.into())), ..ResourceAmounts::default() })
        };
        TenantQuota { guaranteed: amounts(guaranteed), max: amounts(max) }
    }

    fn tree() -> Vec<Tenant> {
        vec![tenant("city", None, "city", "20", "40"), tenant("dept", Some("city"), "department", "10", "20")]
    }

    #[test]
    fn a_change_within_the_parent_is_allowed() {
        assert_eq!(tree_allows(&tree(), "dept", &cpu(Some("15"), Some("30"))), Ok(()));
    }

    #[test]
    fn a_change_that_breaks_the_tree_is_refused_with_the_rules_own_message() {
        let over_max = tree_allows(&tree(), "dept", &cpu(None, Some("50"))).unwrap_err();
        assert!(
            over_max.contains("tenant dept: quota.max[cpu] 50 exceeds 40 set by its parent \"city\""),
            "{over_max}"
        );
        let overcommitted = tree_allows(&tree(), "dept", &cpu(Some("30"), None)).unwrap_err();
        assert!(overcommitted.starts_with("tenant dept: "), "{overcommitted}");
        let shrunk_parent = tree_allows(&tree(), "city", &cpu(None, Some("10"))).unwrap_err();
        assert!(
            shrunk_parent.contains("tenant dept"),
            "a child left over its parent's new max: {shrunk_parent}"
        );
    }

    #[test]
    fn what_is_not_asked_for_stays() {
        let current = TenantQuota {
            guaranteed: Some(ResourceAmounts {
                cpu: Some(Quantity("10".into())),
                memory: Some(Quantity("64Gi".into())),
                ..ResourceAmounts::default()
            }),
            max: None,
        };
        let quota = merged(&current, &cpu(Some("15"), None));
        let guaranteed = quota.guaranteed.unwrap();
        assert_eq!(
            (guaranteed.cpu, guaranteed.memory),
            (Some(Quantity("15".into())), Some(Quantity("64Gi".into())))
        );
        assert_eq!(quota.max, None);
    }

    #[test]
    fn a_create_names_every_wrong_field() {
        let request = CreateResourceRequestRequest {
            namespace: "Bad".into(),
            quota: Some(Quota {
                guaranteed: Some(Amounts { cpu: "lots".into(), memory: "-1Gi".into(), ..Amounts::default() }),
                max: None,
            }),
            reason: String::new(),
            idempotency_key: "k".repeat(129),
        };
        let Err(ApiError::InvalidArgument(violations)) = checked_create(&request) else { panic!("refused") };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["namespace", "quota.guaranteed.cpu", "quota.guaranteed.memory", "reason", "idempotency_key"]
        );
        let empty = CreateResourceRequestRequest {
            namespace: "ns".into(),
            reason: "more".into(),
            ..CreateResourceRequestRequest::default()
        };
        let Err(ApiError::InvalidArgument(violations)) = checked_create(&empty) else { panic!("refused") };
        assert_eq!(violations[0].field, "quota");
    }

    #[test]
    fn the_same_caller_and_key_name_the_same_request() {
        assert_eq!(idempotent_name("rr", "alice", "k1"), idempotent_name("rr", "alice", "k1"));
        assert_ne!(idempotent_name("rr", "alice", "k1"), idempotent_name("rr", "bob", "k1"));
        assert_ne!(idempotent_name("rr", "alice", "k1"), idempotent_name("rr", "alice", "k2"));
        assert!(idempotent_name("rr", "alice", "k1").starts_with("rr-"));
    }
}
