//! Compute work (`yiyun.api.v1.Jobs`, REST under `/v1/namespaces/{namespace}/jobs`): a
//! department submits a job; it becomes a Kubernetes Job for yiyun-scheduler (and a PodGroup
//! when it is a gang) in one of its tenant's namespaces. Its pods show where they run (node,
//! rack, site, region) or, while they wait, the scheduler's explanation; its events stream.
//!
//! Access is the caller's own RBAC on `jobs.batch` in the namespace (and `create
//! podgroups.yiyun.io` for a gang), asked before anything is read: whoever may run Jobs there
//! with kubectl may run them here, and no one else. Jobs, their pods and the nodes are read
//! from watches, so following many jobs costs the apiserver nothing per call.
//!
//! A gang's Job is created suspended, its PodGroup (owned by the Job) next, and only then is
//! the Job let go, so the scheduler never sees a member before its gang; a submission that fails
//! half-way deletes what it made, and one repeated with its idempotency key finishes it.

mod rules;

use std::{collections::BTreeMap, future::Future, pin::Pin, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, Query, State, rejection::JsonRejection, rejection::QueryRejection},
    http::HeaderMap,
    response::Response,
    routing::get,
};
use futures::{Stream, StreamExt};
use k8s_openapi::api::{
    batch::v1::Job as Stored,
    core::v1::{Event as CoreEvent, Namespace, Node, Pod},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy},
    runtime::{
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response as GrpcResponse, Status};
use yiyun_crds::{PodGroup, labels};
use yiyun_kube::access::{Action, User};

use self::rules::{
    JOB_NAME, SUBMISSION, SUBMITTED_BY, desired_job, desired_pod_group, event_message, is_event_of,
    job_message, submit_violations,
};
use crate::{
    caller::{Audit, Gate, authorize},
    error::{ApiError, FieldViolation, Refusals, is_label, respond},
    proto::{
        self, CancelJobRequest, GetJobRequest, Job, JobEvent, JobEvents, ListJobsRequest, ListJobsResponse,
        SubmitJobRequest, WatchJobEventsRequest,
    },
    shared::{
        Events, Page, body, digest, idempotent_name, kube_error, namespace_violation, page_query, page_size,
        page_size_violation, tenant_of,
    },
};

/// What the jobs service reads from watches.
#[derive(Clone)]
pub struct Caches {
    jobs: Store<Stored>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    /// Tenants' namespaces only.
    namespaces: Store<Namespace>,
}

impl Caches {
    /// The watches of jobs, of the pods of jobs, of nodes and of tenants' namespaces: the caches, one receiver per
    /// watch that turns true once it has listed, and the future that keeps them current.
    pub fn start(client: &Client) -> (Caches, Vec<watch::Receiver<bool>>, impl Future<Output = ()> + use<>) {
        let config = watcher::Config::default();
        let (jobs, jobs_listed, job_events) = yiyun_kube::watches::reflect(
            watcher::watcher(Api::<Stored>::all(client.clone()), config.clone()),
            |_| {},
        );
        let (pods, pods_listed, pod_events) = yiyun_kube::watches::reflect(
            watcher::watcher(Api::<Pod>::all(client.clone()), config.clone().labels(JOB_NAME)),
            |_| {},
        );
        let (nodes, nodes_listed, node_events) = yiyun_kube::watches::reflect(
            watcher::watcher(Api::<Node>::all(client.clone()), config.clone()),
            |_| {},
        );
        let (namespaces, namespaces_listed, namespace_events) = yiyun_kube::watches::reflect(
            watcher::watcher(Api::<Namespace>::all(client.clone()), config.labels(labels::TENANT)),
            |_| {},
        );
        let drive = async move {
            futures::join!(
                job_events.for_each(|_| async {}),
                pod_events.for_each(|_| async {}),
                node_events.for_each(|_| async {}),
                namespace_events.for_each(|_| async {}),
            );
        };
        let listed = vec![jobs_listed, pods_listed, nodes_listed, namespaces_listed];
        (Caches { jobs, pods, nodes, namespaces }, listed, drive)
    }
}

/// The Jobs service.
pub struct JobService {
    gate: Arc<Gate>,
    client: Client,
    events: Events,
    caches: Caches,
    /// The scheduler that places submitted jobs' pods.
    scheduler: String,
}

/// The stream of a job's events over gRPC.
pub type JobEventStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;

impl JobService {
    pub fn new(gate: Arc<Gate>, client: Client, caches: Caches, scheduler: String) -> Arc<JobService> {
        let events = Events::new(&client);
        Arc::new(JobService { gate, client, events, caches, scheduler })
    }

