//! Disaster recovery as departments see it (`yiyun.api.v1.DisasterRecovery`, REST under
//! `/v1/tenants/{tenant}/protection` and `/v1/tenants/{tenant}/drills`): the protection of each
//! of a tenant's namespaces, read from the status `yiyun dr run` writes on its
//! ReplicationPolicies, and drills asked for as `Failover` objects with `action: drill`, which
//! the same controller carries out and reports on.
//!
//! Access is the apiserver's, per namespace: `list` on `replicationpolicies.yiyun.io` shows a
//! namespace's protection, `get` its drills, and the verb `drill` asks for one. Cloud admins
//! write the policies; a department only reads them and asks for drills.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, State, rejection::JsonRejection},
    http::HeaderMap,
    response::Response,
    routing::{get, post},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PostParams},
};
use tonic::{Request, Response as GrpcResponse, Status};
use yiyun_crds::{
    DrillReport as StoredReport, Failover, FailoverAction, FailoverPhase, FailoverSpec, PolicyReference,
    ReplicationPolicy, ReplicationRole, Tenant,
};
use yiyun_kube::access::{Action, Decision, User};

use crate::{
    caller::{Audit, Gate, authorize},
    error::{ApiError, FieldViolation, Refusals, is_label, respond},
    proto::{
        Drill, DrillReport, GetDrillRequest, ListProtectionRequest, ListProtectionResponse, Protection,
        RequestDrillRequest, disaster_recovery_server,
    },
    shared::{Events, body, idempotent_name, kube_error, namespace_violation, tenant_of},
};

/// Who asked for a drill through the API, on its Failover.
const REQUESTED_BY: &str = "yiyun.io/requested-by";

/// The DisasterRecovery service.
pub struct DisasterRecoveryService {
    gate: Arc<Gate>,
    client: Client,
    events: Events,
}

fn time(t: Option<&Time>) -> String {
    t.map(|t| t.0.to_string()).unwrap_or_default()
}

fn report(stored: &StoredReport) -> DrillReport {
    DrillReport {
        started: stored.started.0.to_string(),
        passed: stored.passed,
        rpo_seconds: stored.rpo_seconds,
        rto_seconds: stored.rto_seconds.unwrap_or_default(),
        objects: stored.objects,
        workloads_running: stored.workloads_running,
        workloads: stored.workloads,
        message: stored.message.clone(),
    }
}

/// The state a policy's status amounts to, with the reason and message behind it.
fn state(policy: &ReplicationPolicy) -> (&'static str, String, String) {
    let status = policy.status.clone().unwrap_or_default();
    let find = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_).cloned();
    let said = |c: Condition| (c.reason, c.message);
    let (ready, protected, degraded) = (find("Ready"), find("Protected"), find("Degraded"));
    if let Some(ready) = ready.clone().filter(|c| c.status == "False") {
        let (reason, message) = said(ready);
        return ("Invalid", reason, message);
    }
    if status.role == ReplicationRole::Standby {
        let message = status.failover.map(|f| f.message).unwrap_or_default();
        return ("FailedOver", "FailedOver".into(), message);
    }
    match (ready, protected, degraded) {
        (None, _, _) | (_, None, _) => {
            ("Pending", String::new(), "the DR controller has not measured this policy yet".into())
        }
        (_, _, Some(degraded)) if degraded.status == "True" => {
            let (reason, message) = said(degraded);
            ("Degraded", reason, message)
        }
        (_, Some(protected), _) if protected.status == "True" => {
            ("Protected", String::new(), protected.message)
        }
        (_, Some(protected), _) => {
            let (reason, message) = said(protected);
            ("Degraded", reason, message)
        }
    }
}

