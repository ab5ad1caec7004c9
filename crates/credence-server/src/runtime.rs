//! Starting and stopping a server: storage, CA, HTTP listener (TLS or, on
//! loopback in dev mode only, plain HTTP), graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use credence_core::{Clock, Random, TrustDomain};
use credence_store::{Durability, SqliteStore, Store};

use crate::ServerError;
use crate::api::{AppState, router};
use crate::authority::CaLifetimes;
use crate::service::{IssuancePolicy, Service};

/// TLS material for the API listener.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Everything needed to run one server.
pub struct Options {
    pub trust_domain: TrustDomain,
    pub listen: SocketAddr,
    pub db_path: PathBuf,
    pub durability: Durability,
    pub kek: Zeroizing<Vec<u8>>,
    pub admin_token: Zeroizing<String>,
    /// `None` means plain HTTP, which is accepted only on a loopback address.
    pub tls: Option<TlsFiles>,
    pub public_url: Option<String>,
    pub lifetimes: CaLifetimes,
    pub policy: IssuancePolicy,
    pub clock: Arc<dyn Clock>,
    pub rng: Arc<dyn Random>,
    /// How often a checkpoint of the audit log is signed while it grows.
    pub checkpoint_interval: std::time::Duration,
    /// Where the agent API (mTLS, for node agents) listens; `None`: off.
    pub agent_listen: Option<SocketAddr>,
    /// One PDP allow in this many is audited (0: none); denies always are.
    pub pdp_allow_sample: u64,
    /// `spiffe_refresh_hint` of the served bundle; `None`: half the default
    /// X509-SVID lifetime.
    pub bundle_refresh_hint: Option<std::time::Duration>,
    /// External OIDC issuers whose tokens trust rules may exchange.
    pub external_issuers: Vec<crate::oidc::ExternalIssuer>,
}

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    pub base_url: String,
    pub service: Arc<Service>,
    /// The agent API's address, when it is on.
    pub agent_addr: Option<SocketAddr>,
    agent_api: Option<crate::agent_api::AgentListener>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
    checkpointer: JoinHandle<()>,
    refresher: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, closes the store.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(a) = self.agent_api.take() {
            a.shutdown().await;
        }
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let r = match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(ServerError::Internal(format!("server task failed: {e}"))),
        };
        // decisions answered before the stop are recorded, then a last
        // checkpoint covers everything committed
        self.service.decision_log.flush().await;
        self.checkpointer.abort();
        self.refresher.abort();
        if let Err(e) = self.service.checkpoint().await {
            tracing::error!(error = %e, "final audit checkpoint failed");
        }
        self.service.store.close().await;
        r
    }

    /// Waits until the server stops by itself (an I/O error).
    pub async fn wait(&mut self) -> Result<(), ServerError> {
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(ServerError::Internal(format!("server task failed: {e}"))),
        }
    }
}

fn tls_config(files: &TlsFiles) -> Result<rustls::ServerConfig, ServerError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert_file)
        .map_err(|e| {
            ServerError::bad(
                "invalid_config",
                format!("TLS certificate file {}: {e}", files.cert_file.display()),
            )
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            ServerError::bad(
                "invalid_config",
                format!("TLS certificate file {}: {e}", files.cert_file.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(ServerError::bad(
            "invalid_config",
            format!("no certificate in {}", files.cert_file.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_file).map_err(|e| {
        ServerError::bad(
            "invalid_config",
            format!("TLS key file {}: {e}", files.key_file.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Internal(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::bad("invalid_config", format!("TLS certificate/key: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Opens storage, loads or creates the CA, binds the listener and serves.
pub async fn start(opts: Options) -> Result<Running, ServerError> {
    let tls = match &opts.tls {
        Some(f) => Some(tls_config(f)?),
        None if opts.listen.ip().is_loopback() => None,
        None => {
            return Err(ServerError::bad(
                "insecure_listen",
                format!(
                    "plain HTTP is allowed only on loopback, not {}; configure TLS",
                    opts.listen
                ),
            ));
        }
    };
    // a bad issuer is refused before anything is created on disk
    crate::oidc::Issuers::new(opts.external_issuers.clone())
        .map_err(|e| ServerError::bad("invalid_config", e.to_string()))?;
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&opts.db_path, opts.durability)
            .await
            .map_err(ServerError::from)?,
    );
    let svc = Arc::new(
        Service::start(
            store,
            &opts.kek,
            &opts.trust_domain,
            opts.lifetimes,
            opts.policy,
            opts.public_url.clone(),
            opts.clock,
            opts.rng,
        )
        .await?,
    );
    svc.load_policies().await?;
    svc.load_federations().await?;
    svc.set_decision_audit_allows(opts.pdp_allow_sample);
    svc.set_external_issuers(opts.external_issuers.clone())?;
    let std_listener = std::net::TcpListener::bind(opts.listen)
        .map_err(|e| ServerError::Unavailable(format!("cannot listen on {}: {e}", opts.listen)))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| ServerError::Internal(e.to_string()))?;
    let addr = std_listener
        .local_addr()
        .map_err(|e| ServerError::Internal(e.to_string()))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let base_url = opts
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"));
    let state = AppState {
        svc: svc.clone(),
        admin_token_hash: Service::token_hash(&opts.admin_token),
        base_url: base_url.clone(),
        bundle_refresh_hint: opts.bundle_refresh_hint,
    };
    let app = router(state);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = match tls {
        None => {
            let listener = tokio::net::TcpListener::from_std(std_listener)
                .map_err(|e| ServerError::Internal(e.to_string()))?;
            tokio::spawn(async move {
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.await;
                })
                .await
                .map_err(|e| ServerError::Internal(format!("HTTP server: {e}")))
            })
        }
        Some(cfg) => {
            let handle = axum_server::Handle::new();
            let h2 = handle.clone();
            tokio::spawn(async move {
                let _ = stop_rx.await;
                h2.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            });
            let rustls_cfg = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(cfg));
            let server = axum_server::from_tcp_rustls(std_listener, rustls_cfg)
                .map_err(|e| ServerError::Internal(e.to_string()))?
                .handle(handle);
            tokio::spawn(async move {
                server
                    .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                    .await
                    .map_err(|e| ServerError::Internal(format!("HTTPS server: {e}")))
            })
        }
    };
    let checkpointer = {
        let svc = svc.clone();
        let every = opts
            .checkpoint_interval
            .max(std::time::Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = svc.checkpoint().await {
                    tracing::error!(error = %e, "audit checkpoint failed");
                }
            }
        })
    };
    let refresher = crate::federation::start_refresher(svc.clone());
    let agent_api = match opts.agent_listen {
        Some(a) => Some(crate::agent_api::start(svc.clone(), a, base_url.clone()).await?),
        None => None,
    };
    tracing::info!(%addr, %base_url, "serving");
    Ok(Running {
        agent_addr: agent_api.as_ref().map(|a| a.addr),
        agent_api,
        checkpointer,
        refresher,
        addr,
        base_url,
        service: svc,
        stop: Some(stop_tx),
        task,
    })
}
