//! SPIFFE federation: trusting foreign trust domains.
//!
//! A relationship names a foreign trust domain and its bundle endpoint.
//! Credence fetches the foreign bundle (a SPIFFE bundle: a JWK set with
//! `x509-svid` authorities and `jwt-svid` keys), checks it, stores it, and
//! fetches it again when its `spiffe_refresh_hint` says so (clamped to
//! [`MIN_REFRESH`]..[`MAX_REFRESH`]; [`DEFAULT_REFRESH`] without a hint;
//! [`RETRY`] after a failure, keeping the last good bundle). Relationships
//! are added and removed at run time, and bundle changes reach node agents
//! at once (the same change signal as revocations): no restart anywhere.
//!
//! Identities declare which foreign trust domains they federate with
//! (`federates_with`); their workloads receive those bundles through the
//! Workload API, to authenticate peers of those domains.
//!
//! Profiles: `https_web` (the endpoint's TLS certificate is checked with
//! Web PKI roots, plus extra roots given with the relationship for a
//! private CA; plain `http://` is accepted only for loopback endpoints, for
//! development and tests) and `https_spiffe` (the endpoint presents an
//! X509-SVID of the foreign trust domain with the configured SPIFFE ID,
//! checked against the last bundle of that domain: the relationship starts
//! from a bundle the operator obtained out of band, and each fetched
//! bundle authenticates the next fetch, as SPIRE's default profile does).
//!
//! A bundle is refused when it is not a JWK set, holds no usable key, an
//! `x509-svid` entry does not carry exactly one CA certificate, a
//! `jwt-svid` entry has no `kid`, or any entry carries private key
//! material. Entries of other uses are ignored, as the bundle format asks.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use time::OffsetDateTime;

use credence_core::{BundleEndpointUrl, BundleProfile, FederatedBundle, Federation, TrustDomain};

use crate::ServerError;
use crate::service::{Actor, Service, audit};

/// Largest bundle document accepted.
pub const MAX_BUNDLE_BYTES: usize = 1024 * 1024;
/// Shortest wait between two fetches of one bundle.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Longest wait between two fetches of one bundle.
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// Wait when a bundle gives no refresh hint.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Wait after a failed fetch.
pub const RETRY: Duration = Duration::from_secs(30);
/// Most foreign trust domains one identity may federate with.
pub const MAX_FEDERATES_WITH: usize = 32;
/// Most keys of each use in one bundle.
const MAX_KEYS: usize = 64;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A foreign bundle, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedBundle {
    /// CA certificates (DER) of the `x509-svid` entries.
    pub x509_authorities: Vec<Vec<u8>>,
    /// The `jwt-svid` entries, as JWKs.
    pub jwt_keys: Vec<Value>,
    pub sequence: Option<u64>,
    pub refresh_hint: Option<u64>,
}

impl ParsedBundle {
    /// The X.509 authorities, DER concatenated (the Workload API's form).
    pub fn x509_der(&self) -> Vec<u8> {
        self.x509_authorities.concat()
    }

    /// The X.509 authorities as PEM.
    pub fn x509_pem(&self) -> String {
        self.x509_authorities
            .iter()
            .map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.clone())))
            .collect()
    }

    /// The JWT authorities as a JWK set.
    pub fn jwks(&self) -> Value {
        json!({ "keys": self.jwt_keys })
    }
}

