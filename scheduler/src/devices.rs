//! Dynamic Resource Allocation as kube-scheduler's DynamicResources plugin does it, for whole
//! devices, with no I/O: a pod's ResourceClaims (named, or made from its templates by the
//! resource claim controller), the devices drivers publish in ResourceSlices, DeviceClasses and
//! requests that select devices by CEL, and which devices a claim gets on the node chosen.
//!
//! Not yet: `firstAvailable` sub-requests, partitionable devices (shared counters), consumable
//! capacity, device taints, slices scoped by a node selector, and yiyun's GPU fractions and
//! fragmentation-aware scoring over DRA devices (a DRA GPU is placed as a whole device by
//! count, see the README).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::{
    core::v1::Pod as KubePod,
    resource::v1::{Device, DeviceClass, DeviceSelector, ResourceClaim, ResourceSlice},
};
use kube::runtime::watcher;

use crate::store::Store;

/// A device by driver, pool and name, as an allocation names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId {
    pub driver: String,
    pub pool: String,
    pub device: String,
}

/// A device a claim gets for one of its requests.
#[derive(Clone, Debug, PartialEq)]
pub struct Allocated {
    pub request: String,
    pub device: DeviceId,
}

/// A claim to allocate on the node the pod goes to.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimWrite {
    pub namespace: String,
    pub name: String,
    pub node: String,
    /// Devices to allocate; empty when the claim was allocated already (for another pod).
    pub results: Vec<Allocated>,
    /// Who uses the claim, this pod included: `(name, uid)`.
    pub reserved_for: Vec<(String, String)>,
}

/// One request of a claim: `count` devices matching every selector.
#[derive(Clone, Debug)]
struct Request {
    name: String,
    selectors: Vec<String>,
    count: usize,
    /// `allocationMode: All`: every matching device of the node.
    all: bool,
}

/// A claim of the pod being placed, as a decision reads it.
#[derive(Clone, Debug)]
pub struct PodClaim {
    namespace: String,
    name: String,
    requests: Vec<Request>,
    /// Set when the claim is allocated already: the node it is on.
    allocated_on: Option<String>,
    reserved_for: Vec<(String, String)>,
}

#[derive(Default)]
pub struct Devices {
    /// Events go through [`apply_claim`](Self::apply_claim), [`apply_slice`](Self::apply_slice)
    /// and [`apply_class`](Self::apply_class), which keep the indexes below.
    pub claims: Store<ResourceClaim>,
    pub slices: Store<ResourceSlice>,
    pub classes: Store<DeviceClass>,
    /// Devices chosen for claims and not yet seen in their status: claim key → devices.
    assumed: HashMap<String, Vec<DeviceId>>,
    /// Devices in claims' status: claim key → devices. Kept per event, as are `holders` and
    /// the catalog, so that a decision never walks every claim and slice.
    allocated: HashMap<String, Vec<DeviceId>>,
    /// How many claims hold each device, allocated or assumed (two only while a claim's own
    /// hold and its status overlap).
    holders: HashMap<DeviceId, u32>,
    /// The devices published, made again after slices change.
    catalog: Option<Catalog>,
    /// Whether each device of the catalog matches a set of CEL selectors, by selectors:
    /// devices and expressions seldom change, and CEL is the costly part of a decision.
    verdicts: HashMap<Vec<String>, Vec<Option<bool>>>,
}

/// The devices the slices publish, numbered, so that a decision over every node reads arrays
/// rather than hashing device names.
#[derive(Default)]
struct Catalog {
    devices: Vec<(DeviceId, Device)>,
    numbers: HashMap<DeviceId, usize>,
    by_node: BTreeMap<String, Vec<usize>>,
    /// Held by a claim, by number.
    taken: Vec<bool>,
}

