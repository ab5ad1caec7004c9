//! The standalone agent's link to the server: the agent API over mutual
//! TLS.
//!
//! - The server is authenticated by the trust bundle and its SPIFFE ID
//!   (`spiffe://<td>/credence/server`), never by hostname.
//! - The agent authenticates with its own X509-SVID, kept in the data
//!   directory (`agent.pem`, `agent.key` 0600, `bundle.pem`) so a restart
//!   needs no new join token while the SVID is valid. It is renewed at half
//!   its lifetime.
//! - A background task holds the server's watch stream open and turns each
//!   line into a local change signal; it reconnects with backoff.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use futures::future::BoxFuture;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::watch;
use zeroize::Zeroizing;

use credence_core::{Selector, SpiffeId, TrustDomain};

use crate::agent::key_and_csr;
use crate::upstream::{AgentError, EntrySpec, Signed, SignedJwt, Synced, Upstream};

const TIMEOUT: Duration = Duration::from_secs(30);

fn pem_certs(pem_text: &str) -> Result<Vec<CertificateDer<'static>>, AgentError> {
    let blocks = pem::parse_many(pem_text.as_bytes())
        .map_err(|e| AgentError::Protocol(format!("PEM: {e}")))?;
    Ok(blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect())
}

/// The agent's own credentials.
struct AgentSvid {
    chain: Vec<CertificateDer<'static>>,
    key: Zeroizing<Vec<u8>>,
    not_after: OffsetDateTime,
    /// Half the lifetime left when it was obtained or loaded (notBefore is
    /// backdated for clock skew, so it would make renewal too early).
    renew_at: OffsetDateTime,
    spiffe_id: SpiffeId,
}

