//! Nodes: the machines an agent runs on, attested once and then known by
//! the agent's own X509-SVID (`spiffe://<td>/credence/agent/<node-id>`).

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::identity::truncate;
use crate::{CoreError, SpiffeId, TrustDomain};

hex128_id!(
    /// Opaque, stable identifier of an attested node (128 random bits, hex).
    NodeId,
    "node id"
);

impl NodeId {
    /// The SPIFFE ID of this node's agent.
    pub fn agent_spiffe_id(&self, td: &TrustDomain) -> Result<SpiffeId, CoreError> {
        SpiffeId::from_parts(td, &format!("/credence/agent/{}", self.0))
    }

    /// The node named by an agent SPIFFE ID of trust domain `td`.
    pub fn from_agent_spiffe_id(id: &SpiffeId, td: &TrustDomain) -> Option<Self> {
        if !id.is_member_of(td) {
            return None;
        }
        id.path()
            .strip_prefix("/credence/agent/")
            .and_then(|n| Self::parse(n).ok())
    }
}

/// Whether a node's agent may still talk to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Active,
    /// Refused from now on; its agent must attest again with a new token.
    Evicted,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Evicted => "evicted",
        }
    }
}

impl FromStr for NodeStatus {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Self::Active),
            "evicted" => Ok(Self::Evicted),
            other => Err(CoreError::Invalid(format!(
                "unknown node status {:?} (expected active or evicted)",
                truncate(other, 32)
            ))),
        }
    }
}

/// An attested node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    /// The agent's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// How the node proved itself first (`join_token`).
    pub attestation: String,
    /// Public id of the join token used, for the trail.
    pub token_id: Option<String>,
    pub status: NodeStatus,
    /// Serial of the agent's current X509-SVID.
    pub agent_serial: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub agent_not_after: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A one-time join token as stored: only its SHA-256 is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// Public id (shown in lists and audit events; not a secret).
    pub id: String,
    /// Lowercase hex SHA-256 of the secret token.
    pub hash: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// Set once the token has been used.
    pub used_at: Option<OffsetDateTime>,
    pub node_id: Option<NodeId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_round_trip() {
        let td = TrustDomain::new("example.org").unwrap();
        let n = NodeId::from_random([7; 16]);
        let id = n.agent_spiffe_id(&td).unwrap();
        assert_eq!(
            id.as_str(),
            "spiffe://example.org/credence/agent/07070707070707070707070707070707"
        );
        assert_eq!(NodeId::from_agent_spiffe_id(&id, &td), Some(n));
        let other = TrustDomain::new("other.org").unwrap();
        assert_eq!(NodeId::from_agent_spiffe_id(&id, &other), None);
        let wl = SpiffeId::parse("spiffe://example.org/credence/agent/xyz").unwrap();
        assert_eq!(NodeId::from_agent_spiffe_id(&wl, &td), None);
    }

    #[test]
    fn bad_node_ids_are_refused() {
        assert!(NodeId::parse("ABC").is_err());
        assert!(NodeId::parse(&"g".repeat(32)).is_err());
        assert!("active".parse::<NodeStatus>().is_ok());
        assert!("gone".parse::<NodeStatus>().is_err());
    }
}
