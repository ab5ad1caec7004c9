//! The Credence node agent.
//!
//! - [`attest`]: workload attestation from the Unix socket's peer
//!   credentials (uid, gid, pid → executable path and SHA-256) into
//!   `unix:*` selectors, and the selector matching rule.
//! - [`generated`]: the SPIFFE Workload API (`workload.proto`, vendored)
//!   compiled to Rust; regenerated and checked by the `codegen` test.
//! - [`h2_authority`]: a socket wrapper that rewrites `%` in HTTP/2
//!   `:authority` so grpc C-core clients (py-spiffe) get past h2.
//! - [`workload_api`]: the Workload API service on a Unix socket: header
//!   check, attestation, streams that push on change.

pub mod attest;
pub mod generated;
pub mod h2_authority;
pub mod workload_api;
