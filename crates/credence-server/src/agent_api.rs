//! The agent API: what node agents call, on its own TLS listener (default
//! port 8081, like SPIRE's), separate from the admin API.
//!
//! The server presents its own X509-SVID (`spiffe://<td>/credence/server`,
//! renewed at half-life) and asks for a client certificate. Agents verify
//! the server by the trust bundle and that SPIFFE ID, never by hostname.
//!
//! - `POST /agent/v1/attest` (no client certificate): `{join_token, csr}` →
//!   the node and its agent SVID.
//! - Everything else needs the agent SVID; each request checks that the
//!   node is active and the certificate not revoked, so an evicted agent is
//!   refused at once:
//!   - `POST /agent/v1/renew` `{csr}` → a new agent SVID;
//!   - `POST /agent/v1/sync` `{held: [serial]}` → the node's entries, the
//!     bundle, the JWKS, and which held serials are revoked;
//!   - `POST /agent/v1/x509` `{requests: [{spiffe_id, csr}]}` → SVIDs;
//!   - `POST /agent/v1/jwt` `{spiffe_id, audience}` → a JWT-SVID;
//!   - `GET /agent/v1/watch` → a never-ending NDJSON stream: one line
//!     `{"seq": N}` now and after every change (registration, revocation,
//!     rotation, eviction), and a heartbeat every 10 s. Agents re-sync on
//!     each line; the stream ends when the node is evicted.
//!
//! The AuthZEN PDP (`POST /access/v1/evaluation(s)`) is served here too,
//! for services that authenticate with their X509-SVID (mutual TLS)
//! rather than a bearer token.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration as StdDuration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use credence_ca::x509::LeafKey;
use credence_ca::{Signer, SoftwareKey};
use credence_core::{Node, SpiffeId};

use crate::ServerError;
use crate::api::{ApiJson, MAX_BODY};
use crate::service::Service;

/// Most SVIDs one `/agent/v1/x509` call may ask for.
pub const MAX_BATCH: usize = 256;
/// Bodies of batched CSRs are larger than admin requests.
const MAX_AGENT_BODY: usize = MAX_BATCH * 2048 + MAX_BODY;
/// Heartbeat interval of the watch stream.
const HEARTBEAT: StdDuration = StdDuration::from_secs(10);

/// The client certificate of the connection (leaf DER), if any.
#[derive(Clone)]
pub struct PeerCert(pub Option<Arc<Vec<u8>>>);

#[derive(Clone)]
struct AgentState {
    svc: Arc<Service>,
    shutdown: watch::Receiver<bool>,
    /// The main API's base URL (the default issuer of tokens).
    public_base: String,
}

/// The node of an authenticated agent, set by [`require_agent`].
struct AgentNode(Node, Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for AgentNode {
    type Rejection = ServerError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let node = parts
            .extensions
            .get::<Node>()
            .cloned()
            .ok_or_else(|| refused("no agent certificate"))?;
        Ok(Self(node, client_addr(&parts.extensions)))
    }
}

fn refused(m: &str) -> ServerError {
    ServerError::Forbidden("agent_refused", m.to_owned())
}

fn client_addr(ext: &axum::http::Extensions) -> Option<String> {
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
}

fn router(state: AgentState) -> Router {
    let authed = Router::new()
        .route("/renew", post(renew))
        .route("/sync", post(sync))
        .route("/x509", post(x509))
        .route("/jwt", post(jwt))
        .route("/watch", get(watch_changes))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_agent));
    let pdp = crate::authzen_api::pdp_routes::<AgentState>()
        .route_layer(middleware::from_fn_with_state(state.clone(), require_svid));
    Router::new()
        .route("/agent/v1/attest", post(attest))
        .route("/oauth2/token", post(oauth_token))
        .nest("/agent/v1", authed)
        .merge(pdp)
        .fallback(|| async { ServerError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ServerError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_AGENT_BODY))
        .with_state(state)
}

impl axum::extract::FromRef<AgentState> for Arc<Service> {
    fn from_ref(s: &AgentState) -> Self {
        s.svc.clone()
    }
}