/// Private JWK members: a bundle carrying any is refused outright.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Parses and checks a SPIFFE bundle document.
pub fn parse_bundle(doc: &[u8]) -> Result<ParsedBundle, String> {
    if doc.len() > MAX_BUNDLE_BYTES {
        return Err(format!("bundle is larger than {MAX_BUNDLE_BYTES} bytes"));
    }
    let v: Value = serde_json::from_slice(doc).map_err(|e| format!("bundle is not JSON: {e}"))?;
    let obj = v
        .as_object()
        .ok_or("bundle is not a JSON object (a JWK set)")?;
    let keys = obj
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("bundle has no \"keys\" array")?;
    let unsigned = |name: &str| -> Result<Option<u64>, String> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(n) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("{name} is not a non-negative integer")),
        }
    };
    let mut out = ParsedBundle {
        sequence: unsigned("spiffe_sequence")?,
        refresh_hint: unsigned("spiffe_refresh_hint")?,
        ..ParsedBundle::default()
    };
    for (i, k) in keys.iter().enumerate() {
        let k = k
            .as_object()
            .ok_or_else(|| format!("key {i} is not an object"))?;
        if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| k.contains_key(**m)) {
            return Err(format!(
                "key {i} carries private key material ({m:?}); refusing the bundle"
            ));
        }
        match k.get("use").and_then(Value::as_str) {
            Some("x509-svid") => {
                let x5c = k
                    .get("x5c")
                    .and_then(Value::as_array)
                    .ok_or_else(|| format!("x509-svid key {i} has no x5c"))?;
                let [cert] = x5c.as_slice() else {
                    return Err(format!(
                        "x509-svid key {i} must carry exactly one certificate, not {}",
                        x5c.len()
                    ));
                };
                let der = cert
                    .as_str()
                    .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
                    .ok_or_else(|| format!("x509-svid key {i}: x5c is not base64"))?;
                credence_ca::x509::check_ca_certificate(&der)
                    .map_err(|e| format!("x509-svid key {i}: {e}"))?;
                out.x509_authorities.push(der);
            }
            Some("jwt-svid") => {
                if k.get("kid")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    return Err(format!("jwt-svid key {i} has no kid"));
                }
                if !matches!(
                    k.get("kty").and_then(Value::as_str),
                    Some("EC" | "RSA" | "OKP")
                ) {
                    return Err(format!("jwt-svid key {i}: kty must be EC, RSA or OKP"));
                }
                out.jwt_keys.push(Value::Object(k.clone()));
            }
            // other uses are for others
            _ => {}
        }
    }
    if out.x509_authorities.len() > MAX_KEYS || out.jwt_keys.len() > MAX_KEYS {
        return Err(format!("bundle has more than {MAX_KEYS} keys of one use"));
    }
    if out.x509_authorities.is_empty() && out.jwt_keys.is_empty() {
        return Err("bundle has no x509-svid or jwt-svid key".into());
    }
    Ok(out)
}

/// A bundle's sequence never goes back: an older bundle served again (by
/// whoever controls the endpoint) would bring back keys the foreign domain
/// retired. A domain that really restarted its numbering is re-added.
pub fn check_sequence(stored: Option<u64>, fetched: Option<u64>) -> Result<(), String> {
    match (stored, fetched) {
        (Some(old), Some(new)) if new < old => Err(format!(
            "bundle sequence went back from {old} to {new}; keeping the stored bundle \
             (remove and re-add the relationship if the trust domain restarted its numbering)"
        )),
        (Some(old), None) => Err(format!(
            "bundle has no spiffe_sequence where the stored one had {old}"
        )),
        _ => Ok(()),
    }
}

/// When a relationship is next due for a fetch.
pub fn next_refresh(f: &Federation) -> OffsetDateTime {
    let clamp = |s: u64| Duration::from_secs(s).clamp(MIN_REFRESH, MAX_REFRESH);
    let after = |t: OffsetDateTime, d: Duration| {
        t + time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
    };
    match (&f.bundle, f.last_attempt_at) {
        (None, None) => OffsetDateTime::UNIX_EPOCH,
        (None, Some(tried)) => after(tried, RETRY),
        (Some(b), tried) => {
            let every = b.refresh_hint_seconds.map_or(DEFAULT_REFRESH, clamp);
            let next = after(b.fetched_at, every);
            match (&f.last_error, tried) {
                // failing: retry sooner than the hint, never in a tight loop
                (Some(_), Some(t)) => next.min(after(t, RETRY.min(every))),
                _ => next,
            }
        }
    }
}

/// A relationship to add.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewFederation {
    pub trust_domain: TrustDomain,
    pub bundle_endpoint: BundleEndpointUrl,
    /// `https_web` (default) or `https_spiffe`.
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub endpoint_spiffe_id: Option<credence_core::SpiffeId>,
    /// Extra PEM roots for the endpoint's TLS certificate (`https_web`).
    #[serde(default)]
    pub tls_roots_pem: Option<String>,
    /// The foreign trust domain's bundle obtained out of band (`https_spiffe`):
    /// a SPIFFE bundle document, or PEM root certificates.
    #[serde(default)]
    pub bundle: Option<String>,
}

