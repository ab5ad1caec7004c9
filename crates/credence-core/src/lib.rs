//! Core types of Credence, shared by every other crate. No I/O lives here.
//!
//! - [`SpiffeId`] and [`TrustDomain`]: parsed once at the boundary, per the
//!   SPIFFE ID specification, so the rest of the code never re-checks them.
//! - [`Identity`]: a registered non-human identity (workload, service, bot,
//!   AI agent, device, CI job, service account) with an accountable owner,
//!   labels, workload selectors and a credential lifetime cap.
//! - [`Node`] and [`JoinToken`]: attested machines running an agent, and
//!   the one-time tokens that let them join.
//! - [`Serial`] and [`RevocationReason`]: credential bookkeeping.
//! - [`Clock`] and [`Random`]: time and randomness are injected so expiry,
//!   rotation and identifiers are testable.

/// Serializes a parsed string newtype as its string form, parsing on the way in.
macro_rules! string_serde {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A 128-bit random identifier written as 32 lowercase hex digits, parsed
/// once at the boundary. `$what` names it in error messages.
macro_rules! hex128_id {
    ($(#[$doc:meta])* $t:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $t(String);

        impl $t {
            pub fn from_random(bytes: [u8; 16]) -> Self {
                Self(hex::encode(bytes))
            }
            pub fn parse(s: &str) -> Result<Self, $crate::CoreError> {
                if s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err($crate::CoreError::Invalid(format!(
                        concat!("invalid ", $what, " {:?} (expected 32 lowercase hex digits)"),
                        $crate::identity::truncate(s, 64)
                    )))
                }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($t), "({})"), self.0)
            }
        }
        string_serde!($t);

        impl std::str::FromStr for $t {
            type Err = $crate::CoreError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

mod admin;
mod clock;
mod credential;
mod delegation;
mod federation;
mod identity;
mod node;
mod spiffe;

pub use admin::{Admin, AdminName};
pub use clock::{Clock, CountingRandom, ManualClock, Random, SystemClock};
pub use credential::{RevocationReason, Serial};
pub use delegation::{
    Delegation, DelegationId, Exceeded, Grantor, Hop, MAX_DEPTH as MAX_DELEGATION_DEPTH, Mandate,
    Unusable,
};
pub use federation::{BundleEndpointUrl, BundleProfile, FederatedBundle, Federation};
pub use identity::{
    Identity, IdentityId, IdentityKind, IdentityStatus, Labels, Owner, Scope, Selector,
};
pub use node::{JoinToken, Node, NodeId, NodeStatus};
pub use spiffe::{MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN, SpiffeId, TrustDomain};

/// Errors from parsing outside data into core types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("invalid SPIFFE ID: {0}")]
    InvalidSpiffeId(String),
    #[error("invalid trust domain: {0}")]
    InvalidTrustDomain(String),
    #[error("{0}")]
    Invalid(String),
}
