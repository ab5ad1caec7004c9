//! Delegation grants: bounded mandates that only narrow down a chain.
//!
//! A *grant* lets one agent identity (the grantee) act for a principal: an
//! administrator, a person or team proven by an external OIDC token, or
//! another identity. Its [`Mandate`] bounds what tokens minted under it may
//! carry: scopes, audiences, lifetime, how many further hops may follow,
//! a validity window and a number of uses. A grantee may hand part of its
//! mandate to another agent as a *child grant*; [`Mandate::narrows`]
//! refuses a child that asks for anything its parent does not have, and
//! names what exceeded. Revoking a grant revokes its whole subtree.

use time::OffsetDateTime;

use crate::{CoreError, Scope, SpiffeId};

/// Most hops a chain may have (root grant = depth 1).
pub const MAX_DEPTH: u32 = 16;
/// Most audiences of one mandate.
pub const MAX_AUDIENCES: usize = 16;
/// Longest audience.
pub const MAX_AUDIENCE_LEN: usize = 512;
/// Most uses a grant may allow (a database integer holds the count).
pub const MAX_USES: u64 = i64::MAX as u64;

/// A grant's id: `dlg_` and 32 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DelegationId(String);

impl DelegationId {
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        let ok = s.strip_prefix("dlg_").is_some_and(|h| {
            h.len() == 32 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(CoreError::Invalid(format!(
                "delegation id {:?} is not dlg_ and 32 lowercase hex digits",
                s.chars().take(48).collect::<String>()
            )))
        }
    }