/// `POST /oauth2/token` over mutual TLS: a client with an X509-SVID
/// authenticates by it (RFC 8705) and gets certificate-bound tokens;
/// without a certificate the usual client assertion applies.
async fn oauth_token(State(st): State<AgentState>, req: Request) -> Response {
    let leaf = peer_leaf(&req);
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), MAX_AGENT_BODY).await {
        Ok(b) => b,
        Err(_) => return ServerError::bad("too_large", "request body too large").into_response(),
    };
    let issuer = st
        .svc
        .issuer_url
        .clone()
        .unwrap_or_else(|| st.public_base.clone());
    // the audience an assertion must name is the public token endpoint,
    // never one derived from the request's Host header: a relying party
    // holding a JWT-SVID minted for its own URL must not be able to replay
    // it here by naming itself as the host
    let ep = crate::oauth::Endpoints {
        issuer,
        token: format!("{}/oauth2/token", st.public_base),
    };
    let cert = leaf.map(|leaf_der| crate::oauth::ClientCert { leaf_der });
    crate::oauth::token_response(&st.svc, &ep, cert.as_ref(), &headers, &body).await
}

/// The client certificate of the request's connection, if it sent one.
fn peer_leaf(req: &Request) -> Option<Arc<Vec<u8>>> {
    req.extensions().get::<PeerCert>().and_then(|p| p.0.clone())
}

