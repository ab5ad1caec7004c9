//! `credence agent`: the node agent as its own process.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use credence_agent::remote::RemoteConfig;
use credence_agent::upstream::AgentError;
use credence_core::TrustDomain;

use crate::client::CliError;

#[derive(Args)]
pub struct AgentArgs {
    /// TOML config file (see conf/agent.toml); flags override it
    #[arg(long)]
    config: Option<PathBuf>,
    /// The server's agent API, e.g. https://credence.example.org:8081
    #[arg(long, env = "CREDENCE_AGENT_SERVER")]
    server: Option<String>,
    /// Where to serve the Workload API (default: DATA_DIR/agent.sock)
    #[arg(long)]
    socket: Option<PathBuf>,
    /// One-time join token for the first attestation
    #[arg(long, env = "CREDENCE_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// Instead of a join token: a file with a token of an external OIDC
    /// issuer the server trusts for node attestation (a CI job's or a
    /// Kubernetes pod's), read when attesting
    #[arg(long, env = "CREDENCE_OIDC_TOKEN_FILE")]
    oidc_token_file: Option<PathBuf>,
    /// PEM trust bundle to verify the server on first attestation
    #[arg(long)]
    trust_bundle: Option<PathBuf>,
    /// Trust domain (default: read from the trust bundle)
    #[arg(long)]
    trust_domain: Option<String>,
}

/// conf/agent.toml
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    server: Option<String>,
    trust_domain: Option<String>,
    data_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    trust_bundle: Option<PathBuf>,
    join_token_file: Option<PathBuf>,
    oidc_token_file: Option<PathBuf>,
}

fn err(e: impl std::fmt::Display) -> CliError {
    CliError(e.to_string())
}

/// The trust domain named by the first root of a PEM bundle file.
fn trust_domain_of_bundle(path: &Path) -> Option<String> {
    let text = std::fs::read(path).ok()?;
    let blocks = pem::parse_many(&text).ok()?;
    blocks
        .iter()
        .find_map(|b| credence_ca::x509::trust_domain_of(b.contents()))
}

pub async fn run(a: AgentArgs, data_dir: Option<PathBuf>) -> Result<(), CliError> {
    let file: AgentFile = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| CliError(format!("{}: {e}", p.display())))?;
            toml::from_str(&text).map_err(|e| CliError(format!("{}: {e}", p.display())))?
        }
        None => AgentFile::default(),
    };
    let data_dir = data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from(".credence-agent"));
    let server = a.server.or(file.server).ok_or_else(|| {
        CliError("--server (the agent API URL, e.g. https://127.0.0.1:8081) is required".into())
    })?;
    let server = server.trim_end_matches('/').to_owned();
    if !server.starts_with("https://") {
        return Err(CliError(format!(
            "--server {server:?}: the agent API is always https://"
        )));
    }
    let join_token = match (a.join_token, file.join_token_file) {
        (Some(t), _) => Some(t),
        (None, Some(p)) => Some(
            std::fs::read_to_string(&p)
                .map_err(|e| CliError(format!("{}: {e}", p.display())))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let trust_bundle = a.trust_bundle.or(file.trust_bundle);
    let td = match a.trust_domain.or(file.trust_domain) {
        Some(t) => t,
        None => trust_bundle
            .as_deref()
            .and_then(trust_domain_of_bundle)
            .or_else(|| trust_domain_of_bundle(&data_dir.join("bundle.pem")))
            .ok_or_else(|| {
                CliError(
                    "cannot tell the trust domain: pass --trust-domain or --trust-bundle".into(),
                )
            })?,
    };
    let td: TrustDomain = td.parse().map_err(err)?;
    let socket = a
        .socket
        .or(file.socket)
        .unwrap_or_else(|| data_dir.join("agent.sock"));
    let remote = RemoteConfig {
        server,
        trust_domain: td,
        data_dir,
        join_token,
        oidc_token_file: a.oidc_token_file.or(file.oidc_token_file),
        trust_bundle,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = stop_tx.send(true);
    });
    println!("SPIFFE_ENDPOINT_SOCKET=unix://{}", socket.display());
    match credence_agent::run_standalone(remote, socket, stop_rx).await {
        Ok(()) => Ok(()),
        Err(AgentError::Refused(m)) => Err(CliError(format!(
            "the server refused this agent ({m}); attest again with a new join token"
        ))),
        Err(e) => Err(err(e)),
    }
}
