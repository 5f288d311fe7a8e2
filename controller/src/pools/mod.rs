//! Sites and node pools: keeps every pool node labelled with its topology, tainted for
//! dedication and onboarding. The controller that applies this to nodes, pool and site status,
//! and maintenance drains follow in the next steps of the sites issue.

pub mod desired;
