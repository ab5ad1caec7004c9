//! Tokens of external OIDC issuers (GitHub Actions, GitLab, a Kubernetes
//! service-account issuer, another Credence), verified strictly before any
//! trust rule looks at their claims.
//!
//! An [`ExternalIssuer`] names the issuer (`iss`, exact), the audiences we
//! accept, and which algorithms it may use. Its keys come from its OIDC
//! discovery document (whose `issuer` must match exactly) and JWKS, fetched
//! over HTTPS without following redirects, at most [`MAX_DOCUMENT`] bytes,
//! cached, and fetched again for an unknown `kid` at most once per
//! [`REFETCH_MIN`] (so forged kids cannot make us hammer the issuer).
//!
//! Threats handled here: `alg: none` and HMAC algorithms (an HS256 token
//! "signed" with the issuer's public key is the classic forgery), keys
//! named by the token itself (`jku`, `x5u`, `jwk`, `x5c` headers are
//! refused: keys come only from the issuer's JWKS), an algorithm that does
//! not match the key, a wrong issuer or audience, expired or not-yet-valid
//! tokens, and tokens living longer than the issuer's `max_token_lifetime`
//! (a CI token lives minutes; a long-lived one in a trust rule is a
//! standing credential).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use time::OffsetDateTime;

/// Largest discovery document or JWKS accepted.
pub const MAX_DOCUMENT: usize = 256 * 1024;
/// Shortest wait between two JWKS fetches caused by unknown kids.
pub const REFETCH_MIN: Duration = Duration::from_secs(30);
/// How long fetched keys are used before they are fetched again.
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest token accepted.
const MAX_TOKEN: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OidcError {
    #[error("issuer configuration: {0}")]
    Config(String),
    #[error("cannot fetch the issuer's keys: {0}")]
    Fetch(String),
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token algorithm {0} is not accepted from this issuer")]
    Algorithm(String),
    #[error("token header {0:?} names a key; keys come only from the issuer's JWKS")]
    EmbeddedKey(String),
    #[error("token key {0:?} is not in the issuer's JWKS")]
    UnknownKey(String),
    #[error("token key {0:?} does not fit algorithm {1}")]
    KeyMismatch(String, String),
    #[error("token signature does not verify")]
    Signature,
    #[error("token issuer {0:?} is not {1:?}")]
    Issuer(String, String),
    #[error("token audience {0:?} does not include any of {1:?}")]
    Audience(Vec<String>, Vec<String>),
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token has no {0} claim")]
    MissingClaim(&'static str),
    #[error("token lives {0}s, longer than this issuer's limit of {1}s")]
    TooLong(i64, i64),
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}

fn default_lifetime() -> u64 {
    3600
}

fn default_leeway() -> u64 {
    60
}

/// An external OIDC issuer whose tokens may be exchanged.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExternalIssuer {
    /// Short name, used by trust rules and in audit records.
    pub name: String,
    /// The `iss` of its tokens, exactly (an https:// URL).
    pub issuer: String,
    /// Accepted `aud` values (at least one).
    pub audiences: Vec<String>,
    /// JWKS location; default: from the discovery document.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Accepted algorithms (asymmetric only); default RS256 and ES256.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Longest token lifetime accepted (exp - iat), seconds.
    #[serde(default = "default_lifetime")]
    pub max_token_lifetime: u64,
    /// Clock skew tolerated, seconds.
    #[serde(default = "default_leeway")]
    pub leeway: u64,
    /// Extra PEM roots for the issuer's TLS certificate.
    #[serde(default)]
    pub tls_roots_pem: Option<String>,
    /// Accept plain http:// for a loopback issuer (tests and development).
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// For node attestation: the string claim that names the machine
    /// (tokens with the same value are one node). Default `sub`, right
    /// when the subject is per machine; set it when many machines share
    /// a subject (all runners of a CI workflow, all pods of a DaemonSet).
    #[serde(default)]
    pub node_claim: Option<String>,
}

