#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Integration tests of the node agent.

mod authority;
mod codegen;
mod workload_api;