/// The claims a pod asks for, by its names for them: `Some(claim name)` once known (named in
/// the spec, or made from a template and recorded in the pod's status), `None` while the
/// resource claim controller has yet to make it.
pub fn claims_of(pod: &KubePod) -> Vec<(String, Option<String>)> {
    let statuses: HashMap<String, Option<String>> = pod
        .status
        .iter()
        .flat_map(|s| s.resource_claim_statuses.iter().flatten())
        .map(|s| (s.name.clone(), s.resource_claim_name.clone()))
        .collect();
    pod.spec
        .iter()
        .flat_map(|spec| spec.resource_claims.iter().flatten())
        .map(|claim| {
            let name = match &claim.resource_claim_name {
                Some(name) => Some(name.clone()),
                None => statuses.get(&claim.name).cloned().flatten(),
            };
            (claim.name.clone(), name)
        })
        .collect()
}

/// The device as CEL sees it: `device.driver`, `device.attributes[domain].name`,
/// `device.capacity[domain].name`; unqualified names belong to the driver's domain.
fn cel_device(driver: &str, device: &Device) -> serde_json::Value {
    let mut attributes: BTreeMap<String, serde_json::Map<String, serde_json::Value>> = BTreeMap::new();
    for (name, attribute) in device.attributes.iter().flatten() {
        let (domain, id) = name.rsplit_once('/').unwrap_or((driver, name.as_str()));
        let value = match attribute {
            a if a.string.is_some() => serde_json::json!(a.string),
            a if a.int.is_some() => serde_json::json!(a.int),
            a if a.bool.is_some() => serde_json::json!(a.bool),
            a if a.version.is_some() => serde_json::json!(a.version),
            _ => serde_json::Value::Null,
        };
        attributes.entry(domain.to_string()).or_default().insert(id.to_string(), value);
    }
    let mut capacity: BTreeMap<String, serde_json::Map<String, serde_json::Value>> = BTreeMap::new();
    for (name, amount) in device.capacity.iter().flatten() {
        let (domain, id) = name.rsplit_once('/').unwrap_or((driver, name.as_str()));
        let units = i64::try_from(yiyun_kube::pods::amount(&amount.value.0).0 / 1000).unwrap_or(i64::MAX);
        capacity.entry(domain.to_string()).or_default().insert(id.to_string(), serde_json::json!(units));
    }
    serde_json::json!({"driver": driver, "attributes": attributes, "capacity": capacity})
}

/// Whether every expression holds for the device; an expression that fails to compile or
/// to evaluate to `true` does not.
fn selects(expressions: &[String], device: &serde_json::Value) -> bool {
    let mut context = cel_interpreter::Context::default();
    if context.add_variable("device", device.clone()).is_err() {
        return false;
    }
    expressions.iter().all(|expression| {
        cel_interpreter::Program::compile(expression)
            .ok()
            .and_then(|program| program.execute(&context).ok())
            .is_some_and(|value| value == cel_interpreter::Value::Bool(true))
    })
}

fn expressions(selectors: Option<&Vec<DeviceSelector>>) -> Vec<String> {
    selectors.into_iter().flatten().filter_map(|s| Some(s.cel.as_ref()?.expression.clone())).collect()
}

/// The devices in a claim's status.
fn allocated_devices(claim: &ResourceClaim) -> Vec<DeviceId> {
    claim
        .status
        .iter()
        .flat_map(|s| s.allocation.iter())
        .flat_map(|a| a.devices.iter())
        .flat_map(|d| d.results.iter().flatten())
        .map(|result| DeviceId {
            driver: result.driver.clone(),
            pool: result.pool.clone(),
            device: result.device.clone(),
        })
        .collect()
}

/// What a watch event of claims changed, for waking the pods it may let fit.
#[derive(Debug, Default, PartialEq)]
pub struct ClaimChange {
    /// The claims changed, as `namespace/name`.
    pub claims: Vec<String>,
    /// Whether a device went free.
    pub freed: bool,
}

impl Devices {
    /// Applies a watch event of slices.
    pub fn apply_slice(&mut self, event: watcher::Event<ResourceSlice>) {
        self.slices.apply(event);
        self.catalog = None;
        self.verdicts.clear();
    }

    /// Applies a watch event of classes.
    pub fn apply_class(&mut self, event: watcher::Event<DeviceClass>) {
        self.classes.apply(event);
        self.verdicts.clear();
    }

