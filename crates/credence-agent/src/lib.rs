//! The Credence node agent.
//!
//! - [`attest`]: workload attestation from the Unix socket's peer
//!   credentials (uid, gid, pid → executable path and SHA-256) into
//!   `unix:*` selectors, and the selector matching rule.
//! - [`generated`]: the SPIFFE Workload API (`workload.proto`, vendored)
//!   compiled to Rust; regenerated and checked by the `codegen` test.

pub mod attest;
pub mod generated;