    /// A new id from 16 random bytes.
    pub fn from_random(bytes: [u8; 16]) -> Self {
        Self(format!("dlg_{}", hex::encode(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DelegationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who granted: the principal at the top of a chain, or for a child grant
/// the identity that held the parent.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Grantor {
    /// An administrator (the root token is `root`).
    Admin { name: String },
    /// A person, team or pipeline proven by an external OIDC issuer's
    /// token: the configured issuer's name and the token's subject.
    External { issuer: String, subject: String },
    /// A registered identity (an agent delegating its own authority).
    Identity { spiffe_id: String },
}

impl Grantor {
    /// The principal as one string, as tokens name it in `sub`:
    /// `admin:<name>`, `<issuer>:<subject>` or the SPIFFE ID.
    pub fn principal(&self) -> String {
        match self {
            Self::Admin { name } => format!("admin:{name}"),
            Self::External { issuer, subject } => format!("{issuer}:{subject}"),
            Self::Identity { spiffe_id } => spiffe_id.clone(),
        }
    }
}

/// What a grant allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mandate {
    /// Scopes tokens under the grant may carry (a subset each).
    pub scopes: Vec<Scope>,
    /// Audiences (resource servers, RFC 8707 resources) tokens may name;
    /// at least one.
    pub audiences: Vec<String>,
    /// Longest lifetime of one token minted under the grant.
    pub max_token_ttl_seconds: u32,
    /// How many more hops may follow (0: the grantee cannot delegate).
    pub max_depth: u32,
    /// The grant is valid from ...
    pub not_before: OffsetDateTime,
    /// ... until.
    pub expires_at: OffsetDateTime,
    /// Most tokens minted directly under the grant (`None`: no limit).
    pub max_uses: Option<u64>,
}

impl Mandate {
    /// Checks the mandate on its own: audiences, window, sizes.
    pub fn check(&self) -> Result<(), CoreError> {
        if self.audiences.is_empty() {
            return Err(CoreError::Invalid(
                "a mandate names at least one audience".into(),
            ));
        }
        if self.audiences.len() > MAX_AUDIENCES
            || self
                .audiences
                .iter()
                .any(|a| a.is_empty() || a.len() > MAX_AUDIENCE_LEN)
        {
            return Err(CoreError::Invalid(format!(
                "a mandate names 1 to {MAX_AUDIENCES} audiences of 1 to {MAX_AUDIENCE_LEN} bytes"
            )));
        }
        if self.scopes.len() > Scope::MAX {
            return Err(CoreError::Invalid(format!(
                "too many scopes ({} > {})",
                self.scopes.len(),
                Scope::MAX
            )));
        }
        if self.expires_at <= self.not_before {
            return Err(CoreError::Invalid(
                "a mandate expires after it starts".into(),
            ));
        }
        if self.max_token_ttl_seconds == 0 {
            return Err(CoreError::Invalid(
                "max token lifetime must be at least one second".into(),
            ));
        }
        if self.max_depth >= MAX_DEPTH {
            return Err(CoreError::Invalid(format!(
                "max depth must be below {MAX_DEPTH}"
            )));
        }
        if let Some(u) = self.max_uses
            && !(1..=MAX_USES).contains(&u)
        {
            return Err(CoreError::Invalid(format!(
                "max uses must be 1 to {MAX_USES}"
            )));
        }
        Ok(())
    }

    /// Whether `child` asks for nothing this mandate lacks. On refusal,
    /// every excess is named (scopes and audiences by value).
    pub fn narrows(&self, child: &Mandate) -> Result<(), Exceeded> {
        let mut what = Vec::new();
        for s in &child.scopes {
            if !self.scopes.contains(s) {
                what.push(format!("scope {s} is not in the parent grant"));
            }
        }
        for a in &child.audiences {
            if !self.audiences.contains(a) {
                what.push(format!("audience {a} is not in the parent grant"));
            }
        }
        if child.max_token_ttl_seconds > self.max_token_ttl_seconds {
            what.push(format!(
                "token lifetime {}s exceeds the parent grant's {}s",
                child.max_token_ttl_seconds, self.max_token_ttl_seconds
            ));
        }
        if self.max_depth == 0 {
            what.push("the parent grant allows no further delegation".into());
        } else if child.max_depth > self.max_depth - 1 {
            what.push(format!(
                "depth {} exceeds the {} further hops the parent grant allows below this one",
                child.max_depth,
                self.max_depth - 1
            ));
        }
        if child.expires_at > self.expires_at {
            what.push(format!(
                "expiry {} is after the parent grant's {}",
                child.expires_at.unix_timestamp(),
                self.expires_at.unix_timestamp()
            ));
        }
        if child.not_before < self.not_before {
            what.push(format!(
                "start {} is before the parent grant's {}",
                child.not_before.unix_timestamp(),
                self.not_before.unix_timestamp()
            ));
        }
        if let Some(parent_uses) = self.max_uses
            && child.max_uses.is_none_or(|u| u > parent_uses)
        {
            what.push(format!(
                "uses {} exceed the parent grant's {parent_uses}",
                child
                    .max_uses
                    .map_or_else(|| "unlimited".to_owned(), |u| u.to_string())
            ));
        }
        if what.is_empty() {
            Ok(())
        } else {
            Err(Exceeded(what))
        }
    }
}

/// What a child grant asked beyond its parent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the delegation exceeds its parent: {}", .0.join("; "))]
pub struct Exceeded(pub Vec<String>);

/// One link of a chain: a grant and the identity it was granted to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hop {
    pub delegation: String,
    pub grantee: String,
}

/// A stored grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delegation {
    pub id: DelegationId,
    pub parent: Option<DelegationId>,
    /// Every grant from the root down to this one (this one last).
    pub chain: Vec<Hop>,
    /// The principal at the top of the chain (the same for every grant
    /// of a chain).
    pub principal: Grantor,
    /// Who granted this one: `principal` for a root grant, the parent's
    /// grantee for a child.
    pub grantor: Grantor,
    pub grantee: SpiffeId,
    pub mandate: Mandate,
    /// Tokens minted directly under it so far.
    pub uses: u64,
    pub note: String,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    pub revocation_reason: Option<String>,
}

/// Why a grant cannot be used now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unusable {
    Revoked,
    NotYetValid,
    Expired,
    UsedUp,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Revoked => "revoked",
            Self::NotYetValid => "not yet valid",
            Self::Expired => "expired",
            Self::UsedUp => "used up",
        })
    }
}

impl Delegation {
    /// Hops from the principal: 1 for a root grant.
    pub fn depth(&self) -> u32 {
        u32::try_from(self.chain.len()).unwrap_or(u32::MAX)
    }

    /// `/dlg_root/.../dlg_this/`: a grant's descendants are the grants
    /// whose path starts with its own.
    pub fn path(&self) -> String {
        let mut p = String::from("/");
        for h in &self.chain {
            p.push_str(&h.delegation);
            p.push('/');
        }
        p
    }

    /// Why this grant alone cannot be used at `now` (ancestors aside).
    pub fn unusable(&self, now: OffsetDateTime) -> Option<Unusable> {
        if self.revoked_at.is_some() {
            Some(Unusable::Revoked)
        } else if now < self.mandate.not_before {
            Some(Unusable::NotYetValid)
        } else if now >= self.mandate.expires_at {
            Some(Unusable::Expired)
        } else if self.mandate.max_uses.is_some_and(|m| self.uses >= m) {
            Some(Unusable::UsedUp)
        } else {
            None
        }
    }

    /// The grantees of the chain, root first (the actors of a token).
    pub fn actors(&self) -> Vec<&str> {
        self.chain.iter().map(|h| h.grantee.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + s).unwrap()
    }

    fn mandate(scopes: &[&str], auds: &[&str], ttl: u32, depth: u32, uses: Option<u64>) -> Mandate {
        Mandate {
            scopes: Scope::parse_list(scopes.iter().copied()).unwrap(),
            audiences: auds.iter().map(|s| (*s).to_owned()).collect(),
            max_token_ttl_seconds: ttl,
            max_depth: depth,
            not_before: at(0),
            expires_at: at(3600),
            max_uses: uses,
        }
    }