/// An out-of-band bundle as a SPIFFE bundle document: given as one, or as
/// PEM certificates (X.509 authorities only).
fn initial_bundle(text: &str) -> Result<(String, ParsedBundle), ServerError> {
    let bad = |why: String| ServerError::bad("invalid_bundle", why);
    let doc = if text.trim_start().starts_with("-----BEGIN") {
        let certs: Vec<Value> = pem::parse_many(text)
            .map_err(|e| bad(format!("bundle PEM: {e}")))?
            .iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(|p| {
                json!({
                    "use": "x509-svid",
                    "x5c": [base64::engine::general_purpose::STANDARD.encode(p.contents())],
                })
            })
            .collect();
        json!({ "keys": certs }).to_string()
    } else {
        text.to_owned()
    };
    let parsed = parse_bundle(doc.as_bytes()).map_err(|e| bad(format!("bundle: {e}")))?;
    if parsed.x509_authorities.is_empty() {
        return Err(bad(
            "the bundle has no X.509 authority to authenticate the endpoint with".into(),
        ));
    }
    Ok((doc, parsed))
}

/// The checked foreign bundles, by trust domain, for the Workload API path.
#[derive(Default)]
pub struct Cache(RwLock<HashMap<TrustDomain, Arc<ParsedBundle>>>);

impl Cache {
    fn set(&self, td: &TrustDomain, b: Option<Arc<ParsedBundle>>) {
        if let Ok(mut m) = self.0.write() {
            match b {
                Some(b) => m.insert(td.clone(), b),
                None => m.remove(td),
            };
        }
    }

    fn get(&self, td: &TrustDomain) -> Option<Arc<ParsedBundle>> {
        self.0.read().ok().and_then(|m| m.get(td).cloned())
    }
}

fn pem_roots(pem_text: &str) -> Result<Vec<reqwest::Certificate>, ServerError> {
    let bad = |why: String| ServerError::bad("invalid_tls_roots", why);
    let parsed = pem::parse_many(pem_text).map_err(|e| bad(format!("tls_roots_pem: {e}")))?;
    let certs: Vec<_> = parsed
        .iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| {
            reqwest::Certificate::from_der(p.contents())
                .map_err(|e| bad(format!("tls_roots_pem: {e}")))
        })
        .collect::<Result<_, _>>()?;
    if certs.is_empty() {
        return Err(bad("tls_roots_pem holds no certificate".into()));
    }
    Ok(certs)
}

