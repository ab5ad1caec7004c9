//! The Credence certificate authority.
//!
//! - [`keys`]: key custody. Every private key sits behind the [`Signer`] trait
//!   (software keys on aws-lc-rs today, PKCS#11 later); software keys are
//!   wrapped with AES-256-GCM under a key-encryption key when stored.
//! - [`x509`]: root and intermediate CA certificates, X509-SVIDs per the SPIFFE
//!   X509-SVID profile, strict PKCS#10 CSR checks (proof of possession, no CA
//!   requests, no unexpected extensions), and RFC 5280 CRLs.
//! - [`jwt`]: JWT-SVIDs (ES256) signed through the same custody, JWKs with
//!   RFC 7638 thumbprint key ids, and SPIFFE bundle key entries.
//!
//! This crate does no I/O: time, serials and key ids are passed in.

mod error;
pub mod jwt;
pub mod jwt_verify;
pub mod keys;
pub mod tls;
pub mod x509;

pub use error::CaError;
pub use jwt::{Audience, JwtSigner, JwtSvidClaims};
pub use keys::{
    KeyAlgorithm, KeyWrapper, Sha256Stream, Signer, SoftwareKey, SystemRandom, sha256, sha256_hex,
};
pub use x509::{CheckedCsr, CrlEntry, LeafKey, LeafKeyKind, X509Issuer, check_csr};
