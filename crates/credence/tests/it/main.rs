#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! End-to-end tests: start the real `credence` binary on a free loopback
//! port and drive it through its CLI and HTTP API, and check its output with
//! tools others wrote (openssl, pkilint, pyjwt).

mod agent;
mod audit;
mod authzen_cert;
mod cli;
mod delegation;
mod federation;
mod http;
mod interop;
mod lifecycle;
mod mtls;
mod oauth;
mod pdp;
mod rbac;
mod spiffe_crate;
mod support;
mod workload;