    async fn allow(
        &self,
        user: &User,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: &str,
        name: Option<&str>,
    ) -> Result<(), ApiError> {
        let action = Action {
            group: group.into(),
            resource: resource.into(),
            verb: verb.into(),
            namespace: Some(namespace.into()),
            name: name.map(String::from),
            ..Action::default()
        };
        let what = format!("{verb} {resource} in namespace {namespace}");
        authorize(&self.gate.access, user, &action, &what).await
    }

    fn jobs(&self, namespace: &str) -> Api<Stored> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The tenant whose namespace `namespace` is, from the watch (empty if it is not one).
    fn tenant_in(&self, namespace: &str) -> String {
        let ns = self.caches.namespaces.get(&ObjectRef::new(namespace));
        ns.and_then(|ns| ns.labels().get(labels::TENANT).cloned()).unwrap_or_default()
    }

    /// `job` of `tenant` as the API shows it, its pods from the watch.
    fn show(&self, job: &Stored, tenant: &str) -> Job {
        let namespace = job.namespace().unwrap_or_default();
        let name = job.name_any();
        let pods: Vec<Arc<Pod>> = self
            .caches
            .pods
            .state()
            .into_iter()
            .filter(|p| {
                p.namespace().as_deref() == Some(&namespace) && p.labels().get(JOB_NAME) == Some(&name)
            })
            .collect();
        let node = |name: &str| self.caches.nodes.get(&ObjectRef::new(name));
        job_message(job, tenant, &pods, &node)
    }