    fn hold(&mut self, devices: &[DeviceId]) {
        for device in devices {
            *self.holders.entry(device.clone()).or_default() += 1;
            self.mark(device, true);
        }
    }

    /// Lets go of devices; whether one went free.
    fn unhold(&mut self, devices: &[DeviceId]) -> bool {
        let mut freed = false;
        for device in devices {
            if let Some(count) = self.holders.get_mut(device) {
                *count -= 1;
                if *count == 0 {
                    self.holders.remove(device);
                    self.mark(device, false);
                    freed = true;
                }
            }
        }
        freed
    }

    fn mark(&mut self, device: &DeviceId, taken: bool) {
        if let Some(catalog) = &mut self.catalog
            && let Some(&number) = catalog.numbers.get(device)
            && let Some(slot) = catalog.taken.get_mut(number)
        {
            *slot = taken;
        }
    }

    /// Forgets the devices held for a claim whose allocation failed.
    pub fn release(&mut self, claim_key: &str) {
        if let Some(devices) = self.assumed.remove(claim_key) {
            self.unhold(&devices);
        }
    }

    /// The pod's claims as a decision reads them, or why the pod waits.
    pub fn pod_claims(
        &self,
        namespace: &str,
        claims: &[(String, Option<String>)],
    ) -> Result<Vec<PodClaim>, String> {
        let mut out = Vec::new();
        for (pod_name, claim_name) in claims {
            let Some(claim_name) = claim_name else {
                return Err(format!("waiting for resource claim {pod_name} to be created from its template"));
            };
            let Some(claim) = self.claims.get(&format!("{namespace}/{claim_name}")) else {
                return Err(format!("resourceclaim \"{claim_name}\" not found"));
            };
            let status = claim.status.clone().unwrap_or_default();
            let allocated_on = status.allocation.as_ref().map(|allocation| {
                allocation
                    .node_selector
                    .iter()
                    .flat_map(|s| &s.node_selector_terms)
                    .flat_map(|t| t.match_fields.iter().flatten())
                    .flat_map(|r| r.values.iter().flatten())
                    .next()
                    .cloned()
                    .unwrap_or_default()
            });
            let mut requests = Vec::new();
            for request in claim.spec.devices.as_ref().and_then(|d| d.requests.clone()).unwrap_or_default() {
                let Some(exactly) = request.exactly else {
                    return Err(format!(
                        "resourceclaim \"{claim_name}\": firstAvailable requests are not supported by yiyun-scheduler yet"
                    ));
                };
                let Some(class) = self.classes.get(&exactly.device_class_name) else {
                    return Err(format!(
                        "resourceclaim \"{claim_name}\": deviceclass \"{}\" not found",
                        exactly.device_class_name
                    ));
                };
                let mut selectors = expressions(class.spec.selectors.as_ref());
                selectors.extend(expressions(exactly.selectors.as_ref()));
                requests.push(Request {
                    name: request.name,
                    selectors,
                    count: usize::try_from(exactly.count.unwrap_or(1)).unwrap_or(1),
                    all: exactly.allocation_mode.as_deref() == Some("All"),
                });
            }
            out.push(PodClaim {
                namespace: namespace.to_string(),
                name: claim_name.clone(),
                requests,
                allocated_on,
                reserved_for: status
                    .reserved_for
                    .iter()
                    .flatten()
                    .map(|r| (r.name.clone(), r.uid.clone()))
                    .collect(),
            });
        }
        Ok(out)
    }

    /// Numbers the devices the slices publish again if slices changed since.
    fn catalog(&mut self) -> &Catalog {
        let holders = &self.holders;
        let slices = &self.slices;
        self.catalog.get_or_insert_with(|| {
            let mut catalog = Catalog::default();
            for slice in slices.values() {
                let Some(node) = slice.spec.node_name.clone() else { continue };
                for device in slice.spec.devices.iter().flatten() {
                    let id = DeviceId {
                        driver: slice.spec.driver.clone(),
                        pool: slice.spec.pool.name.clone(),
                        device: device.name.clone(),
                    };
                    let number = catalog.devices.len();
                    catalog.by_node.entry(node.clone()).or_default().push(number);
                    catalog.taken.push(holders.contains_key(&id));
                    catalog.numbers.insert(id.clone(), number);
                    catalog.devices.push((id, device.clone()));
                }
            }
            catalog
        })
    }

