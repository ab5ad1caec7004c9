//! Integration tests of credence-audit: published test vectors, exhaustive
//! proof properties, and tamper detection on a 1,000-entry log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod merkle_vectors;
mod note_vectors;
mod proof_properties;
mod reference;
mod tamper;
