#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Integration tests of credence-store: the backend-independent conformance
//! suite, instantiated for every backend, plus backend-specific tests.

mod conformance;
mod sqlite;