fn client(
    bundle: &[CertificateDer<'static>],
    td: &TrustDomain,
    svid: Option<&AgentSvid>,
) -> Result<reqwest::Client, AgentError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = credence_ca::tls::SpiffeServerVerifier::new(
        bundle.to_vec(),
        SpiffeId::from_parts(td, "/credence/server")
            .map_err(|e| AgentError::Local(e.to_string()))?,
        provider.signature_verification_algorithms,
    );
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Local(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut cfg = match svid {
        Some(s) => builder
            .with_client_auth_cert(
                s.chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(s.key.to_vec())),
            )
            .map_err(|e| AgentError::Local(format!("agent SVID: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(15))
        .http2_keep_alive_while_idle(true)
        .build()
        .map_err(|e| AgentError::Local(format!("HTTP client: {e}")))
}

fn status_error(status: reqwest::StatusCode, body: &str) -> AgentError {
    let msg = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(200).collect());
    if status == reqwest::StatusCode::FORBIDDEN || status == reqwest::StatusCode::UNAUTHORIZED {
        AgentError::Refused(msg)
    } else if status.is_server_error() {
        AgentError::Unavailable(format!("{status}: {msg}"))
    } else {
        AgentError::Protocol(format!("{status}: {msg}"))
    }
}

async fn post(c: &reqwest::Client, url: &str, body: Value) -> Result<Value, AgentError> {
    post_as(c, url, body).await
}

/// POSTs JSON and decodes the answer straight into `T` (no intermediate
/// `Value`: sync answers for thousands of entries stay small in memory).
async fn post_as<T: serde::de::DeserializeOwned>(
    c: &reqwest::Client,
    url: &str,
    body: Value,
) -> Result<T, AgentError> {
    let resp = c
        .post(url)
        .json(&body)
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| AgentError::Unavailable(format!("{url}: {e}")))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| AgentError::Unavailable(format!("{url}: {e}")))?;
    if !status.is_success() {
        return Err(status_error(status, &String::from_utf8_lossy(&body)));
    }
    serde_json::from_slice(&body).map_err(|e| AgentError::Protocol(format!("{url}: {e}")))
}

/// Files of the agent's data directory.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn svid(&self) -> PathBuf {
        self.dir.join("agent.pem")
    }
    fn key(&self) -> PathBuf {
        self.dir.join("agent.key")
    }
    fn bundle(&self) -> PathBuf {
        self.dir.join("bundle.pem")
    }

    fn save(&self, chain_pem: &str, key_der: &[u8], bundle_pem: &str) -> Result<(), AgentError> {
        let io = |p: &Path, e: std::io::Error| AgentError::Local(format!("{}: {e}", p.display()));
        let key_pem = Zeroizing::new(pem::encode(&pem::Pem::new("PRIVATE KEY", key_der.to_vec())));
        write_private(&self.key(), key_pem.as_bytes()).map_err(|e| io(&self.key(), e))?;
        std::fs::write(self.svid(), chain_pem).map_err(|e| io(&self.svid(), e))?;
        std::fs::write(self.bundle(), bundle_pem).map_err(|e| io(&self.bundle(), e))?;
        Ok(())
    }

    fn forget(&self) {
        let _ = std::fs::remove_file(self.key());
        let _ = std::fs::remove_file(self.svid());
    }

    fn load(&self) -> Result<Option<(AgentSvid, Vec<CertificateDer<'static>>)>, AgentError> {
        let Ok(chain_pem) = std::fs::read_to_string(self.svid()) else {
            return Ok(None);
        };
        let key_pem = Zeroizing::new(
            std::fs::read_to_string(self.key())
                .map_err(|e| AgentError::Local(format!("{}: {e}", self.key().display())))?,
        );
        let bundle_pem = std::fs::read_to_string(self.bundle())
            .map_err(|e| AgentError::Local(format!("{}: {e}", self.bundle().display())))?;
        let key = pem::parse(key_pem.as_bytes())
            .map_err(|e| AgentError::Local(format!("{}: {e}", self.key().display())))?;
        let svid = agent_svid(&chain_pem, Zeroizing::new(key.into_contents()))?;
        Ok(Some((svid, pem_certs(&bundle_pem)?)))
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn agent_svid(chain_pem: &str, key: Zeroizing<Vec<u8>>) -> Result<AgentSvid, AgentError> {
    let chain = pem_certs(chain_pem)?;
    let leaf = chain
        .first()
        .ok_or_else(|| AgentError::Protocol("empty agent SVID chain".into()))?;
    let info = credence_ca::x509::svid_info(leaf)
        .map_err(|e| AgentError::Protocol(format!("agent SVID: {e}")))?;
    Ok(AgentSvid {
        chain,
        key,
        not_after: info.not_after,
        renew_at: {
            let now = OffsetDateTime::now_utc();
            now + (info.not_after - now) / 2
        },
        spiffe_id: info.spiffe_id,
    })
}

/// How to reach the server.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// `https://host:port` of the agent API.
    pub server: String,
    pub trust_domain: TrustDomain,
    pub data_dir: PathBuf,
    /// For the first attestation.
    pub join_token: Option<String>,
    /// Or: a file holding a token of an external OIDC issuer the server
    /// trusts for node attestation (read when attesting: such tokens are
    /// short-lived and rewritten by their issuer's tooling).
    pub oidc_token_file: Option<PathBuf>,
    /// PEM trust bundle for the first attestation (afterwards the agent
    /// keeps the bundle the server hands out).
    pub trust_bundle: Option<PathBuf>,
}

struct Link {
    client: reqwest::Client,
    bundle: Vec<CertificateDer<'static>>,
    svid: AgentSvid,
}

/// [`Upstream`] over the agent API.
pub struct RemoteUpstream {
    cfg: RemoteConfig,
    files: Files,
    link: RwLock<Link>,
    tx: watch::Sender<u64>,
}

