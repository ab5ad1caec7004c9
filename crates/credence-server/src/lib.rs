//! The Credence control plane.
//!
//! [`service::Service`] holds the operations (identity registry, X509-SVID
//! and JWT-SVID issuance, revocation, CRL) over a [`credence_store::Store`]
//! and the CA material of [`authority`]. [`api`] exposes them over HTTP:
//! public endpoints (`/healthz`, OIDC discovery, JWKS, SPIFFE bundle, CRL)
//! and the admin API under `/v1/`, which needs the admin bearer token.
//! [`runtime`] starts a server (TLS, or plain HTTP on loopback for dev mode)
//! with graceful shutdown. [`config`] reads the production config file.
//! [`nodes`] attests node agents (join tokens), authenticates them by their
//! SVID and decides what each node's agent may fetch for its workloads.
//! [`authz`] decides, with the policy engine, what each administrator may
//! do and which credentials each identity may receive. [`delegation`]
//! keeps agents' mandates to act for a principal, chains that only narrow.
//!
//! Errors become HTTP statuses in exactly one place, [`ServerError`]'s
//! `IntoResponse`, which always answers `{"error": code, "message": text}`.

pub mod admins;
pub mod agent_api;
pub mod api;
pub mod audit_log;
pub mod authority;
pub mod authz;
pub mod authzen_api;
pub mod config;
pub mod delegation;
mod error;
pub mod federation;
pub mod nodes;
pub mod oauth;
pub mod oidc;
pub mod policies;
pub mod runtime;
pub mod service;

pub use error::ServerError;
