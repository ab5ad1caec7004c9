//! Named administrators: people or automation holding their own API token,
//! members of teams. What each may do is decided by policy (the configured
//! root token may do everything unless a policy forbids it).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::identity::truncate;
use crate::{CoreError, Owner};

/// An administrator's name: 1–128 of `[A-Za-z0-9._@-]`; `root` is the
/// configured admin token and cannot be taken.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdminName(String);

impl AdminName {
    /// The name of the configured admin token.
    pub const ROOT: &'static str = "root";

    pub fn parse(s: &str) -> Result<Self, CoreError> {
        if s.is_empty() || s.len() > 128 {
            return Err(CoreError::Invalid(format!(
                "admin name {:?} must be 1 to 128 characters",
                truncate(s, 64)
            )));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
        {
            return Err(CoreError::Invalid(format!(
                "admin name {:?} may contain only letters, digits, '.', '_', '@' and '-'",
                truncate(s, 64)
            )));
        }
        Ok(Self(s.to_owned()))
    }

    /// The root admin's name (not accepted by [`AdminName::parse`] for
    /// new accounts; see [`AdminName::is_root`]).
    pub fn root() -> Self {
        Self(Self::ROOT.to_owned())
    }

    pub fn is_root(&self) -> bool {
        self.0 == Self::ROOT
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AdminName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for AdminName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminName({})", self.0)
    }
}
string_serde!(AdminName);

impl FromStr for AdminName {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A named administrator. Its token is shown once at creation; only the
/// token's SHA-256 is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admin {
    pub name: AdminName,
    /// Teams it belongs to; policies compare them with identities' owners.
    pub teams: Vec<Owner>,
    pub description: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub created_by: String,
    /// After this instant the token is refused.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

impl Admin {
    /// Most teams an administrator may belong to.
    pub const MAX_TEAMS: usize = 64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(AdminName::parse("alice@example.com").is_ok());
        assert!(AdminName::parse("ci-bot_1").is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(129)] {
            assert!(AdminName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(AdminName::root().is_root());
        assert!(!AdminName::parse("alice").unwrap().is_root());
    }
}