/// A namespace's protection by one policy, or (`None`) the lack of one.
fn protection(namespace: &str, policy: Option<&ReplicationPolicy>) -> Protection {
    let Some(policy) = policy else {
        return Protection {
            namespace: namespace.into(),
            state: "Unprotected".into(),
            message: "no ReplicationPolicy protects this namespace".into(),
            ..Protection::default()
        };
    };
    let (state, reason, message) = state(policy);
    let status = policy.status.clone().unwrap_or_default();
    Protection {
        namespace: namespace.into(),
        level: policy.spec.level,
        achieved_rpo: status.achieved_rpo.unwrap_or_default(),
        policy: policy.name_any(),
        state: state.into(),
        reason,
        message,
        rpo_target: status.rpo_target.unwrap_or_default(),
        rto_target: status.rto_target.unwrap_or_default(),
        achieved_rpo_seconds: status.achieved_rpo_seconds.unwrap_or_default(),
        last_consistent_copy_time: time(status.last_consistent_copy_time.as_ref()),
        role: match status.role {
            ReplicationRole::Primary => "primary",
            ReplicationRole::Standby => "standby",
        }
        .into(),
        target_site: policy.spec.target.site.clone(),
        objects_replicated: status.objects_replicated,
        lag_p99_seconds: status.lag_p99_seconds.unwrap_or_default(),
        last_drill: status.drills.first().map(report),
    }
}

/// A drill's Failover as the API shows it.
fn drill(failover: &Failover) -> Drill {
    let status = failover.status.clone().unwrap_or_default();
    Drill {
        name: failover.name_any(),
        phase: format!("{:?}", status.phase),
        namespace: failover.spec.policy.namespace.clone(),
        policy: failover.spec.policy.name.clone(),
        requested_by: failover.annotations().get(REQUESTED_BY).cloned().unwrap_or_default(),
        created_at: time(failover.metadata.creation_timestamp.as_ref()),
        completed: time(status.completed.as_ref()),
        message: status.message.unwrap_or_default(),
        report: status.drill.as_ref().map(report),
    }
}

/// Why `name` is not an object's name, if it is not.
fn name_violation(field: &str, name: &str) -> Option<FieldViolation> {
    let valid = !name.is_empty() && name.len() <= 253 && name.split('.').all(is_label);
    (!valid).then(|| FieldViolation::new(field, format!("{name:?} is not an object's name")))
}

fn tenant_violation(tenant: &str) -> Option<FieldViolation> {
    (!is_label(tenant)).then(|| FieldViolation::new("tenant", format!("{tenant:?} is not a tenant's name")))
}

/// A drill request's fields, every wrong one named.
fn checked_drill(request: &RequestDrillRequest) -> Result<(), ApiError> {
    let mut violations: Vec<FieldViolation> = tenant_violation(&request.tenant).into_iter().collect();
    violations.extend(namespace_violation(&request.namespace));
    if !request.policy.is_empty() {
        violations.extend(name_violation("policy", &request.policy));
    }
    if request.idempotency_key.chars().count() > 128 {
        violations.push(FieldViolation::new("idempotency_key", "at most 128 characters"));
    }
    if violations.is_empty() { Ok(()) } else { Err(ApiError::InvalidArgument(violations)) }
}

/// The policy a drill of `namespace` is for: the one asked for, or the only one there.
fn chosen_policy(namespace: &str, asked: &str, policies: &[ReplicationPolicy]) -> Result<String, ApiError> {
    let names: Vec<String> = policies.iter().map(ResourceExt::name_any).collect();
    match (asked, names.as_slice()) {
        (_, []) => Err(ApiError::FailedPrecondition(format!(
            "no ReplicationPolicy protects namespace {namespace}: ask a cloud admin to protect it first"
        ))),
        ("", [only]) => Ok(only.clone()),
        ("", several) => Err(ApiError::invalid(
            "policy",
            format!("namespace {namespace} has several policies ({}): name one", several.join(", ")),
        )),
        (asked, names) if names.iter().any(|n| n == asked) => Ok(asked.to_string()),
        (asked, names) => Err(ApiError::invalid(
            "policy",
            format!("{asked:?} does not protect namespace {namespace} (its policies: {})", names.join(", ")),
        )),
    }
}

fn is_drill_of(failover: &Failover, policy: &PolicyReference) -> bool {
    failover.spec.action == FailoverAction::Drill && failover.spec.policy == *policy
}

fn unfinished(failover: &Failover) -> bool {
    let phase = failover.status.as_ref().map(|s| s.phase).unwrap_or_default();
    matches!(phase, FailoverPhase::Pending | FailoverPhase::Running)
}

