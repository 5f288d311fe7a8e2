//! The rules of disaster recovery, pure: targets by level and what is wrong with a policy,
//! how an object becomes its standby copy, and what the measurements say.

pub mod durations;
pub mod objects;
pub mod policy;
pub mod progress;