    pub async fn submit(&self, user: &User, request: &SubmitJobRequest) -> Result<Job, ApiError> {
        // Who may submit here first: the rules of a job are for those who may run one.
        if let Some(violation) = namespace_violation(&request.namespace) {
            return Err(ApiError::InvalidArgument(vec![violation]));
        }
        let namespace = request.namespace.as_str();
        self.allow(user, "create", "batch", "jobs", namespace, None).await?;
        if request.gang {
            self.allow(user, "create", yiyun_crds::GROUP, "podgroups", namespace, None).await?;
        }
        let violations = submit_violations(request);
        if !violations.is_empty() {
            return Err(ApiError::InvalidArgument(violations));
        }
        // The watch knows the tenant's namespaces; one made a moment ago is asked for.
        let cached = self.caches.namespaces.get(&ObjectRef::new(namespace));
        let tenant = match cached.and_then(|ns| ns.labels().get(labels::TENANT).cloned()) {
            Some(tenant) => tenant,
            None => tenant_of(&self.client, namespace).await?,
        };
        let name = match (request.name.as_str(), request.idempotency_key.as_str()) {
            ("", "") => format!("job-{}", random_hex()),
            ("", key) => idempotent_name("job", &user.name, key),
            (name, _) => name.to_string(),
        };
        let mut job = desired_job(request, &name, &tenant, &self.scheduler);
        let submission =
            digest(&[user.name.as_bytes(), &serde_json::to_vec(&job.spec).unwrap_or_default()], 16);
        job.annotations_mut().insert(SUBMITTED_BY.into(), user.name.clone());
        job.annotations_mut().insert(SUBMISSION.into(), submission.clone());
        let api = self.jobs(namespace);
        let created = match api.create(&PostParams::default(), &job).await {
            Ok(created) => {
                let note = format!("{} submitted it through the self-service API", user.name);
                self.events.tell(&created, false, "Submitted", "Submit", note);
                created
            }
            Err(kube::Error::Api(status)) if status.code == 409 && !request.idempotency_key.is_empty() => {
                // The same key again: the same job, finished if it was left half-made.
                let existing = api.get(&name).await.map_err(|err| kube_error(err, &format!("job {name}")))?;
                if existing.annotations().get(SUBMISSION) != Some(&submission) {
                    return Err(ApiError::Conflict(format!(
                        "idempotency key {:?} was used for job {name}, which asked for something else",
                        request.idempotency_key
                    )));
                }
                existing
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                return Err(ApiError::Conflict(format!("job {name} exists already in {namespace}")));
            }
            Err(err) => return Err(kube_error(err, &format!("job {name}"))),
        };
        if !request.gang {
            return Ok(self.show(&created, &tenant));
        }
        match self.release_gang(request, created).await {
            Ok(released) => Ok(self.show(&released, &tenant)),
            Err(err) => {
                // Nothing half-made is left behind: the Job goes, its PodGroup with it.
                let delete = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..DeleteParams::default()
                };
                if let Err(cleanup) = api.delete(&name, &delete).await {
                    tracing::warn!(job = %name, %cleanup, "cannot delete the job of a failed submission");
                }
                Err(err)
            }
        }
    }

    /// Creates a gang's PodGroup (unless it exists) and lets its suspended Job go: the Job as
    /// it is then.
    async fn release_gang(&self, request: &SubmitJobRequest, job: Stored) -> Result<Stored, ApiError> {
        let namespace = &request.namespace;
        let name = job.name_any();
        let groups: Api<PodGroup> = Api::namespaced(self.client.clone(), namespace);
        match groups.create(&PostParams::default(), &desired_pod_group(request, &job)).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(err) => return Err(kube_error(err, &format!("podgroup {name}"))),
        }
        if job.spec.as_ref().and_then(|s| s.suspend) != Some(true) {
            return Ok(job);
        }
        self.jobs(namespace)
            .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": false}})))
            .await
            .map_err(|err| kube_error(err, &format!("job {name}")))
    }

    fn checked_name(namespace: &str, name: &str) -> Result<(), ApiError> {
        let mut violations = Vec::new();
        violations.extend(namespace_violation(namespace));
        if !is_label(name) {
            violations.push(FieldViolation::new("name", "a job's name"));
        }
        if violations.is_empty() { Ok(()) } else { Err(ApiError::InvalidArgument(violations)) }
    }

    /// The job from the watch, or from the apiserver when the watch has not seen it yet (just
    /// submitted).
    async fn find(&self, namespace: &str, name: &str) -> Result<Arc<Stored>, ApiError> {
        if let Some(job) = self.caches.jobs.get(&ObjectRef::new(name).within(namespace)) {
            return Ok(job);
        }
        let job =
            self.jobs(namespace).get(name).await.map_err(|err| kube_error(err, &format!("job {name}")))?;
        Ok(Arc::new(job))
    }

    pub async fn read(&self, user: &User, request: &GetJobRequest) -> Result<Job, ApiError> {
        Self::checked_name(&request.namespace, &request.name)?;
        self.allow(user, "get", "batch", "jobs", &request.namespace, Some(&request.name)).await?;
        let job = self.find(&request.namespace, &request.name).await?;
        Ok(self.show(&job, &self.tenant_in(&request.namespace)))
    }

    pub async fn list(&self, user: &User, request: &ListJobsRequest) -> Result<ListJobsResponse, ApiError> {
        let mut violations = Vec::new();
        violations.extend(namespace_violation(&request.namespace));
        violations.extend(page_size_violation(request.page_size));
        if !violations.is_empty() {
            return Err(ApiError::InvalidArgument(violations));
        }
        self.allow(user, "list", "batch", "jobs", &request.namespace, None).await?;
        // The token is the last name of the previous page.
        if !request.page_token.is_empty() && !is_label(&request.page_token) {
            return Err(ApiError::invalid("page_token", "not from this list: start again without one"));
        }
        let namespace = Some(request.namespace.clone());
        let mut jobs: Vec<Arc<Stored>> = self
            .caches
            .jobs
            .state()
            .into_iter()
            .filter(|job| {
                job.namespace() == namespace && job.name_any().as_str() > request.page_token.as_str()
            })
            .collect();
        jobs.sort_by_key(|job| job.name_any());
        let size = page_size(request.page_size);
        let next_page_token = if jobs.len() > size { jobs[size - 1].name_any() } else { String::new() };
        jobs.truncate(size);
        // One pass over the namespace's pods for the whole page.
        let mut pods: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
        for pod in self.caches.pods.state() {
            if pod.namespace() == namespace
                && let Some(job) = pod.labels().get(JOB_NAME)
            {
                pods.entry(job.clone()).or_default().push(pod);
            }
        }
        let node = |name: &str| self.caches.nodes.get(&ObjectRef::new(name));
        let tenant = self.tenant_in(&request.namespace);
        let items = jobs
            .iter()
            .map(|job| job_message(job, &tenant, pods.get(&job.name_any()).map_or(&[], Vec::as_slice), &node))
            .collect();
        Ok(ListJobsResponse { items, next_page_token })
    }

    pub async fn cancel(&self, user: &User, request: &CancelJobRequest) -> Result<Job, ApiError> {
        Self::checked_name(&request.namespace, &request.name)?;
        self.allow(user, "delete", "batch", "jobs", &request.namespace, Some(&request.name)).await?;
        let name = &request.name;
        let job = self.find(&request.namespace, name).await?;
        let mut shown = self.show(&job, &self.tenant_in(&request.namespace));
        self.events.tell(&*job, false, "Cancelled", "Cancel", format!("{} cancelled it", user.name));
        // Background: the Job goes now, its pods and PodGroup right after (their owner is gone).
        let delete = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        self.jobs(&request.namespace)
            .delete(name, &delete)
            .await
            .map_err(|err| kube_error(err, &format!("job {name}")))?;
        shown.phase = "Cancelled".into();
        Ok(shown)
    }

    /// The job's events so far, oldest first, and (with `follow`) a watch of the namespace's
    /// events from then on.
    pub async fn events(
        &self,
        user: &User,
        request: &WatchJobEventsRequest,
    ) -> Result<JobEventStream, ApiError> {
        Self::checked_name(&request.namespace, &request.name)?;
        self.allow(user, "get", "batch", "jobs", &request.namespace, Some(&request.name)).await?;
        self.find(&request.namespace, &request.name).await?;
        let events: Api<CoreEvent> = Api::namespaced(self.client.clone(), &request.namespace);
        let job = request.name.clone();
        if !request.follow {
            let listed =
                events.list(&Default::default()).await.map_err(|err| kube_error(err, "the job's events"))?;
            let mut found: Vec<JobEvent> =
                listed.items.iter().filter(|e| is_event_of(&job, e)).map(event_message).collect();
            found.sort_by(|a, b| a.time.cmp(&b.time));
            return Ok(Box::pin(futures::stream::iter(found.into_iter().map(Ok))));
        }
        let (sender, receiver) = mpsc::channel(64);
        tokio::spawn(follow_events(events, job, sender));
        Ok(Box::pin(futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|event| (event, receiver))
        })))
    }
}