impl RemoteUpstream {
    /// Loads the persisted agent SVID (renewing it if due), or attests with
    /// the join token.
    pub async fn connect(cfg: RemoteConfig) -> Result<Arc<Self>, AgentError> {
        let files = Files {
            dir: cfg.data_dir.clone(),
        };
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| AgentError::Local(format!("{}: {e}", cfg.data_dir.display())))?;
        let now = OffsetDateTime::now_utc();
        let link = match files.load()? {
            Some((svid, bundle)) if svid.not_after > now => {
                tracing::info!(spiffe_id = %svid.spiffe_id, "re-attesting with the persisted agent SVID");
                Link {
                    client: client(&bundle, &cfg.trust_domain, Some(&svid))?,
                    bundle,
                    svid,
                }
            }
            _ => Self::attest(&cfg, &files).await?,
        };
        let up = Arc::new(Self {
            cfg,
            files,
            link: RwLock::new(link),
            tx: watch::channel(0).0,
        });
        Ok(up)
    }

    async fn attest(cfg: &RemoteConfig, files: &Files) -> Result<Link, AgentError> {
        let credential = match (&cfg.join_token, &cfg.oidc_token_file) {
            (Some(t), _) => json!({"join_token": t}),
            (None, Some(f)) => {
                let t = std::fs::read_to_string(f)
                    .map_err(|e| AgentError::Local(format!("{}: {e}", f.display())))?;
                json!({"oidc_token": t.trim()})
            }
            (None, None) => {
                return Err(AgentError::Local(format!(
                    "no valid agent SVID in {} and no join token or OIDC token: create a join token with `credence node token create`",
                    cfg.data_dir.display()
                )));
            }
        };
        let bundle_file = cfg.trust_bundle.as_ref().ok_or_else(|| {
            AgentError::Local(
                "the first attestation needs --trust-bundle (the server's bundle.pem)".into(),
            )
        })?;
        let bundle_pem = std::fs::read_to_string(bundle_file)
            .map_err(|e| AgentError::Local(format!("{}: {e}", bundle_file.display())))?;
        let bundle = pem_certs(&bundle_pem)?;
        if bundle.is_empty() {
            return Err(AgentError::Local(format!(
                "{}: no certificate",
                bundle_file.display()
            )));
        }
        let c = client(&bundle, &cfg.trust_domain, None)?;
        let (key, csr) = key_and_csr_any()?;
        let v = post(&c, &format!("{}/agent/v1/attest", cfg.server), {
            let mut body = credential;
            body["csr"] = json!(b64(&csr));
            body
        })
        .await?;
        let link = Self::install_svid(cfg, files, &v, key)?;
        tracing::info!(spiffe_id = %link.svid.spiffe_id, "node attested");
        Ok(link)
    }

    fn install_svid(
        cfg: &RemoteConfig,
        files: &Files,
        v: &Value,
        key: Zeroizing<Vec<u8>>,
    ) -> Result<Link, AgentError> {
        let chain_pem = v["chain_pem"]
            .as_str()
            .ok_or_else(|| AgentError::Protocol("answer without chain_pem".into()))?;
        let bundle_pem = v["bundle_pem"]
            .as_str()
            .ok_or_else(|| AgentError::Protocol("answer without bundle_pem".into()))?;
        files.save(chain_pem, &key, bundle_pem)?;
        let svid = agent_svid(chain_pem, key)?;
        let bundle = pem_certs(bundle_pem)?;
        Ok(Link {
            client: client(&bundle, &cfg.trust_domain, Some(&svid))?,
            bundle,
            svid,
        })
    }

    /// When the agent SVID is due for renewal (half its lifetime).
    pub fn renew_at(&self) -> Option<OffsetDateTime> {
        self.link.read().ok().map(|l| l.svid.renew_at)
    }

    /// Renews the agent SVID at half-life until `stop`, retrying with
    /// backoff; a refusal (eviction) ends it, and the cache's next sync
    /// reports it.
    pub async fn renew_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = self
                .renew_at()
                .map(|t| t - OffsetDateTime::now_utc())
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_millis(100));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            match self.renew_if_due().await {
                Ok(()) => backoff = Duration::from_secs(1),
                Err(AgentError::Refused(m)) => {
                    tracing::error!(reason = %m, "agent SVID renewal refused");
                    self.tx.send_modify(|n| *n = n.wrapping_add(1));
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "agent SVID renewal failed");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// This agent's SPIFFE ID.
    pub fn spiffe_id(&self) -> Option<SpiffeId> {
        self.link.read().ok().map(|l| l.svid.spiffe_id.clone())
    }

    fn http(&self) -> Result<reqwest::Client, AgentError> {
        self.link
            .read()
            .map(|l| l.client.clone())
            .map_err(|_| AgentError::Local("agent state poisoned".into()))
    }

    fn url(&self, path: &str) -> String {
        format!("{}/agent/v1/{path}", self.cfg.server)
    }

    /// Renews the agent SVID when half its lifetime has passed.
    pub async fn renew_if_due(&self) -> Result<(), AgentError> {
        let (due, spiffe_id) = {
            let l = self
                .link
                .read()
                .map_err(|_| AgentError::Local("agent state poisoned".into()))?;
            (
                OffsetDateTime::now_utc() >= l.svid.renew_at,
                l.svid.spiffe_id.clone(),
            )
        };
        if !due {
            return Ok(());
        }
        let (key, csr) = key_and_csr(spiffe_id.as_str())?;
        let v = post(&self.http()?, &self.url("renew"), json!({"csr": b64(&csr)})).await?;
        let link = Self::install_svid(&self.cfg, &self.files, &v, Zeroizing::new(key))?;
        if let Ok(mut l) = self.link.write() {
            *l = link;
        }
        tracing::info!("agent SVID renewed");
        Ok(())
    }

    /// Forgets the persisted SVID (after eviction).
    pub fn forget(&self) {
        self.files.forget();
    }

    /// Holds the watch stream open until `stop`, signalling every line.
    pub async fn watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let r = tokio::select! {
                r = self.watch_once() => r,
                _ = stop.changed() => return,
            };
            match r {
                Ok(true) => {
                    tracing::error!("the server evicted this node");
                    self.tx.send_modify(|n| *n = n.wrapping_add(1));
                    return;
                }
                Ok(false) => backoff = Duration::from_millis(250),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "watch stream lost");
                    // whatever happened while disconnected: sync again
                    self.tx.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// One watch connection; `Ok(true)` when the node was evicted.
    async fn watch_once(&self) -> Result<bool, AgentError> {
        let mut resp = self
            .http()?
            .get(self.url("watch"))
            .send()
            .await
            .map_err(|e| AgentError::Unavailable(e.to_string()))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return match status_error(status, &text) {
                AgentError::Refused(_) => Ok(true),
                other => Err(other),
            };
        }
        let mut buf = Vec::new();
        // a heartbeat arrives every 10 s; silence means a dead link
        while let Some(chunk) = tokio::time::timeout(Duration::from_secs(35), resp.chunk())
            .await
            .map_err(|_| AgentError::Unavailable("watch stream silent".into()))?
            .map_err(|e| AgentError::Unavailable(e.to_string()))?
        {
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let v: Value = serde_json::from_slice(&line)
                    .map_err(|e| AgentError::Protocol(format!("watch line: {e}")))?;
                if v["evicted"] == true {
                    return Ok(true);
                }
                self.tx.send_modify(|n| *n = n.wrapping_add(1));
            }
            if buf.len() > 64 * 1024 {
                return Err(AgentError::Protocol("watch line too long".into()));
            }
        }
        Ok(false)
    }
}