    /// For every request of the claims still to allocate, in order, which devices of the
    /// catalog its selectors select; CEL runs once per device and set of selectors.
    fn selections(&mut self, claims: &[PodClaim]) -> Vec<Vec<bool>> {
        let count = self.catalog().devices.len();
        let requests = claims.iter().filter(|c| c.allocated_on.is_none()).flat_map(|c| &c.requests);
        let mut out = Vec::new();
        for request in requests {
            let verdicts = self.verdicts.entry(request.selectors.clone()).or_default();
            verdicts.resize(count, None);
            let devices = self.catalog.as_ref().map(|c| c.devices.as_slice()).unwrap_or_default();
            let selected = verdicts
                .iter_mut()
                .zip(devices)
                .map(|(verdict, (id, device))| {
                    *verdict
                        .get_or_insert_with(|| selects(&request.selectors, &cel_device(&id.driver, device)))
                })
                .collect();
            out.push(selected);
        }
        out
    }

    /// Picks free devices among a node's `devices` (numbers in the catalog) for every request
    /// of `claims` (none twice), given the requests' `selections`; or `None`.
    fn pick(
        catalog: &Catalog,
        claims: &[PodClaim],
        devices: &[usize],
        selections: &[Vec<bool>],
    ) -> Option<Vec<Vec<Allocated>>> {
        let mut chosen: Vec<usize> = Vec::new();
        let mut selections = selections.iter();
        let mut out = Vec::new();
        for claim in claims {
            let mut results = Vec::new();
            if claim.allocated_on.is_none() {
                for request in &claim.requests {
                    let selected = selections.next()?;
                    let free = |number: &usize| {
                        selected.get(*number) == Some(&true)
                            && catalog.taken.get(*number) == Some(&false)
                            && !chosen.contains(number)
                    };
                    let matching: Vec<usize> = devices.iter().copied().filter(free).collect();
                    let wanted = if request.all { matching.len().max(1) } else { request.count };
                    if matching.len() < wanted {
                        return None;
                    }
                    for number in matching.into_iter().take(wanted) {
                        chosen.push(number);
                        let device = catalog.devices.get(number)?.0.clone();
                        results.push(Allocated { request: request.name.clone(), device });
                    }
                }
            }
            out.push(results);
        }
        Some(out)
    }

    /// The nodes where every claim can be allocated (or is, for claims allocated already).
    pub fn nodes_for(&mut self, claims: &[PodClaim]) -> BTreeSet<String> {
        let selections = self.selections(claims);
        let catalog = self.catalog();
        let pinned: Vec<&String> = claims.iter().filter_map(|c| c.allocated_on.as_ref()).collect();
        let nodes: BTreeSet<String> = catalog
            .by_node
            .iter()
            .filter(|(node, _)| pinned.iter().all(|p| p == node))
            .filter(|(_, devices)| Self::pick(catalog, claims, devices, &selections).is_some())
            .map(|(node, _)| node.clone())
            .collect();
        // A claim allocated already whose node publishes no devices (any more) still holds there.
        match (pinned.first(), nodes.is_empty()) {
            (Some(node), true) if claims.iter().all(|c| c.allocated_on.is_some()) => {
                BTreeSet::from([(*node).clone()])
            }
            _ => nodes,
        }
    }