/// Sends the job's events: those already there oldest first, then each new one, until the
/// caller hangs up.
async fn follow_events(events: Api<CoreEvent>, job: String, sender: mpsc::Sender<Result<JobEvent, Status>>) {
    let mut watch = std::pin::pin!(watcher::watcher(events, watcher::Config::default()));
    let mut initial = Vec::new();
    loop {
        let next = tokio::select! {
            () = sender.closed() => return,
            next = watch.next() => next,
        };
        let sent = match next {
            None => return,
            Some(Ok(watcher::Event::InitApply(event))) => {
                if is_event_of(&job, &event) {
                    initial.push(event_message(&event));
                }
                Ok(())
            }
            Some(Ok(watcher::Event::InitDone)) => {
                initial.sort_by(|a, b| a.time.cmp(&b.time));
                let mut sent = Ok(());
                for event in initial.drain(..) {
                    sent = sent.and(sender.send(Ok(event)).await.map_err(drop));
                }
                sent
            }
            Some(Ok(watcher::Event::Apply(event))) if is_event_of(&job, &event) => {
                sender.send(Ok(event_message(&event))).await.map_err(drop)
            }
            Some(Ok(_)) => Ok(()),
            Some(Err(err)) => {
                tracing::debug!(%err, "watch of a job's events failed; it retries");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                Ok(())
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

/// 10 random bytes in hex: a generated job name.
fn random_hex() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 5];
    // The system's random source failing leaves zeros: a name that may clash, refused as such.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl proto::jobs_server::Jobs for Arc<JobService> {
    type WatchJobEventsStream = JobEventStream;

    async fn submit_job(&self, request: Request<SubmitJobRequest>) -> Result<GrpcResponse<Job>, Status> {
        let body = request.get_ref();
        let audit = Audit::new("SubmitJob", "grpc", "", &body.namespace);
        self.gate.grpc(&request, audit, async |user, body| self.submit(user, body).await).await
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<GrpcResponse<Job>, Status> {
        let body = request.get_ref();
        let audit = Audit::new("GetJob", "grpc", "", &body.name);
        self.gate.grpc(&request, audit, async |user, body| self.read(user, body).await).await
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<GrpcResponse<ListJobsResponse>, Status> {
        let body = request.get_ref();
        let audit = Audit::new("ListJobs", "grpc", "", &body.namespace);
        self.gate.grpc(&request, audit, async |user, body| self.list(user, body).await).await
    }

    async fn cancel_job(&self, request: Request<CancelJobRequest>) -> Result<GrpcResponse<Job>, Status> {
        let body = request.get_ref();
        let audit = Audit::new("CancelJob", "grpc", "", &body.name);
        self.gate.grpc(&request, audit, async |user, body| self.cancel(user, body).await).await
    }

    async fn watch_job_events(
        &self,
        request: Request<WatchJobEventsRequest>,
    ) -> Result<GrpcResponse<JobEventStream>, Status> {
        let body = request.get_ref();
        let audit = Audit::new("WatchJobEvents", "grpc", "", &body.name);
        self.gate.grpc(&request, audit, async |user, body| self.events(user, body).await).await
    }
}

/// REST: `POST /v1/namespaces/{namespace}/jobs`, `GET` it for a page, `GET` and `DELETE`
/// `.../{name}`, and `GET .../{name}/events`.
pub fn routes(service: Arc<JobService>) -> Router {
    Router::new()
        .route("/v1/namespaces/{namespace}/jobs", get(rest_list).post(rest_submit))
        .route("/v1/namespaces/{namespace}/jobs/{name}", get(rest_get).delete(rest_cancel))
        .route("/v1/namespaces/{namespace}/jobs/{name}/events", get(rest_events))
        .with_state(service)
}

/// Submits a job.
#[utoipa::path(
    post,
    path = "/v1/namespaces/{namespace}/jobs",
    tag = "Jobs",
    operation_id = "SubmitJob",
    params(("namespace" = String, Path, description = "A namespace of the caller's tenant", pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")),
    request_body = SubmitJobRequest,
    responses((status = 200, description = "The job", body = Job), Refusals),
    security(("bearer" = []))
)]
pub(crate) async fn rest_submit(
    State(service): State<Arc<JobService>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    request: Result<Json<SubmitJobRequest>, JsonRejection>,
) -> Response {
    let audit = Audit::new("SubmitJob", "rest", "", &namespace);
    let call = async |user: &User| {
        let request = SubmitJobRequest { namespace: namespace.clone(), ..body(request)? };
        service.submit(user, &request).await
    };
    respond(service.gate.call(&headers, audit, call).await)
}

/// One job, with where its pods run or why they wait.
#[utoipa::path(
    get,
    path = "/v1/namespaces/{namespace}/jobs/{name}",
    tag = "Jobs",
    operation_id = "GetJob",
    params(("namespace" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"), ("name" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")),
    responses((status = 200, description = "The job", body = Job), Refusals),
    security(("bearer" = []))
)]
pub(crate) async fn rest_get(
    State(service): State<Arc<JobService>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let audit = Audit::new("GetJob", "rest", "", &name);
    let request = GetJobRequest { namespace, name: name.clone() };
    respond(service.gate.call(&headers, audit, async |user| service.read(user, &request).await).await)
}

/// A page of a namespace's jobs, by name.
#[utoipa::path(
    get,
    path = "/v1/namespaces/{namespace}/jobs",
    tag = "Jobs",
    operation_id = "ListJobs",
    params(("namespace" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"), Page),
    responses((status = 200, description = "A page", body = ListJobsResponse), Refusals),
    security(("bearer" = []))
)]
pub(crate) async fn rest_list(
    State(service): State<Arc<JobService>>,
    Path(namespace): Path<String>,
    page: Result<Query<Page>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let audit = Audit::new("ListJobs", "rest", "", &namespace);
    let call = async |user: &User| {
        let (page_size, page_token) = page_query(page)?;
        service.list(user, &ListJobsRequest { namespace: namespace.clone(), page_size, page_token }).await
    };
    respond(service.gate.call(&headers, audit, call).await)
}

/// Cancels a job: it and its pods are deleted.
#[utoipa::path(
    delete,
    path = "/v1/namespaces/{namespace}/jobs/{name}",
    tag = "Jobs",
    operation_id = "CancelJob",
    params(("namespace" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"), ("name" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")),
    responses((status = 200, description = "The job as it was, Cancelled", body = Job), Refusals),
    security(("bearer" = []))
)]
pub(crate) async fn rest_cancel(
    State(service): State<Arc<JobService>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let audit = Audit::new("CancelJob", "rest", "", &name);
    let request = CancelJobRequest { namespace, name: name.clone() };
    respond(service.gate.call(&headers, audit, async |user| service.cancel(user, &request).await).await)
}

/// The job's events so far, oldest first (gRPC's WatchJobEvents also follows new ones).
#[utoipa::path(
    get,
    path = "/v1/namespaces/{namespace}/jobs/{name}/events",
    tag = "Jobs",
    operation_id = "ListJobEvents",
    params(("namespace" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"), ("name" = String, Path, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")),
    responses((status = 200, description = "The events", body = JobEvents), Refusals),
    security(("bearer" = []))
)]
pub(crate) async fn rest_events(
    State(service): State<Arc<JobService>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let audit = Audit::new("ListJobEvents", "rest", "", &name);
    let request = WatchJobEventsRequest { namespace, name: name.clone(), follow: false };
    let call = async |user: &User| {
        let events = service.events(user, &request).await?;
        let items = events.filter_map(|event| async move { event.ok() }).collect().await;
        Ok(JobEvents { items })
    };
    respond(service.gate.call(&headers, audit, call).await)
}
