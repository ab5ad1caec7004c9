//! The Credence node agent.
//!
//! - [`agent`]: the cache of workload credentials (keys made here, CSRs
//!   signed by the server), rotation at half-life, refresh on every change
//!   the server pushes, backoff while it is unreachable.
//! - [`upstream`]: what the agent needs from a server; [`remote`]: the
//!   standalone agent's mTLS link to the agent API (join-token attestation,
//!   persisted and renewed agent SVID, the watch stream).
//! - [`jwt`]: JWT-SVID validation for `ValidateJWTSVID`.
//! - [`attest`]: workload attestation from the Unix socket's peer
//!   credentials (uid, gid, pid → executable path and SHA-256) into
//!   `unix:*` selectors, and the selector matching rule.
//! - [`generated`]: the SPIFFE Workload API (`workload.proto`, vendored)
//!   compiled to Rust; regenerated and checked by the `codegen` test.
//! - [`h2_authority`]: a socket wrapper that rewrites `%` in HTTP/2
//!   `:authority` so grpc C-core clients (py-spiffe) get past h2.
//! - [`workload_api`]: the Workload API service on a Unix socket: header
//!   check, attestation, streams that push on change.

pub mod agent;
pub mod attest;
pub mod generated;
pub mod h2_authority;
pub mod jwt;
pub mod remote;
pub mod upstream;
pub mod workload_api;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::agent::Agent;
use crate::remote::{RemoteConfig, RemoteUpstream};
use crate::upstream::AgentError;

/// Runs the standalone agent until `stop` fires: attests (or re-attests
/// with the persisted SVID), serves the Workload API on `socket`, keeps the
/// cache current. Returns `Refused` when the server evicts the node (the
/// persisted SVID is then forgotten).
pub async fn run_standalone(
    remote: RemoteConfig,
    socket: PathBuf,
    stop: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let up = RemoteUpstream::connect(remote).await?;
    if let Some(id) = up.spiffe_id() {
        tracing::info!(spiffe_id = %id, socket = %socket.display(), "agent starting");
    }
    let agent = Agent::new(up.clone());
    if let Err(e) = agent.refresh().await {
        tracing::warn!(error = %e, "first sync failed; retrying in the background");
    }
    let watcher = tokio::spawn(up.clone().watch(stop.clone()));
    let renewer = tokio::spawn(up.clone().renew_loop(stop.clone()));
    let (stop_socket, socket_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let agent: Arc<Agent<Arc<RemoteUpstream>>> = agent.clone();
        let socket = socket.clone();
        tokio::spawn(async move {
            workload_api::serve(&socket, agent, async {
                let _ = socket_stopped.await;
            })
            .await
        })
    };
    let result = agent.run(stop).await;
    if matches!(result, Err(AgentError::Refused(_))) {
        up.forget();
        // let open streams deliver PermissionDenied before the socket goes
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let _ = stop_socket.send(());
    watcher.abort();
    renewer.abort();
    match server.await {
        Ok(Err(e)) => tracing::error!(error = %e, "Workload API stopped"),
        Err(e) => tracing::error!(error = %e, "Workload API task failed"),
        Ok(Ok(())) => {}
    }
    result
}
