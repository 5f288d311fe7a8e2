//! Quota arithmetic of the one cloud's tenant tree, in plain Rust: Kubernetes quantities, the
//! rules that span tenants, usage summed up the tree, and the split of each subtree's ceiling
//! into namespace ResourceQuotas. No I/O; the controller feeds it what it observes.

mod quantity;
mod resources;
mod tree;

pub use quantity::{Milli, QuantityError};
pub use resources::{Amounts, Resource};
pub use tree::{
    Level, ObservedNamespace, Plan, Problem, Standing, TenantNode, TenantPlan, World, plan, water_fill,
};

#[cfg(test)]
mod tests;
