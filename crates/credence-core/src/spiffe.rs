//! SPIFFE IDs and trust domains, parsed once at the boundary.
//!
//! The rules follow the SPIFFE ID specification (section 2): the scheme is
//! `spiffe`, the trust domain is lowercase letters, digits, `.`, `-` and `_`,
//! path segments are letters, digits, `.`, `-` and `_`, with no empty, `.` or
//! `..` segment, no trailing slash, no percent-encoding, no query or fragment,
//! no port or userinfo, and the whole ID at most 2048 bytes.

use std::fmt;
use std::str::FromStr;

use crate::CoreError;

/// Longest SPIFFE ID we accept, per the SPIFFE ID spec (URI length limit).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest trust domain name (a DNS name limit).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// A SPIFFE trust domain name such as `example.org`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (no scheme).
    pub fn new(name: &str) -> Result<Self, CoreError> {
        check_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `spiffe://<td>`, the trust domain's own ID form used in bundles.
    pub fn id_string(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

fn check_trust_domain(td: &str) -> Result<(), CoreError> {
    let bad = |why: &str| Err(CoreError::InvalidTrustDomain(why.to_owned()));
    if td.is_empty() {
        return bad("trust domain is empty");
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return bad("trust domain is longer than 255 bytes");
    }
    for c in td.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            'A'..='Z' => return bad("trust domain must be lowercase"),
            ':' => return bad("trust domain must not contain a port"),
            '@' => return bad("trust domain must not contain userinfo"),
            '%' => return bad("trust domain must not be percent-encoded"),
            _ => {
                return Err(CoreError::InvalidTrustDomain(format!(
                    "trust domain contains invalid character {c:?}"
                )));
            }
        }
    }
    Ok(())
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = CoreError;
    /// Accepts `example.org` or `spiffe://example.org`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix(SCHEME) {
            Some(rest) => Self::new(rest),
            None => Self::new(s),
        }
    }
}

/// A validated SPIFFE ID: `spiffe://<trust domain><path>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    /// Byte offset where the path starts (== uri.len() when there is no path).
    path_at: usize,
}

impl SpiffeId {
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        let bad = |why: &str| Err(CoreError::InvalidSpiffeId(why.to_owned()));
        if s.is_empty() {
            return bad("SPIFFE ID is empty");
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return bad("SPIFFE ID is longer than 2048 bytes");
        }
        let Some(rest) = s.strip_prefix(SCHEME) else {
            if s.to_ascii_lowercase().starts_with(SCHEME) {
                return bad("scheme must be lowercase \"spiffe\"");
            }
            return bad("SPIFFE ID must start with \"spiffe://\"");
        };
        if s.contains('?') {
            return bad("SPIFFE ID must not contain a query");
        }
        if s.contains('#') {
            return bad("SPIFFE ID must not contain a fragment");
        }
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        check_trust_domain(td).map_err(|e| match e {
            CoreError::InvalidTrustDomain(why) => CoreError::InvalidSpiffeId(why),
            other => other,
        })?;
        if !path.is_empty() {
            // path starts with '/', so the first split piece is empty
            for seg in path[1..].split('/') {
                match seg {
                    "" if path.ends_with('/') && path.len() > 1 => {
                        return bad("path must not end with a slash");
                    }
                    "" if path == "/" => return bad("path must not end with a slash"),
                    "" => return bad("path must not contain empty segments"),
                    "." | ".." => return bad("path must not contain \".\" or \"..\" segments"),
                    _ => {}
                }
                for c in seg.chars() {
                    match c {
                        'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => {}
                        '%' => return bad("path must not be percent-encoded"),
                        _ => {
                            return Err(CoreError::InvalidSpiffeId(format!(
                                "path contains invalid character {c:?}"
                            )));
                        }
                    }
                }
            }
        }
        Ok(Self {
            uri: s.to_owned(),
            path_at: SCHEME.len() + td.len(),
        })
    }

    /// Builds `spiffe://<td>/<segments joined by '/'>`, validating the result.
    pub fn from_parts(td: &TrustDomain, path: &str) -> Result<Self, CoreError> {
        Self::parse(&format!("{SCHEME}{}{}", td.as_str(), path))
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    pub fn trust_domain_str(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_at]
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    /// The path including its leading slash, or `""`.
    pub fn path(&self) -> &str {
        &self.uri[self.path_at..]
    }

    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_str() == td.as_str()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

string_serde!(SpiffeId);
string_serde!(TrustDomain);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for s in [
            "spiffe://example.org",
            "spiffe://example.org/ns/prod/sa/api",
            "spiffe://a-b_c.d/x.y-z_Z9",
            "spiffe://td/..a/a..",
        ] {
            let id = SpiffeId::parse(s).unwrap();
            assert_eq!(id.as_str(), s);
        }
        let id = SpiffeId::parse("spiffe://example.org/a/b").unwrap();
        assert_eq!(id.trust_domain_str(), "example.org");
        assert_eq!(id.path(), "/a/b");
    }

    #[test]
    fn rejects_invalid_ids_with_specific_reason() {
        let cases = [
            ("", "empty"),
            ("http://example.org/a", "must start with"),
            ("SPIFFE://example.org/a", "scheme must be lowercase"),
            ("spiffe://Example.org/a", "lowercase"),
            ("spiffe://example.org/a/../b", "\"..\""),
            ("spiffe://example.org/a/./b", "\".\""),
            ("spiffe://example.org/a?x=1", "query"),
            ("spiffe://example.org/a#frag", "fragment"),
            ("spiffe://example.org:8080/a", "port"),
            ("spiffe://user@example.org/a", "userinfo"),
            ("spiffe://example.org/a//b", "empty segments"),
            ("spiffe://example.org/a/", "end with a slash"),
            ("spiffe://example.org/", "end with a slash"),
            ("spiffe://example.org/a%20b", "percent"),
            ("spiffe://example.org/a b", "invalid character"),
            ("spiffe:///a", "trust domain is empty"),
            ("spiffe://", "trust domain is empty"),
        ];
        for (s, want) in cases {
            let err = SpiffeId::parse(s).unwrap_err().to_string();
            assert!(err.contains(want), "{s:?}: got {err:?}, want {want:?}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(2100));
        assert!(
            SpiffeId::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("2048")
        );
    }

    #[test]
    fn trust_domain_forms() {
        assert_eq!(
            "spiffe://example.org"
                .parse::<TrustDomain>()
                .unwrap()
                .as_str(),
            "example.org"
        );
        assert!("Example.org".parse::<TrustDomain>().is_err());
        assert!("".parse::<TrustDomain>().is_err());
    }
}