/// PDP callers on this listener: any unrevoked X509-SVID of this trust
/// domain (the TLS handshake has already verified its chain).
async fn require_svid(
    State(st): State<AgentState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ServerError> {
    let refused = |m: &str| ServerError::Forbidden("forbidden", m.to_owned());
    let leaf = peer_leaf(&req).ok_or_else(|| {
        refused("the PDP on this listener needs an X509-SVID as client certificate")
    })?;
    let client_addr = client_addr(req.extensions());
    let info = credence_ca::x509::svid_info(&leaf)
        .map_err(|e| refused(&format!("the client certificate is not an X509-SVID: {e}")))?;
    if !info.spiffe_id.is_member_of(&st.svc.trust_domain()) {
        return Err(refused("the X509-SVID is not of this trust domain"));
    }
    if st.svc.is_revoked(&info.serial).await? {
        return Err(refused("the X509-SVID has been revoked"));
    }
    req.extensions_mut().insert(crate::service::Actor {
        name: info.spiffe_id.to_string(),
        method: "x509_svid",
        request_id: None,
        client_addr,
        principal: crate::authz::Principal::Workload,
    });
    Ok(next.run(req).await)
}

async fn require_agent(
    State(st): State<AgentState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ServerError> {
    let leaf = peer_leaf(&req).ok_or_else(|| {
        refused("this endpoint needs the agent's X509-SVID as client certificate")
    })?;
    let node = st.svc.authenticate_agent(&leaf).await?;
    req.extensions_mut().insert(node);
    Ok(next.run(req).await)
}

fn csr(pem_or_b64: &str) -> Result<credence_ca::x509::CheckedCsr, ServerError> {
    let der = crate::api::csr_bytes(pem_or_b64)?;
    Ok(credence_ca::check_csr(&der)?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttestRequest {
    #[serde(default)]
    join_token: Option<String>,
    /// A token of a configured external OIDC issuer, instead of a join token.
    #[serde(default)]
    oidc_token: Option<String>,
    csr: String,
}

fn agent_svid_json(node: &Node, svid: &crate::service::X509Svid) -> Value {
    json!({
        "node": node,
        "spiffe_id": svid.spiffe_id,
        "serial": svid.serial,
        "not_after": svid.not_after.unix_timestamp(),
        "chain_pem": svid.chain_pem,
        "bundle_pem": svid.bundle_pem,
    })
}

async fn attest(
    State(st): State<AgentState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<AttestRequest>,
) -> Result<Json<Value>, ServerError> {
    let checked = csr(&req.csr)?;
    let (node, svid) = match (req.join_token, req.oidc_token) {
        (Some(t), None) => {
            if t.is_empty() || t.len() > 256 {
                return Err(ServerError::bad(
                    "invalid_join_token",
                    "join_token must be 1 to 256 characters",
                ));
            }
            st.svc
                .attest_with_join_token(&t, checked, Some(peer.to_string()))
                .await?
        }
        (None, Some(t)) => {
            st.svc
                .attest_with_oidc_token(&t, checked, Some(peer.to_string()))
                .await?
        }
        _ => {
            return Err(ServerError::bad(
                "invalid_request",
                "attest with exactly one of join_token and oidc_token",
            ));
        }
    };
    Ok(Json(agent_svid_json(&node, &svid)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewRequest {
    csr: String,
}

async fn renew(
    State(st): State<AgentState>,
    AgentNode(node, addr): AgentNode,
    ApiJson(req): ApiJson<RenewRequest>,
) -> Result<Json<Value>, ServerError> {
    let svid = st.svc.renew_agent(&node, csr(&req.csr)?, addr).await?;
    let node = st.svc.get_node(&node.id).await?;
    Ok(Json(agent_svid_json(&node, &svid)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncRequest {
    #[serde(default)]
    held: Vec<String>,
}

async fn sync(
    State(st): State<AgentState>,
    AgentNode(node, _): AgentNode,
    ApiJson(req): ApiJson<SyncRequest>,
) -> Result<Json<Value>, ServerError> {
    if req.held.len() > 100_000 || req.held.iter().any(|s| s.len() > 64) {
        return Err(ServerError::bad(
            "invalid_request",
            "held: at most 100000 serials of at most 64 characters",
        ));
    }
    // read the change counter first: a change racing this sync bumps it again
    let seq = *st.svc.subscribe().borrow();
    let entries = st.svc.node_entries(&node.id).await?;
    let revoked = st.svc.revoked_among(&req.held).await?;
    let auth = st.svc.authority();
    let federated: Vec<Value> = st
        .svc
        .federated_bundles_of(&entries)
        .iter()
        .map(|(td, b)| json!({"trust_domain": td, "bundle_pem": b.x509_pem(), "jwks": b.jwks()}))
        .collect();
    Ok(Json(json!({
        "seq": seq,
        "node": node,
        "trust_domain": auth.trust_domain,
        "entries": entries,
        "bundle_pem": auth.bundle_pem(),
        "jwks": auth.jwks(),
        "revoked": revoked,
        "federated": federated,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct X509Request {
    spiffe_id: SpiffeId,
    csr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct X509Batch {
    requests: Vec<X509Request>,
}

async fn x509(
    State(st): State<AgentState>,
    AgentNode(node, addr): AgentNode,
    ApiJson(req): ApiJson<X509Batch>,
) -> Result<Json<Value>, ServerError> {
    if req.requests.len() > MAX_BATCH {
        return Err(ServerError::bad(
            "batch_too_large",
            format!("at most {MAX_BATCH} requests per call"),
        ));
    }
    // concurrently, so the store's group commit takes them in one transaction
    let results = futures::future::join_all(req.requests.into_iter().map(|r| {
        let (svc, node, addr) = (&st.svc, &node, addr.clone());
        async move {
            let out = match csr(&r.csr) {
                Ok(c) => svc.node_x509(node, &r.spiffe_id, c, addr).await,
                Err(e) => Err(e),
            };
            match out {
                Ok(s) => json!({
                    "spiffe_id": s.spiffe_id,
                    "serial": s.serial,
                    "not_after": s.not_after.unix_timestamp(),
                    "chain_pem": s.chain_pem,
                }),
                Err(e) => json!({
                    "spiffe_id": r.spiffe_id,
                    "error": e.code(),
                    "message": e.to_string(),
                }),
            }
        }
    }))
    .await;
    Ok(Json(json!({"svids": results})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtRequest {
    spiffe_id: SpiffeId,
    audience: Vec<String>,
}

async fn jwt(
    State(st): State<AgentState>,
    AgentNode(node, addr): AgentNode,
    ApiJson(req): ApiJson<JwtRequest>,
) -> Result<Json<crate::service::JwtSvid>, ServerError> {
    Ok(Json(
        st.svc
            .node_jwt(&node, &req.spiffe_id, &req.audience, addr)
            .await?,
    ))
}

async fn watch_changes(State(st): State<AgentState>, AgentNode(node, _): AgentNode) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(4);
    let mut changes = st.svc.subscribe();
    let mut shutdown = st.shutdown.clone();
    let svc = st.svc.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let seq = *changes.borrow_and_update();
            let evicted = matches!(
                svc.get_node(&node.id).await.map(|n| n.status),
                Ok(credence_core::NodeStatus::Evicted)
            );
            let line = if evicted {
                json!({"seq": seq, "evicted": true})
            } else {
                json!({"seq": seq})
            };
            if tx.send(Ok(Bytes::from(format!("{line}\n")))).await.is_err() || evicted {
                return;
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
                () = tx.closed() => return,
            }
        }
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}

// ---- the server's own SVID and the TLS listener ----

/// Resolves the server's current certificate; replaced at renewal.
#[derive(Debug)]
struct ServerSvid(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for ServerSvid {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|k| k.clone())
    }
}

/// The SPIFFE ID the agent API presents.
pub fn server_spiffe_id(svc: &Service) -> Result<SpiffeId, ServerError> {
    Ok(SpiffeId::from_parts(
        &svc.trust_domain(),
        "/credence/server",
    )?)
}

/// Issues the server's SVID straight from the intermediate (it is not a
/// registered identity) and records the issuance in the audit log.
async fn issue_server_svid(
    svc: &Service,
) -> Result<(Arc<CertifiedKey>, time::OffsetDateTime), ServerError> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let key = SoftwareKey::generate()?;
    let leaf_key = LeafKey::from_spki_der(&key.public_key_spki())?;
    let auth = svc.authority();
    let now = svc.clock.now();
    let not_after = (now + svc.policy.agent_svid_ttl).min(auth.intermediate.not_after);
    let serial = svc.new_serial(now);
    let id = server_spiffe_id(svc)?;
    let der = auth.intermediate.issue_svid(
        &id,
        &leaf_key,
        &serial,
        now - svc.policy.backdate,
        not_after,
    )?;
    let chain = vec![
        CertificateDer::from(der),
        CertificateDer::from(auth.intermediate.cert_der.clone()),
    ];
    let signing = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.pkcs8_der().to_vec(),
        )))
        .map_err(|e| ServerError::Internal(format!("server SVID key: {e}")))?;
    let rec = crate::service::audit(
        &crate::service::Actor::internal("system"),
        now,
        "server.svid.issue",
        id.as_str(),
        json!({"serial": serial, "not_after": not_after.unix_timestamp()}),
    );
    // a log that cannot take entries (e.g. tampered with) must not keep the
    // server from starting: the operator needs it up to investigate
    if let Err(e) = svc.store.append_audit(rec).await {
        tracing::error!(error = %e, "cannot record the server SVID in the audit log");
    }
    Ok((Arc::new(CertifiedKey::new(chain, signing)), not_after))
}

fn tls_config(
    svc: &Service,
    resolver: Arc<ServerSvid>,
) -> Result<rustls::ServerConfig, ServerError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let auth = svc.authority();
    roots
        .add(CertificateDer::from(auth.root.cert_der.clone()))
        .map_err(|e| ServerError::Internal(format!("trust bundle: {e}")))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| ServerError::Internal(format!("client verifier: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Internal(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A running agent API listener.
pub struct AgentListener {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    renewer: JoinHandle<()>,
}

impl AgentListener {
    /// Stops accepting, ends watch streams, waits briefly for requests.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.renewer.abort();
        let _ = self.task.await;
    }
}

/// Binds `listen` and serves the agent API over TLS.
pub async fn start(
    svc: Arc<Service>,
    listen: SocketAddr,
    public_base: String,
) -> Result<AgentListener, ServerError> {
    let (first, mut not_after) = issue_server_svid(&svc).await?;
    let resolver = Arc::new(ServerSvid(RwLock::new(first)));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&svc, resolver.clone())?));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| ServerError::Unavailable(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Internal(e.to_string()))?;
    let (stop, shutdown) = watch::channel(false);
    let app = router(AgentState {
        svc: svc.clone(),
        shutdown: shutdown.clone(),
        public_base: public_base.trim_end_matches('/').to_owned(),
    });

    let renewer = {
        let svc = svc.clone();
        tokio::spawn(async move {
            let mut changes = svc.subscribe();
            let mut intermediate = svc.authority().intermediate_id.clone();
            loop {
                let now = svc.clock.now();
                let left: time::Duration = not_after - now;
                let wait = std::cmp::max(left / 2_i32, time::Duration::seconds(1));
                let wait = StdDuration::try_from(wait).unwrap_or(StdDuration::from_secs(1));
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    r = changes.changed() => {
                        if r.is_err() { return }
                        // only a CA rotation needs a new server SVID
                        if svc.authority().intermediate_id == intermediate { continue }
                    }
                }
                intermediate = svc.authority().intermediate_id.clone();
                match issue_server_svid(&svc).await {
                    Ok((k, na)) => {
                        not_after = na;
                        if let Ok(mut cur) = resolver.0.write() {
                            *cur = k;
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "renewing the server SVID failed"),
                }
            }
        })
    };

    let task = tokio::spawn(serve(listener, acceptor, app, shutdown));
    tracing::info!(%addr, "agent API listening");
    Ok(AgentListener {
        addr,
        stop,
        task,
        renewer,
    })
}

async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "agent API accept failed");
                    tokio::time::sleep(StdDuration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(StdDuration::from_secs(10), acceptor.accept(tcp))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %peer, "agent TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Arc::new(c.to_vec()));
            let svc = app.map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(PeerCert(leaf.clone()));
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
            let conn = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc))
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, %peer, "agent connection ended");
            }
        });
    }
    drop(listener);
    // watch streams end on the shutdown signal; others get a moment
    let _ = tokio::time::timeout(StdDuration::from_secs(5), graceful.shutdown()).await;
}
