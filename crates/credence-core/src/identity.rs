//! The identity model: what a registered non-human identity is.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;

use crate::{CoreError, SpiffeId};

/// What kind of non-human actor an identity names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    Workload,
    Service,
    Bot,
    Agent,
    Device,
    CiJob,
    ServiceAccount,
}

impl IdentityKind {
    pub const ALL: [IdentityKind; 7] = [
        Self::Workload,
        Self::Service,
        Self::Bot,
        Self::Agent,
        Self::Device,
        Self::CiJob,
        Self::ServiceAccount,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Workload => "workload",
            Self::Service => "service",
            Self::Bot => "bot",
            Self::Agent => "agent",
            Self::Device => "device",
            Self::CiJob => "ci_job",
            Self::ServiceAccount => "service_account",
        }
    }
}

impl fmt::Display for IdentityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IdentityKind {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                CoreError::Invalid(format!(
                    "unknown identity kind {s:?} (expected one of: workload, service, bot, agent, device, ci_job, service_account)"
                ))
            })
    }
}

/// Whether an identity may receive new credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityStatus {
    Active,
    Disabled,
}

impl IdentityStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
        }
    }
}

impl FromStr for IdentityStatus {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Self::Active),
            "disabled" => Ok(Self::Disabled),
            _ => Err(CoreError::Invalid(format!(
                "unknown identity status {s:?} (expected active or disabled)"
            ))),
        }
    }
}

hex128_id!(
    /// Opaque, stable identifier of a registered identity (128 random bits, hex).
    IdentityId,
    "identity id"
);

/// A workload selector `type:value`, e.g. `unix:uid:1000`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector(String);

impl Selector {
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        let bad = |why: String| Err(CoreError::Invalid(why));
        if s.len() > 1024 {
            return bad("selector is longer than 1024 bytes".into());
        }
        let Some((ty, value)) = s.split_once(':') else {
            return bad(format!(
                "selector {:?} must have the form type:value",
                truncate(s, 64)
            ));
        };
        if ty.is_empty() || !ty.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return bad(format!("selector type {ty:?} must be letters, digits or _"));
        }
        if value.is_empty() {
            return bad(format!("selector {s:?} has an empty value"));
        }
        if s.chars().any(char::is_control) {
            return bad("selector must not contain control characters".into());
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn kind(&self) -> &str {
        self.0.split_once(':').map(|(t, _)| t).unwrap_or("")
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({})", self.0)
    }
}
string_serde!(Selector);

impl FromStr for Selector {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// An OAuth 2.0 scope token (RFC 6749 §3.3): 1–128 printable ASCII
/// characters other than space, `"` and `\\`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    /// Most scopes an identity or a request may carry.
    pub const MAX: usize = 64;

    pub fn parse(s: &str) -> Result<Self, CoreError> {
        if s.is_empty() || s.len() > 128 {
            return Err(CoreError::Invalid(format!(
                "scope {:?} must be 1 to 128 characters",
                truncate(s, 64)
            )));
        }
        if !s
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        {
            return Err(CoreError::Invalid(format!(
                "scope {:?} may contain only printable ASCII other than space, '\"' and '\\'",
                truncate(s, 64)
            )));
        }
        Ok(Self(s.to_owned()))
    }

    /// Parses a list of scopes, refusing duplicates and more than [`Scope::MAX`].
    pub fn parse_list<'a>(
        items: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<Self>, CoreError> {
        let mut out: Vec<Self> = Vec::new();
        for s in items {
            let s = Self::parse(s)?;
            if !out.contains(&s) {
                out.push(s);
            }
        }
        if out.len() > Self::MAX {
            return Err(CoreError::Invalid(format!(
                "too many scopes ({} > {})",
                out.len(),
                Self::MAX
            )));
        }
        Ok(out)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({})", self.0)
    }
}
string_serde!(Scope);

impl FromStr for Scope {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Free-form key/value labels. Keys are `[A-Za-z0-9._/-]{1,128}`, values at most
/// 1024 bytes without control characters; at most 64 labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    pub const MAX: usize = 64;

    pub fn new(map: BTreeMap<String, String>) -> Result<Self, CoreError> {
        if map.len() > Self::MAX {
            return Err(CoreError::Invalid(format!(
                "too many labels ({} > {})",
                map.len(),
                Self::MAX
            )));
        }
        for (k, v) in &map {
            check_label_key(k)?;
            if v.len() > 1024 {
                return Err(CoreError::Invalid(format!(
                    "label {k:?} value is longer than 1024 bytes"
                )));
            }
            if v.chars().any(char::is_control) {
                return Err(CoreError::Invalid(format!(
                    "label {k:?} value contains control characters"
                )));
            }
        }
        Ok(Self(map))
    }

