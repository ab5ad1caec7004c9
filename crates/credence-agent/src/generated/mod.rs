//! Code generated from `proto/spiffe/workload/workload.proto` (see
//! `proto/README.md`); never edit by hand.

#[rustfmt::skip]
#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs, unused_qualifications)]
pub mod workload;