impl DisasterRecoveryService {
    pub fn new(gate: Arc<Gate>, client: Client) -> Arc<DisasterRecoveryService> {
        let events = Events::new(&client);
        Arc::new(DisasterRecoveryService { gate, client, events })
    }

    fn action(verb: &str, namespace: &str) -> Action {
        Action {
            group: yiyun_crds::GROUP.into(),
            resource: "replicationpolicies".into(),
            verb: verb.into(),
            namespace: Some(namespace.into()),
            ..Action::default()
        }
    }

    async fn allow(&self, user: &User, verb: &str, namespace: &str, what: &str) -> Result<(), ApiError> {
        authorize(&self.gate.access, user, &Self::action(verb, namespace), what).await
    }

    fn policies(&self, namespace: &str) -> Api<ReplicationPolicy> {
        Api::namespaced(self.client.clone(), namespace)
    }

    async fn policies_of(&self, namespace: &str) -> Result<Vec<ReplicationPolicy>, ApiError> {
        let listed = self.policies(namespace).list(&ListParams::default()).await;
        Ok(listed.map_err(|err| kube_error(err, &format!("the policies of namespace {namespace}")))?.items)
    }

    pub async fn protections(
        &self,
        user: &User,
        request: &ListProtectionRequest,
    ) -> Result<ListProtectionResponse, ApiError> {
        if let Some(violation) = tenant_violation(&request.tenant) {
            return Err(ApiError::InvalidArgument(vec![violation]));
        }
        let tenant = Api::<Tenant>::all(self.client.clone())
            .get_opt(&request.tenant)
            .await
            .map_err(|err| kube_error(err, "the tenant"))?;
        // The namespaces the caller may see; a tenant they see none of (or that does not
        // exist) is refused alike, so a refusal says nothing of whether it exists.
        let mut visible = Vec::new();
        for namespace in tenant.iter().flat_map(|t| t.spec.namespaces.iter()) {
            match self.gate.access.authorize(user, &Self::action("list", &namespace.name)).await {
                Ok(Decision::Allowed) => visible.push(namespace.name.clone()),
                Ok(Decision::Denied(_)) => {}
                Err(err) => {
                    tracing::warn!(%err, "SubjectAccessReview failed");
                    return Err(ApiError::Unavailable(
                        "cannot check access with the apiserver; try again".into(),
                    ));
                }
            }
        }
        if visible.is_empty() {
            return Err(ApiError::PermissionDenied(format!(
                "{} may not list replicationpolicies in any namespace of tenant {}",
                user.name, request.tenant
            )));
        }
        visible.sort();
        let mut protections = Vec::new();
        for namespace in &visible {
            let mut policies = self.policies_of(namespace).await?;
            policies.sort_by_key(ResourceExt::name_any);
            if policies.is_empty() {
                protections.push(protection(namespace, None));
            }
            protections.extend(policies.iter().map(|p| protection(namespace, Some(p))));
        }
        Ok(ListProtectionResponse { protections })
    }