const ACCEPTED: [(&str, Algorithm); 9] = [
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

fn algorithm(name: &str) -> Option<Algorithm> {
    ACCEPTED.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

fn is_loopback_http(url: &str) -> bool {
    url.strip_prefix("http://")
        .and_then(|r| r.split(['/', '?', '#']).next())
        .map(|host| host.rsplit_once(':').map_or(host, |(h, _)| h))
        .is_some_and(|h| matches!(h, "127.0.0.1" | "[::1]" | "localhost"))
}

impl ExternalIssuer {
    /// Checks the configuration on its own.
    pub fn check(&self) -> Result<(), OidcError> {
        let bad = |m: String| Err(OidcError::Config(m));
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return bad(format!("name {:?}: 1 to 64 of [A-Za-z0-9-_.]", self.name));
        }
        for url in std::iter::once(&self.issuer).chain(self.jwks_uri.iter()) {
            let https = url.starts_with("https://") && url.len() > "https://".len();
            if !(https || (self.allow_insecure_http && is_loopback_http(url))) {
                return bad(format!(
                    "{url:?} must be https:// (http only for a loopback issuer with allow_insecure_http)"
                ));
            }
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return bad("at least one non-empty audience".into());
        }
        if self.algorithms.is_empty() {
            return bad("at least one algorithm".into());
        }
        if let Some(a) = self.algorithms.iter().find(|a| algorithm(a).is_none()) {
            return bad(format!(
                "algorithm {a:?} is not accepted (asymmetric only: RS256..512, PS256..512, ES256, ES384, EdDSA)"
            ));
        }
        if self.max_token_lifetime == 0 || self.max_token_lifetime > 86_400 {
            return bad("max_token_lifetime must be 1 to 86400 seconds".into());
        }
        if self.leeway > 300 {
            return bad("leeway must be at most 300 seconds".into());
        }
        if let Some(c) = &self.node_claim
            && (c.is_empty() || c.len() > 128)
        {
            return bad("node_claim must be 1 to 128 characters".into());
        }
        Ok(())
    }
}

/// A token that verified, with every claim.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedToken {
    /// The [`ExternalIssuer::name`].
    pub issuer_name: String,
    pub subject: String,
    pub claims: Map<String, Value>,
}

struct Keys {
    set: JwkSet,
    fetched: std::time::Instant,
    last_refetch: Option<std::time::Instant>,
}

/// Verifies tokens of one external issuer, caching its keys.
pub struct Verifier {
    issuer: ExternalIssuer,
    client: reqwest::Client,
    keys: tokio::sync::Mutex<Option<Keys>>,
    /// Fetches made (for tests and metrics).
    fetches: Mutex<u64>,
}

