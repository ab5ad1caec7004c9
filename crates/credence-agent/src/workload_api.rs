//! The SPIFFE Workload API served over a Unix socket.
//!
//! Every call must carry the `workload.spiffe.io: true` metadata (the
//! SPIFFE Workload API's guard against browsers and proxies). The caller is
//! attested from the socket's peer credentials ([`crate::attest`]); a caller
//! that matches no identity gets `PermissionDenied`. Streams push a new
//! message whenever the [`Provider`] signals a change (rotation,
//! registration change, revocation) and end when the client goes away.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use credence_core::Selector;

use crate::attest::{Attestor, PeerCred};
use crate::generated::workload as pb;
use crate::generated::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use crate::h2_authority::AuthorityFix;

/// The metadata key every Workload API call must carry with value `true`.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// One X509-SVID ready for a workload.
#[derive(Clone, PartialEq, Eq)]
pub struct X509Material {
    pub spiffe_id: String,
    /// Leaf first, then intermediates, DER concatenated.
    pub chain_der: Vec<u8>,
    /// PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
    /// The trust domain's CA certificates, DER concatenated (shared by
    /// every SVID of the cache).
    pub bundle_der: Arc<Vec<u8>>,
    pub hint: String,
}

impl std::fmt::Debug for X509Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Material")
            .field("spiffe_id", &self.spiffe_id)
            .finish_non_exhaustive()
    }
}

/// One JWT-SVID ready for a workload.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtMaterial {
    pub spiffe_id: String,
    pub token: String,
    pub hint: String,
}

/// Where the Workload API gets credentials from (the agent's cache).
pub trait Provider: Send + Sync + 'static {
    /// X509-SVIDs of every identity whose selectors the workload matches.
    fn x509_svids(&self, selectors: &[Selector]) -> Vec<X509Material>;
    /// X.509 bundles (concatenated DER) by trust domain ID (`spiffe://td`):
    /// the agent's own, and those of the foreign trust domains the
    /// identities of a workload with these selectors federate with.
    fn x509_bundles(&self, selectors: &[Selector]) -> HashMap<String, Vec<u8>>;
    /// JWKS documents by trust domain ID, chosen as for [`Provider::x509_bundles`].
    fn jwt_bundles(&self, selectors: &[Selector]) -> HashMap<String, Vec<u8>>;
    /// The agent's own trust domain ID.
    fn trust_domain_id(&self) -> String;
    /// CRLs (DER) to hand to workloads.
    fn crls(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }
    /// Bumped on every change of what the methods above return.
    fn changes(&self) -> watch::Receiver<u64>;
    /// JWT-SVIDs for `audience` of every identity the workload matches (or
    /// only `spiffe_id`); `Err` is a message for an `Unavailable` status.
    fn jwt_svids(
        &self,
        selectors: Vec<Selector>,
        audience: Vec<String>,
        spiffe_id: Option<String>,
    ) -> futures::future::BoxFuture<'_, Result<Vec<JwtMaterial>, String>> {
        let _ = (selectors, audience, spiffe_id);
        Box::pin(async { Err("this agent does not issue JWT-SVIDs".to_owned()) })
    }
}

/// The Workload API service.
pub struct WorkloadApi<P> {
    provider: Arc<P>,
    attestor: Arc<Attestor>,
}

impl<P: Provider> WorkloadApi<P> {
    pub fn new(provider: Arc<P>) -> Self {
        Self {
            provider,
            attestor: Arc::new(Attestor::new()),
        }
    }

    pub fn into_server(self) -> SpiffeWorkloadApiServer<Self> {
        SpiffeWorkloadApiServer::new(self)
    }

    /// The security header must be present; the caller's selectors.
    fn attest<T>(&self, req: &Request<T>) -> Result<Vec<Selector>, Status> {
        check_header(req)?;
        self.attestor
            .selectors(peer(req)?)
            .map_err(|e| Status::permission_denied(e.to_string()))
    }
}

fn entitled<P: Provider>(provider: &P, selectors: &[Selector]) -> Result<(), Status> {
    if provider.x509_svids(selectors).is_empty() {
        Err(Status::permission_denied(
            "no identity issued to this workload",
        ))
    } else {
        Ok(())
    }
}

fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req.metadata().get(SECURITY_HEADER) {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

fn peer<T>(req: &Request<T>) -> Result<PeerCred, Status> {
    let cred = req
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .ok_or_else(|| Status::permission_denied("the caller's credentials are unavailable"))?;
    Ok(PeerCred {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
    })
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Streams `compute()` now and after every change, skipping repeats, until
/// the client goes away. `compute` returning an error ends the stream.
fn watch_stream<T, F>(mut changes: watch::Receiver<u64>, compute: F) -> BoxStream<T>
where
    T: Clone + PartialEq + Send + 'static,
    F: Fn() -> Result<T, Status> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<T, Status>>(4);
    tokio::spawn(async move {
        let mut last: Option<T> = None;
        loop {
            match compute() {
                Ok(v) => {
                    if last.as_ref() != Some(&v) {
                        last = Some(v.clone());
                        if tx.send(Ok(v)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(s) => {
                    let _ = tx.send(Err(s)).await;
                    return;
                }
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                () = tx.closed() => return,
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl<P: Provider> SpiffeWorkloadApi for WorkloadApi<P> {
    type FetchX509SVIDStream = BoxStream<pb::X509svidResponse>;
    type FetchX509BundlesStream = BoxStream<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = BoxStream<pb::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let selectors = self.attest(&req)?;
        let provider = self.provider.clone();
        let changes = provider.changes();
        let stream = watch_stream(changes, move || {
            let svids = provider.x509_svids(&selectors);
            if svids.is_empty() {
                return Err(Status::permission_denied(
                    "no identity issued to this workload",
                ));
            }
            let mut federated = provider.x509_bundles(&selectors);
            federated.remove(&provider.trust_domain_id());
            Ok(pb::X509svidResponse {
                svids: svids
                    .into_iter()
                    .map(|m| pb::X509svid {
                        spiffe_id: m.spiffe_id,
                        x509_svid: m.chain_der,
                        x509_svid_key: m.key_pkcs8,
                        bundle: m.bundle_der.as_ref().clone(),
                        hint: m.hint,
                    })
                    .collect(),
                crl: provider.crls(),
                federated_bundles: federated,
            })
        });
        Ok(Response::new(stream))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        // bundles are public, but only attested workloads may ask
        let selectors = self.attest(&req)?;
        let provider = self.provider.clone();
        let stream = watch_stream(provider.changes(), move || {
            entitled(provider.as_ref(), &selectors)?;
            Ok(pb::X509BundlesResponse {
                crl: provider.crls(),
                bundles: provider.x509_bundles(&selectors),
            })
        });
        Ok(Response::new(stream))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let selectors = self.attest(&req)?;
        let provider = self.provider.clone();
        let stream = watch_stream(provider.changes(), move || {
            entitled(provider.as_ref(), &selectors)?;
            Ok(pb::JwtBundlesResponse {
                bundles: provider.jwt_bundles(&selectors),
            })
        });
        Ok(Response::new(stream))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        let selectors = self.attest(&req)?;
        let req = req.into_inner();
        if req.audience.is_empty() || req.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument(
                "audience must name at least one non-empty audience",
            ));
        }
        if req.audience.len() > 32 || req.audience.iter().any(|a| a.len() > 512) {
            return Err(Status::invalid_argument(
                "at most 32 audiences of at most 512 bytes",
            ));
        }
        let want = (!req.spiffe_id.is_empty()).then_some(req.spiffe_id);
        let svids = self
            .provider
            .jwt_svids(selectors, req.audience, want)
            .await
            .map_err(Status::unavailable)?;
        if svids.is_empty() {
            return Err(Status::permission_denied(
                "no identity issued to this workload",
            ));
        }
        Ok(Response::new(pb::JwtsvidResponse {
            svids: svids
                .into_iter()
                .map(|m| pb::Jwtsvid {
                    spiffe_id: m.spiffe_id,
                    svid: m.token,
                    hint: m.hint,
                })
                .collect(),
        }))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        let selectors = self.attest(&req)?;
        entitled(self.provider.as_ref(), &selectors)?;
        let req = req.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must not be empty"));
        }
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must not be empty"));
        }
        let (spiffe_id, claims) = crate::jwt::validate(
            &req.svid,
            &req.audience,
            &self.provider.jwt_bundles(&selectors),
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::ValidateJwtsvidResponse {
            spiffe_id,
            claims: Some(claims),
        }))
    }
}

/// Creates the socket's directory (0755) if missing, and refuses one that
/// other users may write to: they could replace the socket with their own
/// and impersonate the agent to every workload.
pub fn prepare_socket_dir(path: &Path) -> Result<(), std::io::Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
    }
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "socket directory {} is writable by other users (mode {:o}); use a directory only the agent can write, e.g. /run/credence with mode 0755",
                dir.display(),
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Serves the Workload API on a Unix socket at `path` until `shutdown`
/// resolves. A stale socket file is replaced. The socket is made
/// connectable by every local user (0666): access is decided by attestation
/// of the caller, not by file permissions; keep its directory writable by
/// the agent only, so the socket cannot be replaced.
pub async fn serve<P: Provider>(
    path: &Path,
    provider: Arc<P>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), std::io::Error> {
    prepare_socket_dir(path)?;
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    // grpc C-core clients send an `:authority` h2 would reject.
    let incoming = UnixListenerStream::new(listener).map(|r| r.map(AuthorityFix::new));
    let result = tonic::transport::Server::builder()
        .add_service(WorkloadApi::new(provider).into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(std::io::Error::other);
    let _ = std::fs::remove_file(path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_dir_must_not_be_writable_by_others() {
        let d = tempfile::tempdir().unwrap();
        let open = d.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare_socket_dir(&open.join("agent.sock")).unwrap_err();
        assert!(e.to_string().contains("writable by other users"), "{e}");
        let fresh = d.path().join("run/credence/agent.sock");
        prepare_socket_dir(&fresh).unwrap();
        let mode = std::fs::metadata(d.path().join("run/credence"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}
