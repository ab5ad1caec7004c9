#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Integration tests of the CA crate.

mod malformed;
