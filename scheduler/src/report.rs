//! What `kubectl describe pod` shows of a pod that waits: the `PodScheduled=False` condition
//! with the engine's explanation, and a `FailedScheduling` event, each written only when the
//! explanation changes, at most once in [`REWRITE_AFTER`] per pod, with at most
//! [`WRITES_IN_FLIGHT`] writes under way, events at most a few per second in all. Explanations
//! carry node counts that change with every binding: written on every change, thousands of
//! waiting pods would flood the apiserver exactly when it is busiest (measured: tens of
//! thousands of status writes timing out while 400 pods were bound).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference, Pod},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use tracing::debug;
use yiyun_kube::leader::Leadership;

/// Events written per second at most, over all pods.
const EVENTS_PER_SECOND: u32 = 20;
/// A pod's explanation is written again at most this often; a newer one waits for the next
/// attempt (unschedulable pods are tried at least every 30 s).
const REWRITE_AFTER: Duration = Duration::from_secs(5);
/// Status writes under way at most; a write that finds none free waits for the next attempt.
const WRITES_IN_FLIGHT: usize = 32;

pub struct Reporter {
    client: Client,
    component: String,
    /// The explanation last written per pod, and when.
    written: HashMap<String, (String, Instant)>,
    writes: Arc<tokio::sync::Semaphore>,
    budget: Arc<Mutex<(Instant, u32)>>,
    leadership: Leadership,
}

impl Reporter {
    pub fn new(client: Client, component: String, leadership: Leadership) -> Self {
        Reporter {
            client,
            component,
            leadership,
            written: HashMap::new(),
            writes: Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT)),
            budget: Arc::new(Mutex::new((Instant::now(), 0))),
        }
    }

    /// Forgets a pod that is gone or bound.
    pub fn forget(&mut self, key: &str) {
        self.written.remove(key);
    }

    /// Records why a pod waits, unless that is what it already says or it said something else
    /// very recently.
    pub fn unschedulable(&mut self, key: &str, uid: &str, message: &str) {
        if self
            .written
            .get(key)
            .is_some_and(|(written, at)| written == message || at.elapsed() < REWRITE_AFTER)
        {
            return;
        }
        let Ok(permit) = self.writes.clone().try_acquire_owned() else { return };
        self.written.insert(key.to_string(), (message.to_string(), Instant::now()));
        let Some((namespace, name)) = key.split_once('/') else { return };
        let (namespace, name, uid, message) =
            (namespace.to_string(), name.to_string(), uid.to_string(), message.to_string());
        let client = self.client.clone();
        let component = self.component.clone();
        let event_allowed = {
            let mut budget = self.budget.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if budget.0.elapsed().as_secs() >= 1 {
                *budget = (Instant::now(), 0);
            }
            budget.1 += 1;
            budget.1 <= EVENTS_PER_SECOND
        };
        let leadership = self.leadership.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let leadership = &leadership;
            let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            let now = Time(Timestamp::now());
            let status = serde_json::json!({
                "status": {"conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": message, "lastTransitionTime": now,
                }]}
            });
            match leadership
                .while_leading(pods.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status)))
                .await
            {
                Some(Err(err)) => {
                    debug!(pod = %name, error = %err, "cannot write the PodScheduled condition")
                }
                Some(Ok(_)) => {}
                None => return,
            }
            if !event_allowed {
                return;
            }
            let events: Api<Event> = Api::namespaced(client, &namespace);
            let event = Event {
                metadata: ObjectMeta { generate_name: Some(format!("{name}.")), ..ObjectMeta::default() },
                involved_object: ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(name.clone()),
                    namespace: Some(namespace.clone()),
                    uid: Some(uid),
                    ..ObjectReference::default()
                },
                reason: Some("FailedScheduling".into()),
                message: Some(message),
                type_: Some("Warning".into()),
                source: Some(EventSource { component: Some(component.clone()), host: None }),
                reporting_component: Some(component),
                first_timestamp: Some(now.clone()),
                last_timestamp: Some(now),
                count: Some(1),
                ..Event::default()
            };
            if let Some(Err(err)) =
                leadership.while_leading(events.create(&PostParams::default(), &event)).await
            {
                debug!(pod = %name, error = %err, "cannot write the FailedScheduling event");
            }
        });
    }
}