    /// The claim writes for placing the pod (`pod`, `uid`) on `node`, the devices held until
    /// the claims show them; `None` if the devices were taken meanwhile.
    pub fn writes_for(
        &mut self,
        claims: &[PodClaim],
        node: &str,
        pod: (&str, &str),
    ) -> Option<Vec<ClaimWrite>> {
        let selections = self.selections(claims);
        let catalog = self.catalog();
        let devices = catalog.by_node.get(node).map(Vec::as_slice).unwrap_or_default();
        let picked = Self::pick(catalog, claims, devices, &selections)?;
        let mut writes = Vec::new();
        for (claim, results) in claims.iter().zip(picked) {
            let key = format!("{}/{}", claim.namespace, claim.name);
            if !results.is_empty() {
                let devices: Vec<DeviceId> = results.iter().map(|r| r.device.clone()).collect();
                self.hold(&devices);
                if let Some(before) = self.assumed.insert(key, devices) {
                    self.unhold(&before);
                }
            }
            let mut reserved_for = claim.reserved_for.clone();
            if !reserved_for.iter().any(|(_, uid)| uid == pod.1) {
                reserved_for.push((pod.0.to_string(), pod.1.to_string()));
            }
            writes.push(ClaimWrite {
                namespace: claim.namespace.clone(),
                name: claim.name.clone(),
                node: node.to_string(),
                results,
                reserved_for,
            });
        }
        Some(writes)
    }

    /// Applies a watch event of claims: what the claims changed hold, and holds the watch
    /// shows settled (the claim allocated, or gone) dropped.
    pub fn apply_claim(&mut self, event: watcher::Event<ResourceClaim>) -> ClaimChange {
        let claims = self.claims.apply(event);
        let mut freed = false;
        for key in &claims {
            let now = self.claims.get(key).map(allocated_devices).unwrap_or_default();
            let allocated = !now.is_empty();
            self.hold(&now);
            let before =
                if allocated { self.allocated.insert(key.clone(), now) } else { self.allocated.remove(key) };
            freed |= before.is_some_and(|before| self.unhold(&before));
            let gone = self.claims.get(key).is_none();
            if (allocated || gone)
                && let Some(assumed) = self.assumed.remove(key)
            {
                freed |= self.unhold(&assumed);
            }
        }
        ClaimChange { claims, freed }
    }
}