impl Verifier {
    pub fn new(issuer: ExternalIssuer) -> Result<Self, OidcError> {
        issuer.check()?;
        let mut b = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!issuer.allow_insecure_http);
        if let Some(pem_text) = &issuer.tls_roots_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem_text.as_bytes())
                .map_err(|e| OidcError::Config(format!("tls_roots_pem: {e}")))?;
            b = b.tls_certs_merge(certs);
        }
        let client = b
            .build()
            .map_err(|e| OidcError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            issuer,
            client,
            keys: tokio::sync::Mutex::new(None),
            fetches: Mutex::new(0),
        })
    }

    pub fn issuer(&self) -> &ExternalIssuer {
        &self.issuer
    }

    /// How many documents were fetched so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.lock().map(|n| *n).unwrap_or(0)
    }

    async fn get_json(&self, url: &str) -> Result<Value, OidcError> {
        if let Ok(mut n) = self.fetches.lock() {
            *n += 1;
        }
        let fail = |m: String| OidcError::Fetch(m);
        let mut resp = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| fail(format!("{url}: {e}")))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(fail(format!("{url} answered HTTP {}", resp.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| fail(format!("{url}: {e}")))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(fail(format!("{url}: larger than {MAX_DOCUMENT} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| fail(format!("{url}: not JSON: {e}")))
    }

    async fn fetch_keys(&self) -> Result<JwkSet, OidcError> {
        let jwks_uri = match &self.issuer.jwks_uri {
            Some(u) => u.clone(),
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.issuer.issuer.trim_end_matches('/')
                );
                let doc = self.get_json(&url).await?;
                let iss = doc.get("issuer").and_then(Value::as_str).unwrap_or("");
                if iss != self.issuer.issuer {
                    return Err(OidcError::Fetch(format!(
                        "the discovery document names issuer {iss:?}, not {:?}",
                        self.issuer.issuer
                    )));
                }
                let uri = doc
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or_else(|| OidcError::Fetch("discovery document has no jwks_uri".into()))?;
                let https = uri.starts_with("https://");
                if !(https || (self.issuer.allow_insecure_http && is_loopback_http(uri))) {
                    return Err(OidcError::Fetch(format!(
                        "jwks_uri {uri:?} is not https://"
                    )));
                }
                uri.to_owned()
            }
        };
        let v = self.get_json(&jwks_uri).await?;
        serde_json::from_value(v).map_err(|e| OidcError::Fetch(format!("JWKS: {e}")))
    }

    /// The JWK for `kid` (or the only key when the token names none),
    /// fetching the JWKS when missing, stale, or (rate-limited) when the
    /// kid is unknown.
    async fn key(&self, kid: Option<&str>) -> Result<jsonwebtoken::jwk::Jwk, OidcError> {
        let mut guard = self.keys.lock().await;
        let now = std::time::Instant::now();
        let stale = guard
            .as_ref()
            .is_none_or(|k| now.duration_since(k.fetched) > KEYS_MAX_AGE);
        if stale {
            let set = self.fetch_keys().await?;
            *guard = Some(Keys {
                set,
                fetched: now,
                last_refetch: None,
            });
        }
        let find = |k: &Keys| -> Option<jsonwebtoken::jwk::Jwk> {
            match kid {
                Some(kid) => k.set.find(kid).cloned(),
                None => match k.set.keys.as_slice() {
                    [only] => Some(only.clone()),
                    _ => None,
                },
            }
        };
        if let Some(k) = guard.as_ref().and_then(find) {
            return Ok(k);
        }
        let may_refetch = !stale
            && guard.as_ref().is_some_and(|k| {
                k.last_refetch
                    .is_none_or(|t| now.duration_since(t) >= REFETCH_MIN)
            });
        if may_refetch {
            let set = self.fetch_keys().await?;
            *guard = Some(Keys {
                set,
                fetched: now,
                last_refetch: Some(now),
            });
            if let Some(k) = guard.as_ref().and_then(find) {
                return Ok(k);
            }
        }
        Err(match kid {
            Some(k) => OidcError::UnknownKey(k.to_owned()),
            None => OidcError::Malformed("no kid, and the JWKS has more than one key".into()),
        })
    }

    /// Verifies `token` at `now`.
    pub async fn verify(
        &self,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<VerifiedToken, OidcError> {
        if token.len() > MAX_TOKEN {
            return Err(OidcError::Malformed(format!(
                "longer than {MAX_TOKEN} bytes"
            )));
        }
        let header_json = token
            .split('.')
            .next()
            .and_then(|h| {
                use base64::Engine as _;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(h)
                    .ok()
            })
            .and_then(|h| serde_json::from_slice::<Map<String, Value>>(&h).ok())
            .ok_or_else(|| OidcError::Malformed("header is not base64url JSON".into()))?;
        if token.split('.').count() != 3 {
            return Err(OidcError::Malformed("not three dot-separated parts".into()));
        }
        for h in ["jku", "x5u", "jwk", "x5c"] {
            if header_json.contains_key(h) {
                return Err(OidcError::EmbeddedKey(h.to_owned()));
            }
        }
        let alg_name = header_json
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| OidcError::Malformed("header has no alg".into()))?;
        let alg = algorithm(alg_name)
            .filter(|_| self.issuer.algorithms.iter().any(|a| a == alg_name))
            .ok_or_else(|| OidcError::Algorithm(alg_name.to_owned()))?;
        let kid = header_json.get("kid").and_then(Value::as_str);
        let jwk = self.key(kid).await?;
        let kid_name = kid.unwrap_or("(none)").to_owned();
        let fits = match (&jwk.algorithm, alg) {
            (AlgorithmParameters::RSA(_), a) => matches!(
                a,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            (AlgorithmParameters::EllipticCurve(p), a) => matches!(
                (&p.curve, a),
                (jsonwebtoken::jwk::EllipticCurve::P256, Algorithm::ES256)
                    | (jsonwebtoken::jwk::EllipticCurve::P384, Algorithm::ES384)
            ),
            (AlgorithmParameters::OctetKeyPair(_), a) => a == Algorithm::EdDSA,
            // symmetric keys and anything newer: never
            _ => false,
        };
        // a key that declares its algorithm must be used with it
        let declared = jwk
            .common
            .key_algorithm
            .map(|k| format!("{k:?}"))
            .is_none_or(|k| k == alg_name);
        if !fits || !declared {
            return Err(OidcError::KeyMismatch(kid_name, alg_name.to_owned()));
        }
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|_| OidcError::KeyMismatch(kid_name.clone(), alg_name.to_owned()))?;
        // signature only here; every claim is checked below against the
        // injected clock
        let mut v = Validation::new(alg);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => OidcError::Signature,
                    _ => OidcError::Malformed(e.to_string()),
                }
            })?;
        let claims = data.claims;
        self.check_claims(&claims, now)?;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(OidcError::MissingClaim("sub"))?
            .to_owned();
        Ok(VerifiedToken {
            issuer_name: self.issuer.name.clone(),
            subject,
            claims,
        })
    }

    fn check_claims(&self, c: &Map<String, Value>, now: OffsetDateTime) -> Result<(), OidcError> {
        let iss = c.get("iss").and_then(Value::as_str).unwrap_or("");
        if iss != self.issuer.issuer {
            return Err(OidcError::Issuer(
                iss.to_owned(),
                self.issuer.issuer.clone(),
            ));
        }
        let auds: Vec<String> = match c.get("aud") {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        if !auds.iter().any(|a| self.issuer.audiences.contains(a)) {
            return Err(OidcError::Audience(auds, self.issuer.audiences.clone()));
        }
        let int = |name: &'static str| c.get(name).and_then(Value::as_i64);
        let exp = int("exp").ok_or(OidcError::MissingClaim("exp"))?;
        let iat = int("iat").ok_or(OidcError::MissingClaim("iat"))?;
        let leeway = i64::try_from(self.issuer.leeway).unwrap_or(60);
        let t = now.unix_timestamp();
        if t >= exp + leeway {
            return Err(OidcError::Expired);
        }
        if iat > t + leeway || int("nbf").is_some_and(|nbf| nbf > t + leeway) {
            return Err(OidcError::NotYetValid);
        }
        let max = i64::try_from(self.issuer.max_token_lifetime).unwrap_or(3600);
        if exp - iat > max {
            return Err(OidcError::TooLong(exp - iat, max));
        }
        Ok(())
    }
}