fn b64(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

/// A key and a CSR with no SAN (the server names the agent).
fn key_and_csr_any() -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), AgentError> {
    use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256};
    let local = |e: rcgen::Error| AgentError::Local(format!("key generation: {e}"));
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(local)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(local)?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(local)?;
    Ok((Zeroizing::new(key.serialize_der()), csr.der().to_vec()))
}

#[derive(Deserialize)]
struct WireSync {
    entries: Vec<WireEntry>,
    bundle_pem: String,
    jwks: Value,
    revoked: Vec<String>,
    /// Absent from servers before federation.
    #[serde(default)]
    federated: Vec<WireFederated>,
}

#[derive(Deserialize)]
struct WireEntry {
    spiffe_id: String,
    selectors: Vec<Selector>,
    updated_at: String,
    /// Trust domain names.
    #[serde(default)]
    federates_with: Vec<String>,
}

#[derive(Deserialize)]
struct WireFederated {
    trust_domain: String,
    bundle_pem: String,
    jwks: Value,
}

fn pem_to_der_concat(pem_text: &str) -> Result<Vec<u8>, AgentError> {
    Ok(pem_certs(pem_text)?
        .into_iter()
        .flat_map(|c| c.to_vec())
        .collect())
}

impl Upstream for Arc<RemoteUpstream> {
    fn sync(&self, held: Vec<String>) -> BoxFuture<'_, Result<Synced, AgentError>> {
        Box::pin(async move {
            self.renew_if_due().await?;
            let v: WireSync =
                post_as(&self.http()?, &self.url("sync"), json!({"held": held})).await?;
            let bundle_pem = v.bundle_pem.as_str();
            let bundle = pem_certs(bundle_pem)?;
            if !bundle.is_empty()
                && let Ok(mut l) = self.link.write()
                && l.bundle != bundle
            {
                // new roots: trust them for the next connections
                let _ = std::fs::write(self.files.bundle(), bundle_pem);
                l.bundle = bundle;
            }
            Ok(Synced {
                trust_domain_id: self.cfg.trust_domain.id_string(),
                entries: v
                    .entries
                    .into_iter()
                    .map(|e| EntrySpec {
                        spiffe_id: e.spiffe_id,
                        selectors: e.selectors,
                        revision: e.updated_at,
                        federates_with: e
                            .federates_with
                            .iter()
                            .map(|td| format!("spiffe://{td}"))
                            .collect(),
                    })
                    .collect(),
                bundle_der: Arc::new(pem_to_der_concat(bundle_pem)?),
                jwks: v.jwks.to_string().into_bytes(),
                revoked: v.revoked,
                federated: v
                    .federated
                    .into_iter()
                    .map(|f| {
                        Ok((
                            format!("spiffe://{}", f.trust_domain),
                            crate::upstream::FederatedBundle {
                                x509_der: Arc::new(pem_to_der_concat(&f.bundle_pem)?),
                                jwks: f.jwks.to_string().into_bytes(),
                            },
                        ))
                    })
                    .collect::<Result<_, AgentError>>()?,
            })
        })
    }

    fn sign(
        &self,
        requests: Vec<(String, Vec<u8>)>,
    ) -> BoxFuture<'_, Result<Vec<Result<Signed, String>>, AgentError>> {
        Box::pin(async move {
            let body: Vec<Value> = requests
                .iter()
                .map(|(id, csr)| json!({"spiffe_id": id, "csr": b64(csr)}))
                .collect();
            let v = post(&self.http()?, &self.url("x509"), json!({"requests": body})).await?;
            let svids = v["svids"]
                .as_array()
                .ok_or_else(|| AgentError::Protocol("x509 answer without svids".into()))?;
            if svids.len() != requests.len() {
                return Err(AgentError::Protocol(
                    "x509 answer of the wrong length".into(),
                ));
            }
            Ok(svids
                .iter()
                .map(|s| {
                    if let Some(m) = s["message"].as_str() {
                        return Err(m.to_owned());
                    }
                    Ok(Signed {
                        spiffe_id: s["spiffe_id"].as_str().unwrap_or_default().to_owned(),
                        serial: s["serial"].as_str().unwrap_or_default().to_owned(),
                        not_after: s["not_after"].as_i64().unwrap_or(0),
                        chain_der: pem_to_der_concat(s["chain_pem"].as_str().unwrap_or_default())
                            .map_err(|e| e.to_string())?,
                    })
                })
                .collect())
        })
    }

    fn jwt(
        &self,
        spiffe_id: String,
        audience: Vec<String>,
    ) -> BoxFuture<'_, Result<SignedJwt, AgentError>> {
        Box::pin(async move {
            let v = post(
                &self.http()?,
                &self.url("jwt"),
                json!({"spiffe_id": spiffe_id, "audience": audience}),
            )
            .await?;
            let token = v["token"]
                .as_str()
                .ok_or_else(|| AgentError::Protocol("jwt answer without token".into()))?;
            let exp = v["expires_at"]
                .as_str()
                .and_then(|s| {
                    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
                })
                .map(|t| t.unix_timestamp())
                .ok_or_else(|| AgentError::Protocol("jwt answer without expires_at".into()))?;
            Ok(SignedJwt {
                token: token.to_owned(),
                expires_at: exp,
            })
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}