    #[test]
    fn ids_parse_strictly() {
        let id = DelegationId::from_random([0xab; 16]);
        assert_eq!(DelegationId::parse(id.as_str()).unwrap(), id);
        for bad in [
            "",
            "dlg_",
            "dlg_ABABABABABABABABABABABABABABABAB",
            "xyz_abababababababababababababababab",
            "dlg_abab",
        ] {
            assert!(DelegationId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_narrower_child_is_accepted() {
        let parent = mandate(
            &["docs:read", "docs:write"],
            &["https://docs"],
            600,
            2,
            Some(10),
        );
        let child = mandate(&["docs:read"], &["https://docs"], 300, 1, Some(5));
        assert_eq!(parent.narrows(&child), Ok(()));
        assert_eq!(
            parent.narrows(&parent.clone()).unwrap_err().0.len(),
            1,
            "same depth is too deep"
        );
    }

    #[test]
    fn every_excess_is_named() {
        let parent = mandate(&["docs:read"], &["https://docs"], 600, 1, Some(3));
        let mut child = mandate(
            &["docs:read", "docs:delete"],
            &["https://mail"],
            900,
            1,
            None,
        );
        child.expires_at = at(7200);
        child.not_before = at(-1);
        let e = parent.narrows(&child).unwrap_err().to_string();
        for part in [
            "scope docs:delete is not in the parent grant",
            "audience https://mail is not in the parent grant",
            "token lifetime 900s exceeds the parent grant's 600s",
            "depth 1 exceeds the 0 further hops",
            "expiry",
            "start",
            "uses unlimited exceed the parent grant's 3",
        ] {
            assert!(e.contains(part), "{part} in {e}");
        }
        let leaf = mandate(&["docs:read"], &["https://docs"], 600, 0, Some(3));
        let below = mandate(&["docs:read"], &["https://docs"], 60, 0, Some(1));
        assert!(
            leaf.narrows(&below)
                .unwrap_err()
                .to_string()
                .contains("allows no further delegation")
        );
    }

    #[test]
    fn mandates_are_checked() {
        assert!(mandate(&[], &["a"], 60, 0, None).check().is_ok());
        assert!(mandate(&[], &[], 60, 0, None).check().is_err());
        assert!(mandate(&[], &["a"], 0, 0, None).check().is_err());
        assert!(mandate(&[], &["a"], 60, MAX_DEPTH, None).check().is_err());
        assert!(mandate(&[], &["a"], 60, 0, Some(0)).check().is_err());
        assert!(mandate(&[], &["a"], 60, 0, Some(u64::MAX)).check().is_err());
        let mut m = mandate(&[], &["a"], 60, 0, None);
        m.expires_at = m.not_before;
        assert!(m.check().is_err());
    }

    #[test]
    fn usability_and_paths() {
        let d = Delegation {
            id: DelegationId::from_random([1; 16]),
            parent: None,
            chain: vec![
                Hop {
                    delegation: "dlg_a".into(),
                    grantee: "spiffe://td/a".into(),
                },
                Hop {
                    delegation: "dlg_b".into(),
                    grantee: "spiffe://td/b".into(),
                },
            ],
            principal: Grantor::Admin {
                name: "root".into(),
            },
            grantor: Grantor::Identity {
                spiffe_id: "spiffe://td/a".into(),
            },
            grantee: SpiffeId::parse("spiffe://td/b").unwrap(),
            mandate: mandate(&[], &["x"], 60, 0, Some(2)),
            uses: 0,
            note: String::new(),
            created_at: at(0),
            revoked_at: None,
            revocation_reason: None,
        };
        assert_eq!(d.path(), "/dlg_a/dlg_b/");
        assert_eq!(d.depth(), 2);
        assert_eq!(d.actors(), ["spiffe://td/a", "spiffe://td/b"]);
        assert_eq!(d.unusable(at(-1)), Some(Unusable::NotYetValid));
        assert_eq!(d.unusable(at(10)), None);
        assert_eq!(d.unusable(at(3600)), Some(Unusable::Expired));
        let used = Delegation {
            uses: 2,
            ..d.clone()
        };
        assert_eq!(used.unusable(at(10)), Some(Unusable::UsedUp));
        let revoked = Delegation {
            revoked_at: Some(at(5)),
            ..d
        };
        assert_eq!(revoked.unusable(at(10)), Some(Unusable::Revoked));
        assert_eq!(
            Grantor::External {
                issuer: "gh".into(),
                subject: "repo:x".into()
            }
            .principal(),
            "gh:repo:x"
        );
    }
}
