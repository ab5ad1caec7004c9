#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Integration tests of the policy engine and the AuthZEN mapping.

mod authzen_cert;
mod authzen_todo;
mod engine;