    /// Parses `KEY=VALUE`.
    pub fn parse_pair(s: &str) -> Result<(String, String), CoreError> {
        let (k, v) = s.split_once('=').ok_or_else(|| {
            CoreError::Invalid(format!(
                "label {:?} must have the form KEY=VALUE",
                truncate(s, 64)
            ))
        })?;
        check_label_key(k)?;
        Ok((k.to_owned(), v.to_owned()))
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn check_label_key(k: &str) -> Result<(), CoreError> {
    if k.is_empty() || k.len() > 128 {
        return Err(CoreError::Invalid(format!(
            "label key {:?} must be 1 to 128 bytes",
            truncate(k, 64)
        )));
    }
    if !k
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
    {
        return Err(CoreError::Invalid(format!(
            "label key {k:?} may contain only letters, digits, '.', '_', '-' and '/'"
        )));
    }
    Ok(())
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(d)?;
        Labels::new(map).map_err(serde::de::Error::custom)
    }
}

/// The accountable human or team: free text, 1..=256 bytes, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Owner(String);

impl Owner {
    pub fn new(s: &str) -> Result<Self, CoreError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(CoreError::Invalid("owner must not be empty".into()));
        }
        if s.len() > 256 {
            return Err(CoreError::Invalid("owner is longer than 256 bytes".into()));
        }
        if s.chars().any(char::is_control) {
            return Err(CoreError::Invalid(
                "owner contains control characters".into(),
            ));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Owner::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A registered non-human identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub id: IdentityId,
    pub spiffe_id: SpiffeId,
    pub kind: IdentityKind,
    pub owner: Owner,
    pub description: String,
    pub labels: Labels,
    pub selectors: Vec<Selector>,
    /// Nodes whose agents may hand this identity to workloads; empty means
    /// every node.
    #[serde(default)]
    pub nodes: Vec<crate::NodeId>,
    /// The scopes tokens minted for this identity may ever carry.
    #[serde(default)]
    pub scopes: Vec<Scope>,
    /// Foreign trust domains whose bundles this identity's workloads
    /// receive (to authenticate their peers), through the Workload API.
    #[serde(default)]
    pub federates_with: Vec<crate::TrustDomain>,
    /// Upper bound on the lifetime of any credential issued to this identity.
    pub max_ttl_seconds: Option<u32>,
    pub status: IdentityStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_issued_at: Option<OffsetDateTime>,
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in IdentityKind::ALL {
            assert_eq!(k.as_str().parse::<IdentityKind>().unwrap(), k);
            let j = serde_json::to_string(&k).unwrap();
            assert_eq!(j, format!("\"{}\"", k.as_str()));
        }
        assert!("robot".parse::<IdentityKind>().is_err());
    }

    #[test]
    fn selectors() {
        let s = Selector::parse("unix:uid:1000").unwrap();
        assert_eq!(s.kind(), "unix");
        assert!(Selector::parse("nocolon").is_err());
        assert!(Selector::parse(":x").is_err());
        assert!(Selector::parse("unix:").is_err());
    }

    #[test]
    fn scopes() {
        assert!(Scope::parse("read:docs").is_ok());
        assert!(Scope::parse("https://api.example.com/read").is_ok());
        for bad in ["", "a b", "a\"b", "a\\b", "é", &"x".repeat(129)] {
            assert!(Scope::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Scope::parse_list(["a", "b", "a"]).unwrap().len(), 2);
        let many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
        assert!(Scope::parse_list(many.iter().map(String::as_str)).is_err());
    }

    #[test]
    fn labels() {
        assert_eq!(
            Labels::parse_pair("model=gpt-x").unwrap(),
            ("model".into(), "gpt-x".into())
        );
        assert!(Labels::parse_pair("novalue").is_err());
        assert!(Labels::parse_pair("bad key=v").is_err());
        let l: Result<Labels, _> = serde_json::from_str(r#"{"a b": "x"}"#);
        assert!(l.is_err());
    }

    #[test]
    fn owner_and_id() {
        assert!(Owner::new("  ").is_err());
        assert_eq!(Owner::new(" team-a ").unwrap().as_str(), "team-a");
        assert!(IdentityId::parse("xyz").is_err());
        assert!(IdentityId::parse(&"a".repeat(32)).is_ok());
    }
}
