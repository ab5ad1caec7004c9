//! The Credence node agent.
//!
//! - [`attest`]: workload attestation from the Unix socket's peer
//!   credentials (uid, gid, pid → executable path and SHA-256) into
//!   `unix:*` selectors, and the selector matching rule.
//! - [`generated`]: the SPIFFE Workload API (`workload.proto`, vendored)
//!   compiled to Rust; regenerated and checked by the `codegen` test.
//! - [`workload_api`]: the Workload API service on a Unix socket: header
//!   check, attestation, streams that push on change.

pub mod attest;
pub mod generated;
pub mod workload_api;