    pub async fn ask_for_drill(&self, user: &User, request: &RequestDrillRequest) -> Result<Drill, ApiError> {
        checked_drill(request)?;
        let namespace = &request.namespace;
        self.allow(user, "drill", namespace, &format!("ask for drills in namespace {namespace}")).await?;
        if tenant_of(&self.client, namespace).await? != request.tenant {
            return Err(ApiError::invalid(
                "namespace",
                format!("{namespace:?} is not a namespace of tenant {}", request.tenant),
            ));
        }
        let policies = self.policies_of(namespace).await?;
        let policy = PolicyReference {
            namespace: namespace.clone(),
            name: chosen_policy(namespace, &request.policy, &policies)?,
        };
        let spec = FailoverSpec { policy: policy.clone(), action: FailoverAction::Drill };
        let failovers: Api<Failover> = Api::all(self.client.clone());
        let keyed = (!request.idempotency_key.is_empty())
            .then(|| idempotent_name("drill", &user.name, &request.idempotency_key));
        let same_key = |existing: Failover| {
            if existing.spec == spec {
                Ok(drill(&existing))
            } else {
                Err(ApiError::Conflict(format!(
                    "idempotency key {:?} was used for drill {}, which was of something else",
                    request.idempotency_key,
                    existing.name_any()
                )))
            }
        };
        if let Some(name) = &keyed
            && let Some(existing) =
                failovers.get_opt(name).await.map_err(|err| kube_error(err, "the drill"))?
        {
            return same_key(existing);
        }
        // One drill of a policy at a time: each restores a full copy on the standby.
        let all =
            failovers.list(&ListParams::default()).await.map_err(|err| kube_error(err, "the drills"))?;
        if let Some(running) = all.items.iter().find(|f| is_drill_of(f, &policy) && unfinished(f)) {
            return Err(ApiError::FailedPrecondition(format!(
                "drill {} of {namespace}/{} has not finished yet: follow it, or ask again once it has",
                running.name_any(),
                policy.name
            )));
        }
        let mut object = Failover::new("", spec.clone());
        match &keyed {
            Some(name) => object.metadata.name = Some(name.clone()),
            None => object.metadata.generate_name = Some("drill-".into()),
        }
        object.metadata.labels =
            Some(BTreeMap::from([(yiyun_crds::labels::TENANT.into(), request.tenant.clone())]));
        object.metadata.annotations = Some(BTreeMap::from([(REQUESTED_BY.into(), user.name.clone())]));
        match failovers.create(&PostParams::default(), &object).await {
            Ok(created) => {
                if let Some(stored) = policies.iter().find(|p| p.name_any() == policy.name) {
                    let note =
                        format!("{} asked for drill {} through the API", user.name, created.name_any());
                    self.events.tell(stored, false, "DrillRequested", "Drill", note);
                }
                Ok(drill(&created))
            }
            // The same key at the same moment: the other call's drill.
            Err(kube::Error::Api(status)) if status.code == 409 && keyed.is_some() => {
                let name = keyed.unwrap_or_default();
                same_key(failovers.get(&name).await.map_err(|err| kube_error(err, "the drill"))?)
            }
            Err(err) => Err(kube_error(err, "the drill")),
        }
    }

    pub async fn read_drill(&self, user: &User, request: &GetDrillRequest) -> Result<Drill, ApiError> {
        let mut violations: Vec<FieldViolation> = tenant_violation(&request.tenant).into_iter().collect();
        violations.extend(name_violation("name", &request.name));
        if !violations.is_empty() {
            return Err(ApiError::InvalidArgument(violations));
        }
        let missing = || {
            ApiError::NotFound(format!("drill {} of tenant {} does not exist", request.name, request.tenant))
        };
        let found = Api::<Failover>::all(self.client.clone())
            .get_opt(&request.name)
            .await
            .map_err(|err| kube_error(err, "the drill"))?
            .filter(|f| f.spec.action == FailoverAction::Drill)
            .ok_or_else(missing)?;
        let namespace = found.spec.policy.namespace.clone();
        // A drill of another tenant's namespace, or of one that is no tenant's, is not this
        // tenant's; an apiserver that cannot answer says so.
        match tenant_of(&self.client, &namespace).await {
            Ok(tenant) if tenant == request.tenant => {}
            Ok(_) | Err(ApiError::InvalidArgument(_) | ApiError::NotFound(_)) => return Err(missing()),
            Err(other) => return Err(other),
        }
        self.allow(user, "get", &namespace, &format!("get drills of namespace {namespace}")).await?;
        Ok(drill(&found))
    }
}

#[tonic::async_trait]
impl disaster_recovery_server::DisasterRecovery for Arc<DisasterRecoveryService> {
    async fn list_protection(
        &self,
        request: Request<ListProtectionRequest>,
    ) -> Result<GrpcResponse<ListProtectionResponse>, Status> {
        let audit = Audit::new("ListProtection", "grpc", &request.get_ref().tenant, "");
        self.gate.grpc(&request, audit, async |user, body| self.protections(user, body).await).await
    }

    async fn request_drill(
        &self,
        request: Request<RequestDrillRequest>,
    ) -> Result<GrpcResponse<Drill>, Status> {
        let body = request.get_ref();
        let audit = Audit::new("RequestDrill", "grpc", &body.tenant, &body.namespace);
        self.gate.grpc(&request, audit, async |user, body| self.ask_for_drill(user, body).await).await
    }

