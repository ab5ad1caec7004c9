//! SPIFFE federation: relationships with foreign trust domains, whose
//! bundles are fetched from their bundle endpoints (SPIFFE Trust Domain and
//! Bundle specification, "SPIFFE Bundle Endpoint").

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{CoreError, SpiffeId, TrustDomain};

/// How a bundle endpoint is authenticated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "profile", rename_all = "snake_case")]
pub enum BundleProfile {
    /// HTTPS with a Web PKI certificate for the URL's host.
    HttpsWeb,
    /// HTTPS whose server presents an X509-SVID with this SPIFFE ID,
    /// verified against the last bundle of the foreign trust domain.
    HttpsSpiffe { endpoint_spiffe_id: SpiffeId },
}

impl BundleProfile {
    pub fn name(&self) -> &'static str {
        match self {
            Self::HttpsWeb => "https_web",
            Self::HttpsSpiffe { .. } => "https_spiffe",
        }
    }
}

/// A bundle endpoint URL: `https://`, or `http://` to a loopback address
/// (development and tests only; the relationship says so).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleEndpointUrl(String);

impl BundleEndpointUrl {
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        let bad = |why: &str| {
            Err(CoreError::Invalid(format!(
                "bundle endpoint {:?}: {why}",
                crate::identity::truncate(s, 128)
            )))
        };
        if s.len() > 2048 {
            return bad("longer than 2048 bytes");
        }
        let rest = if let Some(r) = s.strip_prefix("https://") {
            r
        } else if let Some(r) = s.strip_prefix("http://") {
            let host = r.split(['/', '?', '#']).next().unwrap_or("");
            let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
            if !matches!(host, "127.0.0.1" | "[::1]" | "localhost") {
                return bad("must be https:// (plain http is allowed only on loopback)");
            }
            r
        } else {
            return bad("must be an https:// URL");
        };
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        if host.is_empty() || host.contains('@') {
            return bad("needs a host (and no user information)");
        }
        if s.contains('#') || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("must not contain a fragment, spaces or control characters");
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Plain HTTP (loopback only).
    pub fn is_insecure(&self) -> bool {
        self.0.starts_with("http://")
    }
}

impl std::str::FromStr for BundleEndpointUrl {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

string_serde!(BundleEndpointUrl);

impl std::fmt::Display for BundleEndpointUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The last bundle fetched from a foreign trust domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederatedBundle {
    /// The SPIFFE bundle document as fetched (a JWK set).
    pub document: String,
    pub sequence: Option<u64>,
    pub refresh_hint_seconds: Option<u64>,
    #[serde(with = "time::serde::rfc3339")]
    pub fetched_at: OffsetDateTime,
}

/// A federation relationship with a foreign trust domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Federation {
    pub trust_domain: TrustDomain,
    pub bundle_endpoint: BundleEndpointUrl,
    #[serde(flatten)]
    pub profile: BundleProfile,
    /// Extra PEM roots for the endpoint's TLS certificate (`https_web`
    /// with a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_roots_pem: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub created_by: String,
    pub bundle: Option<FederatedBundle>,
    /// Why the last refresh failed (cleared by the next success).
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_attempt_at: Option<OffsetDateTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_endpoint_urls() {
        for ok in [
            "https://td.example/bundle",
            "https://td.example:8443/bundle?x=1",
            "http://127.0.0.1:8080/bundle",
            "http://localhost/bundle",
            "http://[::1]:80/bundle",
        ] {
            BundleEndpointUrl::parse(ok).unwrap();
        }
        assert!(
            BundleEndpointUrl::parse("http://127.0.0.1/b")
                .unwrap()
                .is_insecure()
        );
        for bad in [
            "http://td.example/bundle",
            "http://127.0.0.1.evil.example/bundle",
            "ftp://td.example/",
            "https://",
            "https://user@td.example/",
            "https://td.example/a b",
            "https://td.example/#frag",
            "td.example/bundle",
        ] {
            assert!(BundleEndpointUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