/// Verifiers of the configured issuers, by issuer URL.
#[derive(Default)]
pub struct Issuers(HashMap<String, std::sync::Arc<Verifier>>);

impl Issuers {
    pub fn new(list: Vec<ExternalIssuer>) -> Result<Self, OidcError> {
        let mut m = HashMap::new();
        for i in list {
            if m.contains_key(&i.issuer) {
                return Err(OidcError::Config(format!(
                    "issuer {} is configured twice",
                    i.issuer
                )));
            }
            m.insert(i.issuer.clone(), std::sync::Arc::new(Verifier::new(i)?));
        }
        Ok(Self(m))
    }

    /// The verifier for a token's (unverified) `iss`, if configured.
    pub fn for_token(&self, token: &str) -> Option<std::sync::Arc<Verifier>> {
        use base64::Engine as _;
        let payload = token.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        self.0.get(v.get("iss")?.as_str()?).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> ExternalIssuer {
        serde_json::from_value(serde_json::json!({
            "name": "gha",
            "issuer": "https://token.actions.githubusercontent.com",
            "audiences": ["https://credence.example"],
        }))
        .unwrap()
    }

    #[test]
    fn configuration_is_checked() {
        issuer().check().unwrap();
        let with = |f: &dyn Fn(&mut ExternalIssuer)| {
            let mut i = issuer();
            f(&mut i);
            i.check().unwrap_err().to_string()
        };
        assert!(with(&|i| i.issuer = "http://issuer.example".into()).contains("https://"));
        assert!(with(&|i| i.issuer = "http://127.0.0.1:9/".into()).contains("loopback"));
        let mut ok = issuer();
        ok.issuer = "http://127.0.0.1:9".into();
        ok.allow_insecure_http = true;
        ok.check().unwrap();
        assert!(with(&|i| i.audiences.clear()).contains("audience"));
        assert!(with(&|i| i.algorithms = vec!["HS256".into()]).contains("HS256"));
        assert!(with(&|i| i.algorithms = vec!["none".into()]).contains("none"));
        assert!(with(&|i| i.max_token_lifetime = 0).contains("max_token_lifetime"));
        assert!(with(&|i| i.name = "a b".into()).contains("name"));
        assert!(with(&|i| i.node_claim = Some(String::new())).contains("node_claim"));
        assert!(
            serde_json::from_value::<ExternalIssuer>(serde_json::json!({
                "name": "x", "issuer": "https://x", "audiences": ["a"], "surprise": 1
            }))
            .is_err()
        );
    }

    #[test]
    fn loopback_http_is_recognised_exactly() {
        assert!(is_loopback_http("http://127.0.0.1:8080/x"));
        assert!(is_loopback_http("http://localhost/x"));
        assert!(!is_loopback_http("http://127.0.0.1.evil.example/x"));
        assert!(!is_loopback_http("https://127.0.0.1/x"));
    }
}