    async fn get_drill(&self, request: Request<GetDrillRequest>) -> Result<GrpcResponse<Drill>, Status> {
        let body = request.get_ref();
        let audit = Audit::new("GetDrill", "grpc", &body.tenant, &body.name);
        self.gate.grpc(&request, audit, async |user, body| self.read_drill(user, body).await).await
    }
}

/// REST: `GET /v1/tenants/{tenant}/protection`, `POST /v1/tenants/{tenant}/drills` and
/// `GET /v1/tenants/{tenant}/drills/{name}`.
pub fn routes(service: Arc<DisasterRecoveryService>) -> Router {
    Router::new()
        .route("/v1/tenants/{tenant}/protection", get(rest_list_protection))
        .route("/v1/tenants/{tenant}/drills", post(rest_request_drill))
        .route("/v1/tenants/{tenant}/drills/{name}", get(rest_get_drill))
        .with_state(service)
}

/// Protection of each of the tenant's namespaces the caller may see.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/protection",
    tag = "DisasterRecovery",
    operation_id = "ListProtection",
    params(("tenant" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")),
    responses((status = 200, description = "By namespace, then policy", body = ListProtectionResponse), Refusals),
    security(("bearer" = []))
)]
pub(crate) async fn rest_list_protection(
    State(service): State<Arc<DisasterRecoveryService>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let audit = Audit::new("ListProtection", "rest", &tenant, "");
    let request = ListProtectionRequest { tenant: tenant.clone() };
    respond(service.gate.call(&headers, audit, async |user| service.protections(user, &request).await).await)
}

/// Asks for a drill of one of the tenant's namespaces.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/drills",
    tag = "DisasterRecovery",
    operation_id = "RequestDrill",
    params(("tenant" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")),
    request_body = RequestDrillRequest,
    responses((status = 200, description = "The drill, Pending until the DR controller runs it", body = Drill), Refusals),
    security(("bearer" = []))
)]
pub(crate) async fn rest_request_drill(
    State(service): State<Arc<DisasterRecoveryService>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    request: Result<Json<RequestDrillRequest>, JsonRejection>,
) -> Response {
    let audit = Audit::new("RequestDrill", "rest", &tenant, "");
    let call = async |user: &User| {
        let request = RequestDrillRequest { tenant: tenant.clone(), ..body(request)? };
        service.ask_for_drill(user, &request).await
    };
    respond(service.gate.call(&headers, audit, call).await)
}

