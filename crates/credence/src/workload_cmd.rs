//! `credence workload`: a Workload API client, to check what a process on
//! this node receives (like `spire-agent api fetch`).

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;

use credence_agent::generated::workload as pb;
use credence_agent::generated::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

use crate::client::CliError;

#[derive(Subcommand)]
pub enum WorkloadCmd {
    /// Fetch this process's X509-SVIDs; optionally write them to DIR
    X509 {
        /// Write svid-N.pem, svid-N.key (0600) and bundle.pem here
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Fetch JWT-SVIDs for an audience
    Jwt {
        #[arg(long, required = true)]
        audience: Vec<String>,
        /// Only this SPIFFE ID
        #[arg(long)]
        spiffe_id: Option<String>,
    },
    /// Validate a JWT-SVID for an audience
    Validate {
        #[arg(long)]
        audience: String,
        token: String,
    },
}

fn socket_path(socket: Option<PathBuf>) -> Result<PathBuf, CliError> {
    if let Some(s) = socket {
        return Ok(s);
    }
    let env = std::env::var("SPIFFE_ENDPOINT_SOCKET").map_err(|_| {
        CliError("pass --socket or set SPIFFE_ENDPOINT_SOCKET=unix:///path/agent.sock".into())
    })?;
    env.strip_prefix("unix://")
        .or_else(|| env.strip_prefix("unix:"))
        .map(PathBuf::from)
        .ok_or_else(|| {
            CliError(format!(
                "SPIFFE_ENDPOINT_SOCKET {env:?} is not a unix:// address"
            ))
        })
}

fn status(s: tonic::Status) -> CliError {
    CliError(format!("{:?}: {}", s.code(), s.message()))
}

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        credence_agent::workload_api::SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    r
}

fn der_certs_pem(concat: &[u8]) -> Result<String, CliError> {
    // DER certificates back to back: split by each SEQUENCE's length
    let mut out = String::new();
    let mut rest = concat;
    while !rest.is_empty() {
        let (_, cert) = x509_parser::parse_x509_certificate(rest)
            .map_err(|e| CliError(format!("malformed certificate from the agent: {e}")))?;
        let len = cert.as_ref().len();
        let (one, tail) = rest.split_at(len.min(rest.len()));
        out.push_str(&pem::encode(&pem::Pem::new("CERTIFICATE", one.to_vec())));
        rest = tail;
    }
    Ok(out)
}

pub async fn run(
    cmd: WorkloadCmd,
    socket: Option<PathBuf>,
    json_mode: bool,
) -> Result<(), CliError> {
    let path = socket_path(socket)?;
    let channel = tonic::transport::Endpoint::try_from("http://localhost")
        .map_err(|e| CliError(e.to_string()))?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .map_err(|e| CliError(format!("cannot reach the Workload API: {e}")))?;
    let mut c = SpiffeWorkloadApiClient::new(channel);
    match cmd {
        WorkloadCmd::X509 { out } => {
            let mut s = c
                .fetch_x509svid(request(pb::X509svidRequest {}))
                .await
                .map_err(status)?
                .into_inner();
            let first = s
                .message()
                .await
                .map_err(status)?
                .ok_or_else(|| CliError("the stream ended without an answer".into()))?;
            let mut listed = Vec::new();
            for (i, svid) in first.svids.iter().enumerate() {
                let info = credence_ca::x509::svid_info(
                    x509_parser::parse_x509_certificate(&svid.x509_svid)
                        .map(|(_, c)| c.as_ref().to_vec())
                        .map_err(|e| CliError(e.to_string()))?
                        .as_slice(),
                )
                .map_err(|e| CliError(e.to_string()))?;
                listed.push(json!({
                    "spiffe_id": svid.spiffe_id,
                    "serial": info.serial,
                    "not_after": info.not_after.unix_timestamp(),
                }));
                if let Some(dir) = &out {
                    std::fs::create_dir_all(dir).map_err(|e| CliError(e.to_string()))?;
                    std::fs::write(
                        dir.join(format!("svid-{i}.pem")),
                        der_certs_pem(&svid.x509_svid)?,
                    )
                    .map_err(|e| CliError(e.to_string()))?;
                    let key = zeroize::Zeroizing::new(pem::encode(&pem::Pem::new(
                        "PRIVATE KEY",
                        svid.x509_svid_key.clone(),
                    )));
                    credence_server::config::write_private(
                        &dir.join(format!("svid-{i}.key")),
                        key.as_bytes(),
                    )
                    .map_err(|e| CliError(e.to_string()))?;
                    std::fs::write(dir.join("bundle.pem"), der_certs_pem(&svid.bundle)?)
                        .map_err(|e| CliError(e.to_string()))?;
                }
            }
            let v = json!({"svids": listed});
            if json_mode {
                println!("{v}");
            } else {
                for s in &listed {
                    println!(
                        "{}  serial {}",
                        s["spiffe_id"].as_str().unwrap_or(""),
                        s["serial"].as_str().unwrap_or("")
                    );
                }
            }
        }
        WorkloadCmd::Jwt {
            audience,
            spiffe_id,
        } => {
            let r = c
                .fetch_jwtsvid(request(pb::JwtsvidRequest {
                    audience,
                    spiffe_id: spiffe_id.unwrap_or_default(),
                }))
                .await
                .map_err(status)?
                .into_inner();
            for s in r.svids {
                if json_mode {
                    println!("{}", json!({"spiffe_id": s.spiffe_id, "token": s.svid}));
                } else {
                    println!("{}", s.svid);
                }
            }
        }
        WorkloadCmd::Validate { audience, token } => {
            let r = c
                .validate_jwtsvid(request(pb::ValidateJwtsvidRequest {
                    audience,
                    svid: token,
                }))
                .await
                .map_err(status)?
                .into_inner();
            println!("valid: {}", r.spiffe_id);
        }
    }
    Ok(())
}
