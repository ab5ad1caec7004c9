//! `credence`: one binary for the server (`dev`, `server`) and its admin CLI.

mod agent_cmd;
mod audit_cmd;
mod bench;
mod bench_agent;
mod bench_policy;
mod client;
mod commands;
mod dev_agent;
mod policy_cmd;
mod workload_cmd;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use client::CliError;

// Issuance allocates many small buffers across threads; mimalloc handles
// that pattern markedly better than glibc malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "credence",
    version,
    about = "Identity for workloads, services, devices and AI agents",
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: Cmd,
}

/// How admin commands reach the server.
#[derive(Args, Clone)]
pub struct Conn {
    /// Server URL
    #[arg(long, env = "CREDENCE_ADDR", global = true)]
    pub addr: Option<String>,
    /// Admin bearer token
    #[arg(long, env = "CREDENCE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Dev data directory (admin commands read its addr and admin.token)
    #[arg(long, env = "CREDENCE_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// PEM file of CA certificates to trust for the server's TLS certificate
    #[arg(long, env = "CREDENCE_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run an all-in-one development server on embedded SQLite (plain HTTP on loopback)
    Dev(DevArgs),
    /// Run the production server (TLS) from a config file
    Server {
        /// Path of the TOML config file (see conf/server.toml)
        #[arg(long)]
        config: PathBuf,
    },
    /// Manage registered identities
    #[command(subcommand)]
    Identity(commands::IdentityCmd),
    /// Issue X509-SVIDs
    #[command(subcommand)]
    X509(commands::X509Cmd),
    /// Issue JWT-SVIDs
    #[command(subcommand)]
    Jwt(commands::JwtCmd),
    /// Revoke a credential or every live credential of an identity
    Revoke(commands::RevokeArgs),
    /// Show or rotate the certificate authority
    #[command(subcommand)]
    Ca(commands::CaCmd),
    /// The JWT signing key (JWT-SVIDs, access tokens)
    #[command(subcommand)]
    JwtKey(commands::JwtKeyCmd),
    /// Cedar policy sets and the AuthZEN PDP: validate, push, activate, entities, test
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCmd),
    /// Named administrators with their own tokens and teams
    #[command(subcommand)]
    Admin(commands::AdminCmd),
    /// Nodes: join tokens, list, show, evict
    #[command(subcommand)]
    Node(commands::NodeCmd),
    /// SPIFFE federation: trust foreign trust domains' bundles
    #[command(subcommand)]
    Federation(commands::FederationCmd),
    /// Run the node agent: attest, then serve the SPIFFE Workload API
    Agent(agent_cmd::AgentArgs),
    /// Ask the Workload API what this process gets (X509-SVIDs, JWT-SVIDs)
    Workload {
        /// The agent's socket (default: $SPIFFE_ENDPOINT_SOCKET)
        #[arg(long)]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        cmd: workload_cmd::WorkloadCmd,
    },
    /// Fetch the current CRL (DER) of the active intermediate
    Crl {
        /// Write to this file instead of stdout
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Read, search, prove, export and verify the tamper-evident audit log
    #[command(subcommand)]
    Audit(audit_cmd::AuditCmd),
    /// Measure issuance throughput and latency against the raw crypto floor
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

#[derive(Args)]
struct DevArgs {
    /// Address to listen on (loopback only in dev mode)
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// SPIFFE trust domain
    #[arg(long, default_value = "example.org")]
    trust_domain: String,
    /// SQLite durability: normal (default) or full
    #[arg(long, default_value = "normal")]
    durability: String,
    /// Address of the agent API for `credence agent` (mTLS), or `off`
    #[arg(long, default_value = "127.0.0.1:8081")]
    agent_listen: String,
    /// Lifetime of node agents' own X509-SVIDs (renewed at half-life)
    #[arg(long, default_value = "1h")]
    agent_svid_ttl: String,
    /// Audit one PDP allow in N (0: none, 1: all); every deny is audited
    #[arg(long, default_value_t = credence_server::authzen_api::ALLOW_SAMPLE)]
    pdp_allow_sample: u64,
    /// `spiffe_refresh_hint` of the served bundle, e.g. 5m (default: half
    /// the default X509-SVID lifetime); federated peers refetch this often
    #[arg(long)]
    bundle_refresh_hint: Option<String>,
    /// JSON file: a list of external OIDC issuers whose tokens trust rules
    /// may exchange (see docs/oauth.md)
    #[arg(long)]
    external_issuers: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    let res = rt.block_on(run(cli));
    if let Err(e) = res {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.cmd {
        Cmd::Dev(a) => {
            init_tracing();
            let data_dir = cli
                .conn
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(".credence"));
            let agent_listen = match a.agent_listen.as_str() {
                "off" => None,
                s => Some(s.parse().map_err(|e| {
                    CliError(format!("--agent-listen {s:?}: {e} (an address, or off)"))
                })?),
            };
            let agent_svid_ttl = humantime::parse_duration(&a.agent_svid_ttl)
                .ok()
                .and_then(|d| time::Duration::try_from(d).ok())
                .filter(|d| *d >= time::Duration::seconds(2))
                .ok_or_else(|| {
                    CliError(format!(
                        "--agent-svid-ttl {:?}: expected a duration of at least 2s, e.g. 1h",
                        a.agent_svid_ttl
                    ))
                })?;
            let bundle_refresh_hint = a
                .bundle_refresh_hint
                .as_deref()
                .map(|h| {
                    humantime::parse_duration(h)
                        .ok()
                        .filter(|d| *d >= std::time::Duration::from_secs(1))
                        .ok_or_else(|| {
                            CliError(format!(
                                "--bundle-refresh-hint {h:?}: expected a duration of at least 1s"
                            ))
                        })
                })
                .transpose()?;
            commands::dev(
                data_dir,
                a.listen,
                agent_listen,
                commands::DevTuning {
                    agent_svid_ttl,
                    pdp_allow_sample: a.pdp_allow_sample,
                    bundle_refresh_hint,
                    external_issuers: a.external_issuers,
                },
                &a.trust_domain,
                &a.durability,
            )
            .await
        }
        Cmd::Server { config } => {
            init_tracing();
            commands::server(&config).await
        }
        Cmd::Bench(b) => bench::run(b).await,
        // offline validation needs no server
        Cmd::Policy(policy_cmd::PolicyCmd::Validate { schema, policies }) => {
            policy_cmd::validate(&schema, &policies)
        }
        Cmd::Workload { socket, cmd } => workload_cmd::run(cmd, socket, cli.conn.json).await,
        Cmd::Agent(a) => {
            init_tracing();
            agent_cmd::run(a, cli.conn.data_dir.clone()).await
        }
        // offline bundle verification needs no server
        Cmd::Audit(audit_cmd::AuditCmd::Verify {
            log_key,
            bundle: Some(bundle),
            since_checkpoint,
        }) => {
            audit_cmd::run(
                None,
                audit_cmd::AuditCmd::Verify {
                    log_key,
                    bundle: Some(bundle),
                    since_checkpoint,
                },
                cli.conn.json,
            )
            .await
        }
        other => {
            let client = client::Client::new(
                cli.conn.addr.clone(),
                cli.conn.token.clone(),
                cli.conn.data_dir.as_deref(),
                cli.conn.ca_file.as_ref(),
            )?;
            let json = cli.conn.json;
            match other {
                Cmd::Identity(c) => commands::identity(&client, c, json).await,
                Cmd::X509(c) => commands::x509(&client, c, json).await,
                Cmd::Jwt(c) => commands::jwt(&client, c, json).await,
                Cmd::Revoke(a) => commands::revoke(&client, a, json).await,
                Cmd::Ca(c) => commands::ca(&client, c, json).await,
                Cmd::JwtKey(c) => commands::jwt_key(&client, c, json).await,
                Cmd::Node(c) => commands::node(&client, c, json).await,
                Cmd::Admin(c) => commands::admin(&client, c, json).await,
                Cmd::Federation(c) => commands::federation(&client, c, json).await,
                Cmd::Policy(c) => policy_cmd::run(&client, c, json).await,
                Cmd::Crl { out } => commands::crl(&client, out).await,
                Cmd::Audit(a) => audit_cmd::run(Some(&client), a, json).await,
                Cmd::Dev(_)
                | Cmd::Server { .. }
                | Cmd::Bench(_)
                | Cmd::Agent(_)
                | Cmd::Workload { .. } => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap checks a command's definition only when that command is built;
    /// this builds them all, so a clash (e.g. an argument named `version`)
    /// fails here instead of in a user's hands.
    #[test]
    fn every_command_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
