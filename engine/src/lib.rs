//! yiyun's placement engine, in plain Rust: no Kubernetes client, no async runtime, no I/O.
//! The simulator replays traces through it; the Kubernetes scheduler feeds it what it watches.
//!
//! A decision never scans node by node: nodes alike in labels, taints, site and GPU model form
//! a class that is filtered once per pod, nodes of a class with the same free resources form a
//! group, and for each typical pod shape the groups are kept in score order, rescored only when
//! they change (`ranking`).

pub mod cost;
mod engine;
mod explain;
pub mod filter;
mod fxhash;
pub mod gang;
pub mod gpu;
pub mod model;
pub mod observed;
pub mod preempt;
mod pressure;
mod ranking;
pub mod reserve;
pub mod rng;
pub mod tenants;
mod topology;

pub use engine::{DEFAULT_EVICTIONS_PER_MINUTE, Engine, NodeId, PlacedPod, Placement, Policy, SiteGpus};
pub use explain::Explanation;

#[cfg(test)]
mod ranking_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod topology_tests;
#[cfg(test)]
mod yiyun_tests;