/// One drill, with its report once it has run.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/drills/{name}",
    tag = "DisasterRecovery",
    operation_id = "GetDrill",
    params(("tenant" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"), ("name" = String, Path, max_length = 253, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$")),
    responses((status = 200, description = "The drill", body = Drill), Refusals),
    security(("bearer" = []))
)]
pub(crate) async fn rest_get_drill(
    State(service): State<Arc<DisasterRecoveryService>>,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let audit = Audit::new("GetDrill", "rest", &tenant, &name);
    let request = GetDrillRequest { tenant: tenant.clone(), name: name.clone() };
    respond(service.gate.call(&headers, audit, async |user| service.read_drill(user, &request).await).await)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy(name: &str, status: serde_json::Value) -> ReplicationPolicy {
        serde_json::from_value(json!({
            "apiVersion": "yiyun.io/v1alpha1", "kind": "ReplicationPolicy",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"level": 5, "target": {"kubeconfigSecret": {"name": "standby"}, "site": "west"}},
            "status": status
        }))
        .unwrap()
    }

    fn conditions(ready: &str, protected: (&str, &str), degraded: (&str, &str)) -> serde_json::Value {
        let condition = |type_: &str, status: &str, reason: &str| {
            json!({"type": type_, "status": status, "reason": reason, "message": format!("{type_} {reason}"),
                "lastTransitionTime": "2026-12-01T00:00:00Z"})
        };
        json!([
            condition("Ready", ready, "Checked"),
            condition("Protected", protected.0, protected.1),
            condition("Degraded", degraded.0, degraded.1)
        ])
    }

    #[test]
    fn the_state_says_the_worst_of_the_conditions() {
        let healthy = policy(
            "p",
            json!({"conditions": conditions("True", ("True", "WithinRPO"), ("False", "Healthy")),
                "achievedRpo": "1s", "achievedRpoSeconds": 1.2, "rpoTarget": "1m", "objectsReplicated": 7,
                "drills": [{"started": "2026-12-01T00:00:00Z", "passed": true, "rpoSeconds": 0.5,
                    "rtoSeconds": 3.0, "objects": 7, "workloadsRunning": 2, "workloads": 2, "message": "ok"}]}),
        );
        let shown = protection("ns", Some(&healthy));
        assert_eq!((shown.state.as_str(), shown.level, shown.policy.as_str()), ("Protected", 5, "p"));
        assert_eq!((shown.achieved_rpo.as_str(), shown.rpo_target.as_str()), ("1s", "1m"));
        assert_eq!(
            (shown.target_site.as_str(), shown.role.as_str(), shown.objects_replicated),
            ("west", "primary", 7)
        );
        assert!(
            shown.last_drill.is_some_and(|d| d.passed && d.workloads_running == 2 && d.rto_seconds == 3.0)
        );

        let conflicts = policy(
            "p",
            json!({"conditions": conditions("True", ("True", "WithinRPO"), ("True", "Conflicts"))}),
        );
        let shown = protection("ns", Some(&conflicts));
        assert_eq!((shown.state.as_str(), shown.reason.as_str()), ("Degraded", "Conflicts"));
        let late = policy(
            "p",
            json!({"conditions": conditions("True", ("False", "RPOBreached"), ("False", "Healthy"))}),
        );
        assert_eq!(protection("ns", Some(&late)).reason, "RPOBreached");
        let invalid = policy(
            "p",
            json!({"conditions": conditions("False", ("False", "InvalidPolicy"), ("False", "Healthy"))}),
        );
        let shown = protection("ns", Some(&invalid));
        assert_eq!((shown.state.as_str(), shown.message.as_str()), ("Invalid", "Ready Checked"));
        let failed_over = policy(
            "p",
            json!({"role": "standby", "conditions": conditions("True", ("False", "FailedOver"), ("False", "Healthy"))}),
        );
        assert_eq!(protection("ns", Some(&failed_over)).state, "FailedOver");
        assert_eq!(protection("ns", Some(&policy("p", json!({})))).state, "Pending");
        let none = protection("ns", None);
        assert_eq!((none.state.as_str(), none.level, none.policy.as_str()), ("Unprotected", 0, ""));
    }

    #[test]
    fn a_drill_is_of_the_policy_asked_for_or_the_only_one() {
        let one = [policy("only", json!({}))];
        assert_eq!(chosen_policy("ns", "", &one), Ok("only".into()));
        assert!(
            matches!(chosen_policy("ns", "", &[]), Err(ApiError::FailedPrecondition(m)) if m.contains("no ReplicationPolicy"))
        );
        let two = [policy("same-city", json!({})), policy("remote", json!({}))];
        let Err(ApiError::InvalidArgument(violations)) = chosen_policy("ns", "", &two) else {
            panic!("refused")
        };
        assert_eq!(violations[0].field, "policy");
        assert!(violations[0].description.contains("same-city, remote"), "{violations:?}");
        assert_eq!(chosen_policy("ns", "remote", &two), Ok("remote".into()));
        assert!(chosen_policy("ns", "other", &two).is_err());
    }

    #[test]
    fn a_drill_request_names_every_wrong_field() {
        let request = RequestDrillRequest {
            tenant: "Bad Tenant".into(),
            namespace: "-ns".into(),
            idempotency_key: "k".repeat(129),
            policy: "UPPER".into(),
        };
        let Err(ApiError::InvalidArgument(violations)) = checked_drill(&request) else { panic!("refused") };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["tenant", "namespace", "policy", "idempotency_key"]);
        let fine = RequestDrillRequest {
            tenant: "t".into(),
            namespace: "ns".into(),
            ..RequestDrillRequest::default()
        };
        assert_eq!(checked_drill(&fine), Ok(()));
    }
}
