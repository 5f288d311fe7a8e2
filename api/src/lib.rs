//! The departments' self-service API (gRPC and REST/JSON): quota requests, compute jobs, usage
//! and bills, DR restores.
//!
//! The crate is reserved in the workspace layout; the self-service API issue fills it in.