/// An error with its causes ("error sending request: connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// TLS for an `https_spiffe` endpoint: its SVID must chain to the stored
/// bundle of its trust domain and name `expected`.
fn spiffe_tls(
    f: &Federation,
    expected: &credence_core::SpiffeId,
) -> Result<rustls::ClientConfig, String> {
    let roots: Vec<rustls::pki_types::CertificateDer<'static>> = f
        .bundle
        .as_ref()
        .and_then(|b| parse_bundle(b.document.as_bytes()).ok())
        .map(|p| p.x509_authorities.into_iter().map(Into::into).collect())
        .unwrap_or_default();
    if roots.is_empty() {
        return Err("no stored bundle to authenticate the https_spiffe endpoint with".into());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = credence_ca::tls::SpiffeServerVerifier::new(
        roots,
        expected.clone(),
        provider.signature_verification_algorithms,
    );
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Fetches the bundle document of `f` (at most [`MAX_BUNDLE_BYTES`]).
async fn fetch(f: &Federation) -> Result<Vec<u8>, String> {
    let mut b = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        // a redirect could leave the endpoint the relationship names
        .redirect(reqwest::redirect::Policy::none())
        .https_only(!f.bundle_endpoint.is_insecure());
    match &f.profile {
        BundleProfile::HttpsWeb => {
            if let Some(pem_text) = &f.tls_roots_pem {
                b = b.tls_certs_merge(pem_roots(pem_text).map_err(|e| e.to_string())?);
            }
        }
        BundleProfile::HttpsSpiffe { endpoint_spiffe_id } => {
            if f.bundle_endpoint.is_insecure() {
                return Err("the https_spiffe profile needs an https:// endpoint".into());
            }
            b = b.use_preconfigured_tls(spiffe_tls(f, endpoint_spiffe_id)?);
        }
    }
    let client = b.build().map_err(|e| format!("HTTP client: {e}"))?;
    let mut resp = client
        .get(f.bundle_endpoint.as_str())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("cannot fetch {}: {}", f.bundle_endpoint, chain(&e)))?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(format!(
            "{} answered HTTP {}",
            f.bundle_endpoint,
            resp.status()
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading {}: {e}", f.bundle_endpoint))?
    {
        if body.len() + chunk.len() > MAX_BUNDLE_BYTES {
            return Err(format!("bundle is larger than {MAX_BUNDLE_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl Service {
    /// Foreign trust domains an identity may federate with: not our own,
    /// each once, at most [`MAX_FEDERATES_WITH`]. A relationship need not
    /// exist yet (its bundle is handed out once it does).
    pub(crate) fn check_federates_with(
        &self,
        mut tds: Vec<TrustDomain>,
    ) -> Result<Vec<TrustDomain>, ServerError> {
        tds.sort();
        tds.dedup();
        if tds.len() > MAX_FEDERATES_WITH {
            return Err(ServerError::bad(
                "invalid_request",
                format!("at most {MAX_FEDERATES_WITH} federated trust domains"),
            ));
        }
        if tds.contains(&self.trust_domain()) {
            return Err(ServerError::bad(
                "invalid_request",
                "an identity cannot federate with its own trust domain",
            ));
        }
        Ok(tds)
    }

    /// Adds a relationship and fetches its bundle once; a failed first
    /// fetch is recorded (and retried), not an error.
    pub async fn add_federation(
        &self,
        actor: &Actor,
        new: NewFederation,
    ) -> Result<Federation, ServerError> {
        if new.trust_domain == self.trust_domain() {
            return Err(ServerError::bad(
                "invalid_request",
                "cannot federate with our own trust domain",
            ));
        }
        let mut initial = None;
        let profile = match new.profile.as_deref().unwrap_or("https_web") {
            "https_web" => {
                if new.endpoint_spiffe_id.is_some() || new.bundle.is_some() {
                    return Err(ServerError::bad(
                        "invalid_request",
                        "endpoint_spiffe_id and bundle belong to the https_spiffe profile",
                    ));
                }
                BundleProfile::HttpsWeb
            }
            "https_spiffe" => {
                let Some(id) = new.endpoint_spiffe_id else {
                    return Err(ServerError::bad(
                        "invalid_request",
                        "the https_spiffe profile needs endpoint_spiffe_id (the SPIFFE ID the endpoint presents)",
                    ));
                };
                if id.trust_domain() != new.trust_domain {
                    return Err(ServerError::bad(
                        "invalid_request",
                        format!(
                            "endpoint_spiffe_id {id} is not in trust domain {}",
                            new.trust_domain
                        ),
                    ));
                }
                if new.tls_roots_pem.is_some() {
                    return Err(ServerError::bad(
                        "invalid_request",
                        "tls_roots_pem belongs to the https_web profile (https_spiffe trusts the bundle)",
                    ));
                }
                if new.bundle_endpoint.is_insecure() {
                    return Err(ServerError::bad(
                        "invalid_request",
                        "the https_spiffe profile needs an https:// endpoint",
                    ));
                }
                let Some(text) = new.bundle.as_deref() else {
                    return Err(ServerError::bad(
                        "invalid_request",
                        "the https_spiffe profile needs the trust domain's bundle obtained out of band (bundle)",
                    ));
                };
                if text.len() > MAX_BUNDLE_BYTES {
                    return Err(ServerError::bad(
                        "invalid_bundle",
                        format!("bundle is larger than {MAX_BUNDLE_BYTES} bytes"),
                    ));
                }
                initial = Some(initial_bundle(text)?);
                BundleProfile::HttpsSpiffe {
                    endpoint_spiffe_id: id,
                }
            }
            other => {
                return Err(ServerError::bad(
                    "invalid_request",
                    format!("unknown profile {other:?} (expected https_web or https_spiffe)"),
                ));
            }
        };
        if let Some(p) = &new.tls_roots_pem {
            if p.len() > 256 * 1024 {
                return Err(ServerError::bad(
                    "invalid_tls_roots",
                    "tls_roots_pem is larger than 256 KiB",
                ));
            }
            pem_roots(p)?;
        }
        let now = self.clock.now();
        let f = Federation {
            trust_domain: new.trust_domain,
            bundle_endpoint: new.bundle_endpoint,
            profile,
            tls_roots_pem: new.tls_roots_pem,
            created_at: now,
            created_by: actor.name.clone(),
            bundle: initial.as_ref().map(|(doc, p)| FederatedBundle {
                document: doc.clone(),
                sequence: p.sequence,
                refresh_hint_seconds: p.refresh_hint,
                fetched_at: now,
            }),
            last_error: None,
            last_attempt_at: None,
        };
        self.store
            .create_federation(
                &f,
                audit(
                    actor,
                    now,
                    "federation.add",
                    f.trust_domain.as_str(),
                    json!({
                        "bundle_endpoint": f.bundle_endpoint,
                        "profile": f.profile.name(),
                        "endpoint_spiffe_id": match &f.profile {
                            BundleProfile::HttpsSpiffe { endpoint_spiffe_id } => Some(endpoint_spiffe_id),
                            BundleProfile::HttpsWeb => None,
                        },
                        "private_tls_roots": f.tls_roots_pem.is_some(),
                        "initial_bundle_sha256": initial.as_ref().map(|(d, _)| credence_ca::keys::sha256_hex(d.as_bytes())),
                    }),
                ),
            )
            .await?;
        let td = f.trust_domain.clone();
        if let Some((_, p)) = initial {
            self.federated.set(&td, Some(Arc::new(p)));
            self.changed();
        }
        self.refresh_federation(&td).await
    }

    pub async fn list_federations(&self) -> Result<Vec<Federation>, ServerError> {
        Ok(self.store.list_federations().await?)
    }

    pub async fn get_federation(&self, td: &TrustDomain) -> Result<Federation, ServerError> {
        self.store
            .get_federation(td)
            .await?
            .ok_or_else(|| ServerError::NotFound(format!("no federation with {td}")))
    }

    /// Removes a relationship; its bundle stops being handed out at once.
    pub async fn remove_federation(
        &self,
        actor: &Actor,
        td: &TrustDomain,
    ) -> Result<(), ServerError> {
        self.store
            .delete_federation(
                td,
                audit(
                    actor,
                    self.clock.now(),
                    "federation.remove",
                    td.as_str(),
                    json!({}),
                ),
            )
            .await?;
        self.federated.set(td, None);
        self.changed();
        Ok(())
    }

    /// Fetches a relationship's bundle now. A new or changed bundle is
    /// stored with an audit record and pushed to agents; a failure is
    /// recorded (the last good bundle stays in use).
    pub async fn refresh_federation(&self, td: &TrustDomain) -> Result<Federation, ServerError> {
        let f = self.get_federation(td).await?;
        let stored_sequence = f.bundle.as_ref().and_then(|b| b.sequence);
        let fetched = match fetch(&f).await {
            Ok(doc) => parse_bundle(&doc).and_then(|p| {
                check_sequence(stored_sequence, p.sequence)?;
                Ok((doc, p))
            }),
            Err(e) => Err(e),
        };
        let now = self.clock.now();
        match fetched {
            Ok((doc, parsed)) => {
                let document = String::from_utf8_lossy(&doc).into_owned();
                let old = f
                    .bundle
                    .as_ref()
                    .and_then(|b| parse_bundle(b.document.as_bytes()).ok());
                let changed = old.as_ref() != Some(&parsed);
                let rec = changed.then(|| {
                    audit(
                        &Actor::internal("federation"),
                        now,
                        "federation.bundle",
                        td.as_str(),
                        json!({
                            "sequence": parsed.sequence,
                            "previous_sequence": f.bundle.as_ref().and_then(|b| b.sequence),
                            "x509_authorities": parsed.x509_authorities.len(),
                            "jwt_keys": parsed.jwt_keys.len(),
                            "sha256": credence_ca::keys::sha256_hex(&doc),
                        }),
                    )
                });
                let bundle = FederatedBundle {
                    document,
                    sequence: parsed.sequence,
                    refresh_hint_seconds: parsed.refresh_hint,
                    fetched_at: now,
                };
                self.store
                    .record_federation_refresh(td, now, Ok(bundle), rec)
                    .await?;
                self.federated.set(td, Some(Arc::new(parsed)));
                if changed {
                    tracing::info!(trust_domain = %td, "federated bundle updated");
                    self.changed();
                }
            }
            Err(why) => {
                tracing::warn!(trust_domain = %td, error = %why, "federated bundle refresh failed");
                self.store
                    .record_federation_refresh(td, now, Err(why), None)
                    .await?;
            }
        }
        self.get_federation(td).await
    }

    /// Loads the stored bundles into the cache (at start).
    pub async fn load_federations(&self) -> Result<(), ServerError> {
        for f in self.store.list_federations().await? {
            if let Some(p) = f
                .bundle
                .as_ref()
                .and_then(|b| parse_bundle(b.document.as_bytes()).ok())
            {
                self.federated.set(&f.trust_domain, Some(Arc::new(p)));
            }
        }
        Ok(())
    }

    /// Refreshes every relationship that is due; returns how long until
    /// the next one is.
    pub async fn refresh_due_federations(&self) -> Duration {
        let now = self.clock.now();
        let mut wait = MAX_REFRESH;
        let all = match self.store.list_federations().await {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(error = %e, "cannot list federations");
                return RETRY;
            }
        };
        for f in all {
            let due = next_refresh(&f);
            let f = if due <= now {
                match self.refresh_federation(&f.trust_domain).await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::error!(error = %e, "federation refresh");
                        continue;
                    }
                }
            } else {
                f
            };
            let left = next_refresh(&f) - self.clock.now();
            wait = wait.min(Duration::try_from(left).unwrap_or(MIN_REFRESH));
        }
        wait.max(MIN_REFRESH)
    }

    /// The checked bundles of the foreign trust domains these identities
    /// federate with (for a node's agent).
    pub fn federated_bundles_of(
        &self,
        entries: &[crate::nodes::NodeEntry],
    ) -> Vec<(TrustDomain, Arc<ParsedBundle>)> {
        let mut tds: Vec<TrustDomain> = entries
            .iter()
            .flat_map(|i| i.federates_with.iter().cloned())
            .collect();
        tds.sort();
        tds.dedup();
        self.federated_bundles(&tds)
    }

    /// The checked bundles of these foreign trust domains (those with a
    /// relationship and a bundle).
    pub fn federated_bundles(&self, tds: &[TrustDomain]) -> Vec<(TrustDomain, Arc<ParsedBundle>)> {
        tds.iter()
            .filter_map(|td| self.federated.get(td).map(|b| (td.clone(), b)))
            .collect()
    }
}

/// The refresher: fetches each bundle when due, until the server stops.
pub(crate) fn start_refresher(svc: Arc<Service>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut changes = svc.subscribe();
        loop {
            let wait = svc.refresh_due_federations().await;
            // a new relationship is fetched when added; the signal just
            // shortens the wait so a changed schedule is picked up
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changes.changed() => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_der() -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let k = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&k).unwrap().der().to_vec()
    }

    fn leaf_der() -> Vec<u8> {
        let p = rcgen::CertificateParams::new(vec!["x.example".to_owned()]).unwrap();
        let k = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&k).unwrap().der().to_vec()
    }

    fn b64(d: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(d)
    }

    #[test]
    fn parses_a_spiffe_bundle() {
        let ca = ca_der();
        let doc = json!({
            "keys": [
                {"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": "a", "y": "b", "x5c": [b64(&ca)]},
                {"use": "jwt-svid", "kty": "EC", "kid": "k1", "crv": "P-256", "x": "a", "y": "b"},
                {"use": "something-else", "kty": "EC"},
            ],
            "spiffe_sequence": 7,
            "spiffe_refresh_hint": 60,
        });
        let p = parse_bundle(doc.to_string().as_bytes()).unwrap();
        assert_eq!(p.x509_authorities, vec![ca.clone()]);
        assert_eq!(p.jwt_keys.len(), 1);
        assert_eq!((p.sequence, p.refresh_hint), (Some(7), Some(60)));
        assert_eq!(p.x509_der(), ca);
        assert!(p.x509_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn refuses_bad_bundles_with_reasons() {
        let ca = b64(&ca_der());
        let leaf = b64(&leaf_der());
        for (doc, why) in [
            (json!([]), "not a JSON object"),
            (json!({}), "no \"keys\" array"),
            (json!({"keys": []}), "no x509-svid or jwt-svid key"),
            (
                json!({"keys": [{"use": "other"}]}),
                "no x509-svid or jwt-svid key",
            ),
            (
                json!({"keys": [{"use": "x509-svid", "kty": "EC"}]}),
                "has no x5c",
            ),
            (
                json!({"keys": [{"use": "x509-svid", "x5c": [ca, ca]}]}),
                "exactly one certificate",
            ),
            (
                json!({"keys": [{"use": "x509-svid", "x5c": ["%%"]}]}),
                "not base64",
            ),
            (
                json!({"keys": [{"use": "x509-svid", "x5c": [leaf]}]}),
                "not a CA certificate",
            ),
            (
                json!({"keys": [{"use": "x509-svid", "x5c": [b64(b"junk")]}]}),
                "not a DER certificate",
            ),
            (
                json!({"keys": [{"use": "jwt-svid", "kty": "EC"}]}),
                "has no kid",
            ),
            (
                json!({"keys": [{"use": "jwt-svid", "kty": "oct", "kid": "k"}]}),
                "kty must be",
            ),
            (
                json!({"keys": [{"use": "jwt-svid", "kty": "EC", "kid": "k", "d": "secret"}]}),
                "private key material",
            ),
            (
                json!({"keys": [{"use": "jwt-svid", "kty": "EC", "kid": "k"}], "spiffe_sequence": -1}),
                "spiffe_sequence is not",
            ),
        ] {
            let err = parse_bundle(doc.to_string().as_bytes()).unwrap_err();
            assert!(err.contains(why), "{doc}: {err}");
        }
        assert!(parse_bundle(b"{").unwrap_err().contains("not JSON"));
        let big = vec![b' '; MAX_BUNDLE_BYTES + 1];
        assert!(parse_bundle(&big).unwrap_err().contains("larger than"));
    }

    #[test]
    fn bundle_sequence_never_goes_back() {
        assert!(check_sequence(None, None).is_ok());
        assert!(check_sequence(None, Some(3)).is_ok());
        assert!(check_sequence(Some(3), Some(3)).is_ok());
        assert!(check_sequence(Some(3), Some(4)).is_ok());
        assert!(
            check_sequence(Some(3), Some(2))
                .unwrap_err()
                .contains("went back from 3 to 2")
        );
        assert!(check_sequence(Some(3), None).is_err());
    }

    #[test]
    fn refresh_schedule_follows_the_hint_within_bounds() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut f = Federation {
            trust_domain: TrustDomain::new("a.example").unwrap(),
            bundle_endpoint: BundleEndpointUrl::parse("https://a.example/").unwrap(),
            profile: BundleProfile::HttpsWeb,
            tls_roots_pem: None,
            created_at: t0,
            created_by: "admin".into(),
            bundle: None,
            last_error: None,
            last_attempt_at: None,
        };
        // never fetched: due now
        assert!(next_refresh(&f) <= t0);
        // never fetched, failed: retry later
        f.last_attempt_at = Some(t0);
        f.last_error = Some("down".into());
        assert_eq!(next_refresh(&f), t0 + time::Duration::seconds(30));
        let bundle = |hint| FederatedBundle {
            document: String::new(),
            sequence: None,
            refresh_hint_seconds: hint,
            fetched_at: t0,
        };
        f.last_error = None;
        f.bundle = Some(bundle(Some(120)));
        assert_eq!(next_refresh(&f), t0 + time::Duration::seconds(120));
        f.bundle = Some(bundle(None));
        assert_eq!(next_refresh(&f), t0 + time::Duration::seconds(300));
        f.bundle = Some(bundle(Some(0)));
        assert_eq!(next_refresh(&f), t0 + time::Duration::seconds(1));
        f.bundle = Some(bundle(Some(86_400 * 30)));
        assert_eq!(next_refresh(&f), t0 + time::Duration::seconds(3600));
        // failing with a good bundle: retry sooner than the hint
        f.bundle = Some(bundle(Some(600)));
        f.last_error = Some("down".into());
        f.last_attempt_at = Some(t0 + time::Duration::seconds(10));
        assert_eq!(next_refresh(&f), t0 + time::Duration::seconds(40));
    }
}
