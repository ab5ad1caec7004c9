//! Where an agent gets its workloads' credentials from: the server's agent
//! API over mTLS ([`crate::remote::RemoteUpstream`]) or, in `credence dev`,
//! the control plane in the same process.

use futures::future::BoxFuture;
use tokio::sync::watch;

use credence_core::Selector;

/// Errors of the agent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    /// The server cannot be reached or answered with a server error: keep
    /// serving the cache and retry with backoff.
    #[error("server unavailable: {0}")]
    Unavailable(String),
    /// The server refused this agent (evicted node, revoked SVID).
    #[error("refused by the server: {0}")]
    Refused(String),
    /// A request the server found malformed, or an answer we could not read.
    #[error("{0}")]
    Protocol(String),
    /// Local configuration or state (files, keys).
    #[error("{0}")]
    Local(String),
}

/// An identity this node's agent hands out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntrySpec {
    pub spiffe_id: String,
    pub selectors: Vec<Selector>,
    /// Changes whenever the registration does (then the SVID is re-issued).
    pub revision: String,
    /// Foreign trust domain IDs (`spiffe://td`) whose bundles its
    /// workloads receive.
    pub federates_with: Vec<String>,
}

/// A foreign trust domain's bundle, for the workloads that federate with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederatedBundle {
    /// CA certificates, DER concatenated.
    pub x509_der: std::sync::Arc<Vec<u8>>,
    /// JWKS document of its JWT authorities.
    pub jwks: Vec<u8>,
}

/// One answer to a sync.
#[derive(Clone, Debug)]
pub struct Synced {
    /// `spiffe://<td>`.
    pub trust_domain_id: String,
    pub entries: Vec<EntrySpec>,
    /// Root certificates, DER concatenated.
    pub bundle_der: std::sync::Arc<Vec<u8>>,
    /// JWKS document of the trust domain.
    pub jwks: Vec<u8>,
    /// The held serials that are revoked.
    pub revoked: Vec<String>,
    /// Bundles of the foreign trust domains the entries federate with, by
    /// trust domain ID.
    pub federated: std::collections::BTreeMap<String, FederatedBundle>,
}

/// A signed X509-SVID.
#[derive(Clone, Debug)]
pub struct Signed {
    pub spiffe_id: String,
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
    /// Leaf first, then intermediates, DER concatenated.
    pub chain_der: Vec<u8>,
}

/// A signed JWT-SVID.
#[derive(Clone, Debug)]
pub struct SignedJwt {
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// The agent's view of the server.
pub trait Upstream: Send + Sync + 'static {
    /// The node's entries, bundles, and which of `held` are revoked.
    fn sync(&self, held: Vec<String>) -> BoxFuture<'_, Result<Synced, AgentError>>;
    /// Signs CSRs (DER) for the given SPIFFE IDs; one result per request.
    fn sign(
        &self,
        requests: Vec<(String, Vec<u8>)>,
    ) -> BoxFuture<'_, Result<Vec<Result<Signed, String>>, AgentError>>;
    fn jwt(
        &self,
        spiffe_id: String,
        audience: Vec<String>,
    ) -> BoxFuture<'_, Result<SignedJwt, AgentError>>;
    /// Changes whenever the server signals that something changed.
    fn changes(&self) -> watch::Receiver<u64>;
}
