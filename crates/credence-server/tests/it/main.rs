#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Integration tests of the control plane, in process, with a manual clock.

mod authz;
mod delegation;
mod nodes;
mod oidc;
mod service;