/// The status a claim write sets: the devices and the node, and who uses it.
pub fn claim_status(write: &ClaimWrite) -> serde_json::Value {
    let reserved: Vec<serde_json::Value> = write
        .reserved_for
        .iter()
        .map(|(name, uid)| serde_json::json!({"resource": "pods", "name": name, "uid": uid}))
        .collect();
    if write.results.is_empty() {
        return serde_json::json!({"status": {"reservedFor": reserved}});
    }
    let results: Vec<serde_json::Value> = write
        .results
        .iter()
        .map(|r| serde_json::json!({"request": r.request, "driver": r.device.driver, "pool": r.device.pool, "device": r.device.device}))
        .collect();
    serde_json::json!({"status": {
        "allocation": {
            "devices": {"results": results},
            "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [write.node]}]}]}
        },
        "reservedFor": reserved
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(json: serde_json::Value) -> T {
        serde_json::from_value(json).expect("valid object")
    }

    fn slice(node: &str, devices: usize, model: &str) -> ResourceSlice {
        let devices: Vec<serde_json::Value> = (0..devices)
            .map(|i| serde_json::json!({"name": format!("gpu-{i}"), "attributes": {"model": {"string": model}, "dra.example.com/numa": {"int": i}},
                "capacity": {"memory": {"value": "80Gi"}}}))
            .collect();
        parse(
            serde_json::json!({"metadata": {"name": node}, "spec": {"driver": "gpu.example.com", "nodeName": node,
            "pool": {"name": node, "resourceSliceCount": 1}, "devices": devices}}),
        )
    }

    fn devices_with(classes: serde_json::Value, claims: serde_json::Value) -> Devices {
        let mut devices = Devices::default();
        devices.apply_slice(watcher::Event::Apply(slice("n1", 2, "A100")));
        devices.apply_slice(watcher::Event::Apply(slice("n2", 1, "H800")));
        for class in classes.as_array().into_iter().flatten() {
            devices.apply_class(watcher::Event::Apply(parse(class.clone())));
        }
        for claim in claims.as_array().into_iter().flatten() {
            devices.apply_claim(watcher::Event::Apply(parse(claim.clone())));
        }
        devices
    }

    fn claim(name: &str, class: &str, count: i64, selector: Option<&str>) -> serde_json::Value {
        let mut exactly = serde_json::json!({"deviceClassName": class, "count": count});
        if let Some(selector) = selector {
            exactly["selectors"] = serde_json::json!([{"cel": {"expression": selector}}]);
        }
        serde_json::json!({"metadata": {"name": name, "namespace": "ns"}, "spec": {"devices": {"requests": [{"name": "gpu", "exactly": exactly}]}}})
    }

    #[test]
    fn devices_are_selected_by_the_class_and_request_cel_and_never_given_twice() {
        let classes = serde_json::json!([{"metadata": {"name": "gpu"}, "spec": {"selectors": [{"cel": {"expression": "device.driver == \"gpu.example.com\""}}]}}]);
        let claims = serde_json::json!([
            claim("two", "gpu", 2, None),
            claim("h800", "gpu", 1, Some("device.attributes[\"gpu.example.com\"].model == \"H800\"")),
            claim("big", "gpu", 1, Some("device.capacity[\"gpu.example.com\"].memory >= 68719476736")),
        ]);
        let mut devices = devices_with(classes, claims);
        let named = |name: &str| vec![(name.to_string(), Some(name.to_string()))];
        let two = devices.pod_claims("ns", &named("two")).expect("claims");
        assert_eq!(devices.nodes_for(&two), BTreeSet::from(["n1".to_string()]), "only n1 has two devices");
        let h800 = devices.pod_claims("ns", &named("h800")).expect("claims");
        assert_eq!(devices.nodes_for(&h800), BTreeSet::from(["n2".to_string()]), "the model is read by CEL");
        let big = devices.pod_claims("ns", &named("big")).expect("claims");
        assert_eq!(devices.nodes_for(&big).len(), 2, "capacity in bytes: 80Gi on every device");
        let writes = devices.writes_for(&two, "n1", ("p1", "u1")).expect("two devices on n1");
        assert_eq!(writes[0].results.len(), 2);
        assert_eq!(claim_status(&writes[0])["status"]["reservedFor"][0]["uid"], "u1");
        // Held for the first claim: no device is left on n1 for another.
        assert_eq!(devices.nodes_for(&big), BTreeSet::from(["n2".to_string()]));
    }

    #[test]
    fn a_device_is_free_again_once_its_claim_is_deleted() {
        let classes = serde_json::json!([{"metadata": {"name": "gpu"}, "spec": {}}]);
        let mut allocated = claim("held", "gpu", 1, None);
        allocated["status"] = serde_json::json!({"allocation": {"devices": {"results": [
            {"request": "gpu", "driver": "gpu.example.com", "pool": "n2", "device": "gpu-0"}]}}});
        let mut devices =
            devices_with(classes, serde_json::json!([allocated.clone(), claim("one", "gpu", 1, None)]));
        let one = devices.pod_claims("ns", &[("gpu".into(), Some("one".into()))]).expect("claims");
        assert_eq!(devices.nodes_for(&one), BTreeSet::from(["n1".to_string()]), "n2's device is taken");
        let change = devices.apply_claim(watcher::Event::Delete(parse(allocated)));
        assert_eq!(change, ClaimChange { claims: vec!["ns/held".into()], freed: true });
        assert_eq!(devices.nodes_for(&one).len(), 2, "n2's device is free again");
        let change = devices.apply_claim(watcher::Event::Apply(parse(claim("other", "gpu", 1, None))));
        assert!(!change.freed, "a new claim frees nothing");
    }

    #[test]
    fn a_pod_waits_for_its_claim_with_a_reason() {
        let devices =
            devices_with(serde_json::json!([]), serde_json::json!([claim("c", "missing-class", 1, None)]));
        assert!(
            devices
                .pod_claims("ns", &[("gpu".into(), None)])
                .is_err_and(|e| e.contains("created from its template"))
        );
        assert!(
            devices
                .pod_claims("ns", &[("gpu".into(), Some("gone".into()))])
                .is_err_and(|e| e.contains("not found"))
        );
        assert!(
            devices
                .pod_claims("ns", &[("gpu".into(), Some("c".into()))])
                .is_err_and(|e| e.contains("deviceclass \"missing-class\" not found"))
        );
    }
}
