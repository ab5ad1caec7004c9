//! Subcommand implementations.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use credence_core::{SystemClock, TrustDomain};
use credence_server::authority::CaLifetimes;
use credence_server::config::{DataDir, ServerConfig, parse_durability, write_private};
use credence_server::runtime::{self, Options, Running};
use credence_server::service::IssuancePolicy;

use crate::client::{CliError, Client, enc};

fn cli_err(e: impl std::fmt::Display) -> CliError {
    CliError(e.to_string())
}

// ---- dev and server ----

/// Settings of `credence dev` beyond where it listens.
pub struct DevTuning {
    pub agent_svid_ttl: time::Duration,
    pub pdp_allow_sample: u64,
    pub bundle_refresh_hint: Option<std::time::Duration>,
    pub external_issuers: Option<PathBuf>,
}

pub async fn dev(
    dir: PathBuf,
    listen: SocketAddr,
    agent_listen: Option<SocketAddr>,
    tuning: DevTuning,
    trust_domain: &str,
    durability: &str,
) -> Result<(), CliError> {
    let DevTuning {
        agent_svid_ttl,
        pdp_allow_sample,
        bundle_refresh_hint,
        external_issuers,
    } = tuning;
    let external_issuers: Vec<credence_server::oidc::ExternalIssuer> = match external_issuers {
        Some(f) => {
            let text = std::fs::read_to_string(&f)
                .map_err(|e| CliError(format!("{}: {e}", f.display())))?;
            serde_json::from_str(&text).map_err(|e| CliError(format!("{}: {e}", f.display())))?
        }
        None => Vec::new(),
    };
    let td: TrustDomain = trust_domain.parse().map_err(cli_err)?;
    if !listen.ip().is_loopback() {
        return Err(CliError(format!(
            "dev mode serves plain HTTP and listens on loopback only, not {listen}; use `credence server` with TLS"
        )));
    }
    let data = DataDir::new(&dir);
    let rng = credence_ca::SystemRandom;
    let (admin_token, kek) = data.prepare(&rng).map_err(cli_err)?;
    let running = runtime::start(Options {
        trust_domain: td.clone(),
        listen,
        db_path: data.db(),
        durability: parse_durability(Some(durability)).map_err(cli_err)?,
        kek,
        admin_token,
        tls: None,
        public_url: None,
        lifetimes: CaLifetimes::default(),
        policy: IssuancePolicy {
            agent_svid_ttl,
            ..IssuancePolicy::default()
        },
        clock: Arc::new(SystemClock),
        rng: Arc::new(rng),
        checkpoint_interval: std::time::Duration::from_secs(1),
        agent_listen,
        pdp_allow_sample,
        bundle_refresh_hint,
        external_issuers,
    })
    .await
    .map_err(cli_err)?;
    let bundle = running.service.authority().bundle_pem().to_owned();
    data.publish(&bundle, &running.base_url).map_err(cli_err)?;
    // the in-process agent: SPIFFE Workload API on DIR/agent.sock
    let upstream =
        crate::dev_agent::LocalUpstream::new(running.service.clone()).map_err(cli_err)?;
    let agent = credence_agent::agent::Agent::new(upstream);
    let (stop_cache, cache_stop) = tokio::sync::watch::channel(false);
    {
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(e) = agent.run(cache_stop).await {
                tracing::error!(error = %e, "dev agent stopped");
            }
        });
    }
    let sock = data.agent_sock();
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_task = {
        let sock = sock.clone();
        tokio::spawn(async move {
            if let Err(e) = credence_agent::workload_api::serve(&sock, agent, async {
                let _ = agent_stopped.await;
            })
            .await
            {
                tracing::error!(error = %e, socket = %sock.display(), "Workload API stopped");
            }
        })
    };
    let abs = std::fs::canonicalize(&dir).unwrap_or(dir.clone());
    let d = abs.display();
    let url = &running.base_url;
    println!("Credence dev server for trust domain {td}");
    println!("  API:          {url}");
    println!("  Health:       {url}/healthz");
    println!("  SPIFFE bundle:{url}/bundle   (PEM: {d}/bundle.pem)");
    println!("  OIDC:         {url}/.well-known/openid-configuration");
    println!("  Admin token:  {d}/admin.token");
    println!("  Database:     {d}/credence.db");
    println!("  Workload API: {d}/agent.sock");
    if let Some(a) = running.agent_addr {
        println!("  Agent API:    https://{a}   (for `credence agent`)");
        std::fs::write(data.path.join("agent-addr"), a.to_string()).map_err(cli_err)?;
    }
    println!();
    println!("Use it from another shell:");
    println!("  export CREDENCE_ADDR={url}");
    println!("  export CREDENCE_TOKEN=$(cat {d}/admin.token)");
    println!("  # or pass --data-dir {d} to any admin command");
    println!("  export SPIFFE_ENDPOINT_SOCKET=unix://{d}/agent.sock");
    let _ = std::io::stdout().flush();
    let r = serve_until_signal(running).await;
    let _ = stop_agent.send(());
    let _ = stop_cache.send(true);
    let _ = agent_task.await;
    r
}

pub async fn server(config: &Path) -> Result<(), CliError> {
    let cfg = ServerConfig::from_file(config).map_err(cli_err)?;
    let opts = cfg.into_options().map_err(cli_err)?;
    let running = runtime::start(opts).await.map_err(cli_err)?;
    println!("Credence server listening on {}", running.base_url);
    let _ = std::io::stdout().flush();
    serve_until_signal(running).await
}

async fn serve_until_signal(mut running: Running) -> Result<(), CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(cli_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(cli_err)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        r = running.wait() => return r.map_err(cli_err),
    }
    tracing::info!("shutting down");
    running.shutdown().await.map_err(cli_err)?;
    tracing::info!("stopped");
    Ok(())
}

// ---- identity ----

#[derive(Subcommand)]
pub enum IdentityCmd {
    /// Register a new identity
    Create(IdentityFields),
    /// List identities (filters combine)
    List {
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        status: Option<String>,
        /// KEY=VALUE (repeatable; all must match)
        #[arg(long)]
        label: Vec<String>,
        /// Page size (1..=1000)
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after this cursor (from a previous --json listing)
        #[arg(long)]
        cursor: Option<String>,
        /// Follow cursors and list everything
        #[arg(long)]
        all: bool,
    },
    /// Show one identity (by id or SPIFFE ID)
    Show { id: String },
    /// Change fields of an identity; absent flags leave fields as they are
    Update {
        id: String,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Replace all labels (KEY=VALUE, repeatable)
        #[arg(long)]
        label: Vec<String>,
        /// Replace all selectors (repeatable)
        #[arg(long)]
        selector: Vec<String>,
        /// Replace the nodes that may serve it (node id, repeatable; `any` clears)
        #[arg(long)]
        node: Vec<String>,
        /// Replace its scopes (repeatable; `none` clears)
        #[arg(long)]
        scope: Vec<String>,
        /// Replace the foreign trust domains it federates with (repeatable;
        /// `none` clears)
        #[arg(long)]
        federates_with: Vec<String>,
        /// Credential lifetime cap, e.g. 30m
        #[arg(long)]
        max_ttl: Option<String>,
    },
    /// Stop issuing credentials to an identity
    Disable { id: String },
    /// Allow issuing again
    Enable { id: String },
    /// Remove an identity (its issued credentials stay on record)
    Delete { id: String },
}

#[derive(Args)]
pub struct IdentityFields {
    #[arg(long)]
    spiffe_id: String,
    /// workload, service, bot, agent, device, ci_job or service_account
    #[arg(long)]
    kind: String,
    /// The accountable human or team
    #[arg(long)]
    owner: String,
    #[arg(long)]
    description: Option<String>,
    /// Workload selector type:value (repeatable), e.g. unix:uid:1000
    #[arg(long)]
    selector: Vec<String>,
    /// Only agents of this node serve it (node id, repeatable; default: every node)
    #[arg(long)]
    node: Vec<String>,
    /// KEY=VALUE (repeatable)
    #[arg(long)]
    label: Vec<String>,
    /// OAuth scope its tokens may carry (repeatable)
    #[arg(long)]
    scope: Vec<String>,
    /// A foreign trust domain whose bundle its workloads receive
    /// (repeatable; see `credence federation`)
    #[arg(long)]
    federates_with: Vec<String>,
    /// Credential lifetime cap, e.g. 30m
    #[arg(long)]
    max_ttl: Option<String>,
}

fn labels_json(pairs: &[String]) -> Result<Value, CliError> {
    let mut m = serde_json::Map::new();
    for p in pairs {
        let (k, v) = credence_core::Labels::parse_pair(p).map_err(cli_err)?;
        m.insert(k, json!(v));
    }
    Ok(Value::Object(m))
}

fn ttl_seconds(s: &str) -> Result<u64, CliError> {
    let d = humantime::parse_duration(s).map_err(|e| CliError(format!("duration {s:?}: {e}")))?;
    Ok(d.as_secs())
}

fn print_identity_line(v: &Value) {
    println!(
        "{}  {:<16} {:<9} {:<20} {}",
        v["id"].as_str().unwrap_or(""),
        v["kind"].as_str().unwrap_or(""),
        v["status"].as_str().unwrap_or(""),
        v["owner"].as_str().unwrap_or(""),
        v["spiffe_id"].as_str().unwrap_or(""),
    );
}

fn print_identity(v: &Value) {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
    println!("id:             {}", s("id"));
    println!("spiffe_id:      {}", s("spiffe_id"));
    println!("kind:           {}", s("kind"));
    println!("owner:          {}", s("owner"));
    println!("status:         {}", s("status"));
    if !s("description").is_empty() {
        println!("description:    {}", s("description"));
    }
    if let Some(l) = v["labels"].as_object().filter(|m| !m.is_empty()) {
        let parts: Vec<String> = l
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        println!("labels:         {}", parts.join(", "));
    }
    if let Some(sel) = v["selectors"].as_array().filter(|a| !a.is_empty()) {
        let parts: Vec<&str> = sel.iter().filter_map(Value::as_str).collect();
        println!("selectors:      {}", parts.join(", "));
    }
    if let Some(sc) = v["scopes"].as_array().filter(|a| !a.is_empty()) {
        let parts: Vec<&str> = sc.iter().filter_map(Value::as_str).collect();
        println!("scopes:         {}", parts.join(" "));
    }
    if let Some(f) = v["federates_with"].as_array().filter(|a| !a.is_empty()) {
        let parts: Vec<&str> = f.iter().filter_map(Value::as_str).collect();
        println!("federates_with: {}", parts.join(" "));
    }
    if let Some(t) = v["max_ttl_seconds"].as_u64() {
        println!("max_ttl:        {t}s");
    }
    println!("created_at:     {}", s("created_at"));
    println!("updated_at:     {}", s("updated_at"));
    if let Some(t) = v["last_issued_at"].as_str() {
        println!("last_issued_at: {t}");
    }
}

fn out(json_mode: bool, v: &Value, text: impl FnOnce(&Value)) {
    if json_mode {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        text(v);
    }
}

pub async fn identity(c: &Client, cmd: IdentityCmd, json_mode: bool) -> Result<(), CliError> {
    match cmd {
        IdentityCmd::Create(f) => {
            let mut body = json!({
                "spiffe_id": f.spiffe_id,
                "kind": f.kind,
                "owner": f.owner,
                "selectors": f.selector,
                "nodes": f.node,
                "labels": labels_json(&f.label)?,
                "scopes": f.scope,
                "federates_with": f.federates_with,
            });
            if let Some(d) = f.description {
                body["description"] = json!(d);
            }
            if let Some(t) = f.max_ttl {
                body["max_ttl_seconds"] = json!(ttl_seconds(&t)?);
            }
            let v = c.post("/v1/identities", &body).await?;
            out(json_mode, &v, |v| {
                println!(
                    "created {} {}",
                    v["id"].as_str().unwrap_or(""),
                    v["spiffe_id"].as_str().unwrap_or("")
                );
            });
        }
        IdentityCmd::List {
            kind,
            owner,
            status,
            label,
            limit,
            cursor,
            all,
        } => {
            let mut q = vec![format!("limit={limit}")];
            if let Some(k) = kind {
                q.push(format!("kind={}", enc(&k)));
            }
            if let Some(o) = owner {
                q.push(format!("owner={}", enc(&o)));
            }
            if let Some(s) = status {
                q.push(format!("status={}", enc(&s)));
            }
            if !label.is_empty() {
                q.push(format!("label={}", enc(&label.join(","))));
            }
            let mut cursor = cursor;
            let mut items = Vec::new();
            let mut next;
            loop {
                let mut qq = q.clone();
                if let Some(cur) = &cursor {
                    qq.push(format!("cursor={}", enc(cur)));
                }
                let v = c.get(&format!("/v1/identities?{}", qq.join("&"))).await?;
                if let Some(a) = v["identities"].as_array() {
                    items.extend(a.iter().cloned());
                }
                next = v["next_cursor"].as_str().map(str::to_owned);
                if !all || next.is_none() {
                    break;
                }
                cursor = next.clone();
            }
            let v = json!({"identities": items, "next_cursor": next});
            out(json_mode, &v, |v| {
                for i in v["identities"].as_array().into_iter().flatten() {
                    print_identity_line(i);
                }
                if let Some(n) = v["next_cursor"].as_str() {
                    eprintln!("(more: --cursor {n})");
                }
            });
        }
        IdentityCmd::Show { id } => {
            let v = c.get(&format!("/v1/identities/{}", enc(&id))).await?;
            out(json_mode, &v, print_identity);
        }
        IdentityCmd::Update {
            id,
            kind,
            owner,
            description,
            label,
            selector,
            node,
            scope,
            federates_with,
            max_ttl,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(k) = kind {
                body.insert("kind".into(), json!(k));
            }
            if let Some(o) = owner {
                body.insert("owner".into(), json!(o));
            }
            if let Some(d) = description {
                body.insert("description".into(), json!(d));
            }
            if !label.is_empty() {
                body.insert("labels".into(), labels_json(&label)?);
            }
            if !selector.is_empty() {
                body.insert("selectors".into(), json!(selector));
            }
            if node == ["any"] {
                body.insert("nodes".into(), json!([]));
            } else if !node.is_empty() {
                body.insert("nodes".into(), json!(node));
            }
            if scope == ["none"] {
                body.insert("scopes".into(), json!([]));
            } else if !scope.is_empty() {
                body.insert("scopes".into(), json!(scope));
            }
            if federates_with == ["none"] {
                body.insert("federates_with".into(), json!([]));
            } else if !federates_with.is_empty() {
                body.insert("federates_with".into(), json!(federates_with));
            }
            if let Some(t) = max_ttl {
                body.insert("max_ttl_seconds".into(), json!(ttl_seconds(&t)?));
            }
            let v = c
                .patch(
                    &format!("/v1/identities/{}", enc(&id)),
                    &Value::Object(body),
                )
                .await?;
            out(json_mode, &v, print_identity);
        }
        IdentityCmd::Disable { id } => {
            let v = c
                .post(&format!("/v1/identities/{}/disable", enc(&id)), &json!({}))
                .await?;
            out(json_mode, &v, |v| {
                println!("disabled {}", v["spiffe_id"].as_str().unwrap_or(""))
            });
        }
        IdentityCmd::Enable { id } => {
            let v = c
                .post(&format!("/v1/identities/{}/enable", enc(&id)), &json!({}))
                .await?;
            out(json_mode, &v, |v| {
                println!("enabled {}", v["spiffe_id"].as_str().unwrap_or(""))
            });
        }
        IdentityCmd::Delete { id } => {
            c.delete(&format!("/v1/identities/{}", enc(&id))).await?;
            out(json_mode, &json!({"deleted": id}), |_| {
                println!("deleted {id}")
            });
        }
    }
    Ok(())
}

// ---- x509 / jwt ----

#[derive(Subcommand)]
pub enum X509Cmd {
    /// Generate a key on the server and issue an X509-SVID into DIR
    Mint {
        #[arg(long)]
        spiffe_id: String,
        /// Output directory: svid.pem (chain), svid.key (0600), bundle.pem
        #[arg(long)]
        out: PathBuf,
        /// Lifetime, e.g. 1h (capped by server and identity limits)
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Issue an X509-SVID for a PKCS#10 CSR; prints the chain (leaf first)
    Sign {
        #[arg(long)]
        csr: PathBuf,
        #[arg(long)]
        spiffe_id: String,
        #[arg(long)]
        ttl: Option<String>,
    },
}

pub async fn x509(c: &Client, cmd: X509Cmd, json_mode: bool) -> Result<(), CliError> {
    match cmd {
        X509Cmd::Mint {
            spiffe_id,
            out: dir,
            ttl,
        } => {
            let mut body = json!({"spiffe_id": spiffe_id});
            if let Some(t) = ttl {
                body["ttl"] = json!(t);
            }
            let v = c.post("/v1/x509/mint", &body).await?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| CliError(format!("cannot create {}: {e}", dir.display())))?;
            let key_path = dir.join("svid.key");
            let _ = std::fs::remove_file(&key_path);
            write_private(&key_path, v["key_pem"].as_str().unwrap_or("").as_bytes())
                .map_err(|e| CliError(format!("cannot write {}: {e}", key_path.display())))?;
            for (name, field) in [("svid.pem", "chain_pem"), ("bundle.pem", "bundle_pem")] {
                let p = dir.join(name);
                std::fs::write(&p, v[field].as_str().unwrap_or(""))
                    .map_err(|e| CliError(format!("cannot write {}: {e}", p.display())))?;
            }
            let mut shown = v.clone();
            if let Some(m) = shown.as_object_mut() {
                m.remove("key_pem");
            }
            out(json_mode, &shown, |v| {
                println!(
                    "issued {} serial {} expires {}",
                    v["spiffe_id"].as_str().unwrap_or(""),
                    v["serial"].as_str().unwrap_or(""),
                    v["not_after"].as_str().unwrap_or("")
                );
                println!("wrote {}/svid.pem, svid.key, bundle.pem", dir.display());
            });
        }
        X509Cmd::Sign {
            csr,
            spiffe_id,
            ttl,
        } => {
            let pem = std::fs::read(&csr)
                .map_err(|e| CliError(format!("cannot read {}: {e}", csr.display())))?;
            let text = if pem.first() == Some(&0x30) {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(&pem)
            } else {
                String::from_utf8(pem)
                    .map_err(|_| CliError(format!("{} is neither PEM nor DER", csr.display())))?
            };
            let mut body = json!({"spiffe_id": spiffe_id, "csr": text});
            if let Some(t) = ttl {
                body["ttl"] = json!(t);
            }
            let v = c.post("/v1/x509/sign", &body).await?;
            out(json_mode, &v, |v| {
                print!("{}", v["chain_pem"].as_str().unwrap_or(""))
            });
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum JwtCmd {
    /// Mint a JWT-SVID; prints the token alone
    Mint {
        #[arg(long)]
        spiffe_id: String,
        /// Audience (repeatable; at least one)
        #[arg(long, required = true)]
        audience: Vec<String>,
        /// OAuth scope (repeatable); must be among the identity's scopes
        #[arg(long)]
        scope: Vec<String>,
        #[arg(long)]
        ttl: Option<String>,
    },
}

pub async fn jwt(c: &Client, cmd: JwtCmd, json_mode: bool) -> Result<(), CliError> {
    let JwtCmd::Mint {
        spiffe_id,
        audience,
        scope,
        ttl,
    } = cmd;
    let mut body = json!({"spiffe_id": spiffe_id, "audience": audience});
    if !scope.is_empty() {
        body["scope"] = json!(scope);
    }
    if let Some(t) = ttl {
        body["ttl"] = json!(t);
    }
    let v = c.post("/v1/jwt/mint", &body).await?;
    out(json_mode, &v, |v| {
        println!("{}", v["token"].as_str().unwrap_or(""))
    });
    Ok(())
}

// ---- revocation, CA, CRL ----

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct RevokeTargetArgs {
    /// Certificate serial (hex)
    #[arg(long)]
    serial: Option<String>,
    /// Every live credential of this identity
    #[arg(long)]
    spiffe_id: Option<String>,
    /// A JWT-SVID by its jti
    #[arg(long)]
    jti: Option<String>,
}

#[derive(Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    target: RevokeTargetArgs,
    /// RFC 5280 reason: unspecified, key_compromise, ca_compromise,
    /// affiliation_changed, superseded, cessation_of_operation, privilege_withdrawn
    #[arg(long)]
    reason: Option<String>,
}

pub async fn revoke(c: &Client, a: RevokeArgs, json_mode: bool) -> Result<(), CliError> {
    let mut body = serde_json::Map::new();
    if let Some(s) = a.target.serial {
        body.insert("serial".into(), json!(s));
    }
    if let Some(s) = a.target.spiffe_id {
        body.insert("spiffe_id".into(), json!(s));
    }
    if let Some(s) = a.target.jti {
        body.insert("jti".into(), json!(s));
    }
    if let Some(r) = a.reason {
        body.insert("reason".into(), json!(r));
    }
    let v = c.post("/v1/revocations", &Value::Object(body)).await?;
    out(json_mode, &v, |v| {
        let list = v["revoked"].as_array().cloned().unwrap_or_default();
        println!("revoked {} credential(s)", list.len());
        for r in list {
            println!(
                "  {} {} {} ({})",
                r["kind"].as_str().unwrap_or(""),
                r["serial"].as_str().unwrap_or(""),
                r["spiffe_id"].as_str().unwrap_or(""),
                r["reason"].as_str().unwrap_or("")
            );
        }
    });
    Ok(())
}

#[derive(Subcommand)]
pub enum CaCmd {
    /// Show the CA hierarchy and the JWT signing keys
    Show,
    /// Replace the active intermediate with a new one
    Rotate,
}

#[derive(Subcommand)]
pub enum JwtKeyCmd {
    /// Rotate the JWT signing key: the new key is published at once and
    /// signs after the overlap; the old one stays published until its
    /// tokens expire
    Rotate {
        /// How long the new key is published before it signs (relying
        /// parties refresh their JWKS meanwhile), e.g. 10m
        #[arg(long, default_value = "10m")]
        overlap: String,
    },
}

pub async fn jwt_key(c: &Client, cmd: JwtKeyCmd, json_mode: bool) -> Result<(), CliError> {
    let JwtKeyCmd::Rotate { overlap } = cmd;
    let secs = humantime::parse_duration(&overlap)
        .map_err(|e| CliError(format!("--overlap {overlap:?}: {e}")))?
        .as_secs();
    let v = c
        .post("/v1/ca/jwt/rotate", &json!({"overlap_seconds": secs}))
        .await?;
    out(json_mode, &v, |v| {
        println!(
            "new JWT key {} published; it signs from {}",
            v["kid"].as_str().unwrap_or(""),
            v["signs_from"].as_str().unwrap_or("")
        )
    });
    Ok(())
}

pub async fn ca(c: &Client, cmd: CaCmd, json_mode: bool) -> Result<(), CliError> {
    let v = match cmd {
        CaCmd::Show => c.get("/v1/ca").await?,
        CaCmd::Rotate => c.post("/v1/ca/rotate", &json!({})).await?,
    };
    out(json_mode, &v, |v| {
        let mut shown = v.clone();
        if let Some(m) = shown.as_object_mut() {
            m.remove("bundle_pem");
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&shown).unwrap_or_default()
        );
    });
    Ok(())
}

// ---- nodes ----

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Join tokens for the first attestation of a node's agent
    #[command(subcommand)]
    Token(TokenCmd),
    /// List attested nodes
    List,
    /// Show one node
    Show { id: String },
    /// Refuse a node's agent from now on and revoke everything issued through it
    Evict { id: String },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a one-time join token (printed once; only its hash is stored)
    Create {
        /// How long it may be used, e.g. 10m
        #[arg(long, default_value = "10m")]
        ttl: String,
    },
}

fn print_node(v: &Value) {
    println!("id:          {}", v["id"].as_str().unwrap_or(""));
    println!("spiffe_id:   {}", v["spiffe_id"].as_str().unwrap_or(""));
    println!("status:      {}", v["status"].as_str().unwrap_or(""));
    println!("attestation: {}", v["attestation"].as_str().unwrap_or(""));
    if let Some(t) = v["agent_not_after"].as_str() {
        println!(
            "agent SVID:  {} (until {t})",
            v["agent_serial"].as_str().unwrap_or("")
        );
    }
    println!("created_at:  {}", v["created_at"].as_str().unwrap_or(""));
}

pub async fn node(c: &Client, cmd: NodeCmd, json_mode: bool) -> Result<(), CliError> {
    match cmd {
        NodeCmd::Token(TokenCmd::Create { ttl }) => {
            let v = c.post("/v1/nodes/tokens", &json!({"ttl": ttl})).await?;
            out(json_mode, &v, |v| {
                println!("{}", v["token"].as_str().unwrap_or(""));
                eprintln!(
                    "join token {} expires at {}; it works once",
                    v["id"].as_str().unwrap_or(""),
                    v["expires_at"].as_str().unwrap_or("")
                );
            });
        }
        NodeCmd::List => {
            let v = c.get("/v1/nodes").await?;
            out(json_mode, &v, |v| {
                for n in v["items"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {:8}  {}",
                        n["id"].as_str().unwrap_or(""),
                        n["status"].as_str().unwrap_or(""),
                        n["spiffe_id"].as_str().unwrap_or("")
                    );
                }
            });
        }
        NodeCmd::Show { id } => {
            let v = c.get(&format!("/v1/nodes/{}", enc(&id))).await?;
            out(json_mode, &v, print_node);
        }
        NodeCmd::Evict { id } => {
            let v = c
                .post(&format!("/v1/nodes/{}/evict", enc(&id)), &json!({}))
                .await?;
            out(json_mode, &v, |v| {
                println!(
                    "evicted node {}; {} credentials revoked",
                    v["node"]["id"].as_str().unwrap_or(""),
                    v["revoked"].as_array().map_or(0, Vec::len)
                );
            });
        }
    }
    Ok(())
}

pub async fn crl(c: &Client, out_file: Option<PathBuf>) -> Result<(), CliError> {
    let der = c.get_bytes("/crl").await?;
    match out_file {
        Some(p) => std::fs::write(&p, der)
            .map_err(|e| CliError(format!("cannot write {}: {e}", p.display()))),
        None => std::io::stdout().write_all(&der).map_err(cli_err),
    }
}

// ---- administrators ----

#[derive(Subcommand)]
pub enum AdminCmd {
    /// Create a named administrator; prints its token once
    Create {
        name: String,
        /// A team it belongs to (repeatable); policies compare teams with identity owners
        #[arg(long)]
        team: Vec<String>,
        #[arg(long)]
        description: Option<String>,
        /// Token lifetime, e.g. 90d (default: no expiry)
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List administrators
    List,
    /// Show one administrator
    Show { name: String },
    /// Delete an administrator (its token stops working at once)
    Delete { name: String },
}

fn print_admin(v: &Value) {
    let teams: Vec<&str> = v["teams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    println!(
        "{:<24} teams: {:<30} expires: {}",
        v["name"].as_str().unwrap_or(""),
        if teams.is_empty() {
            "-".to_owned()
        } else {
            teams.join(",")
        },
        v["expires_at"].as_str().unwrap_or("never"),
    );
}

pub async fn admin(c: &Client, cmd: AdminCmd, json_mode: bool) -> Result<(), CliError> {
    match cmd {
        AdminCmd::Create {
            name,
            team,
            description,
            ttl,
        } => {
            let mut body = json!({"name": name, "teams": team});
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            if let Some(t) = ttl {
                body["ttl_seconds"] = json!(ttl_seconds(&t)?);
            }
            let v = c.post("/v1/admins", &body).await?;
            out(json_mode, &v, |v| {
                // the token alone on stdout, for `TOKEN=$(credence admin create ...)`
                eprintln!(
                    "created administrator {}; its token (shown once, keep it secret):",
                    v["name"].as_str().unwrap_or("")
                );
                println!("{}", v["token"].as_str().unwrap_or(""));
            });
        }
        AdminCmd::List => {
            let v = c.get("/v1/admins").await?;
            out(json_mode, &v, |v| {
                for a in v["admins"].as_array().into_iter().flatten() {
                    print_admin(a);
                }
            });
        }
        AdminCmd::Show { name } => {
            let v = c.get(&format!("/v1/admins/{}", enc(&name))).await?;
            out(json_mode, &v, print_admin);
        }
        AdminCmd::Delete { name } => {
            c.delete(&format!("/v1/admins/{}", enc(&name))).await?;
            out(json_mode, &json!({"deleted": name}), |_| {
                println!("deleted {name}")
            });
        }
    }
    Ok(())
}

// ---- federation ----

#[derive(Subcommand)]
pub enum FederationCmd {
    /// Trust a foreign trust domain: fetch its bundle from its bundle
    /// endpoint now and whenever its refresh hint says (no restart)
    Add {
        #[arg(long)]
        trust_domain: String,
        /// https:// URL of its SPIFFE bundle endpoint (http:// only on loopback)
        #[arg(long)]
        bundle_endpoint: String,
        /// https_web (Web PKI TLS) or https_spiffe (the endpoint presents an X509-SVID)
        #[arg(long, default_value = "https_web")]
        profile: String,
        /// https_web: PEM file of extra roots for the endpoint's TLS certificate (a private CA)
        #[arg(long)]
        tls_roots: Option<PathBuf>,
        /// https_spiffe: the SPIFFE ID the endpoint presents
        #[arg(long)]
        endpoint_spiffe_id: Option<String>,
        /// https_spiffe: the trust domain's bundle obtained out of band
        /// (SPIFFE bundle JSON or PEM certificates)
        #[arg(long)]
        bundle: Option<PathBuf>,
    },
    /// List federation relationships and their bundles' state
    List,
    /// Show one relationship
    Show { trust_domain: String },
    /// Stop trusting a trust domain (its bundle stops being handed out at once)
    Remove { trust_domain: String },
    /// Fetch a foreign bundle now
    Refresh { trust_domain: String },
}

fn print_federation(v: &Value) {
    let b = &v["bundle"];
    let state = if b.is_null() {
        "no bundle yet".to_owned()
    } else {
        format!(
            "sequence {} ({} x509, {} jwt), fetched {}",
            b["sequence"]
                .as_u64()
                .map_or("-".to_owned(), |n| n.to_string()),
            b["x509_authorities"].as_u64().unwrap_or(0),
            b["jwt_keys"].as_u64().unwrap_or(0),
            b["fetched_at"].as_str().unwrap_or("-"),
        )
    };
    println!(
        "{:<28} {:<12} {}  {}",
        v["trust_domain"].as_str().unwrap_or(""),
        v["profile"].as_str().unwrap_or(""),
        v["bundle_endpoint"].as_str().unwrap_or(""),
        state
    );
    if let Some(e) = v["last_error"].as_str() {
        println!("  last error: {e}");
    }
}

pub async fn federation(c: &Client, cmd: FederationCmd, json_mode: bool) -> Result<(), CliError> {
    let path = |td: &str| format!("/v1/federation/{}", enc(td));
    let v = match cmd {
        FederationCmd::Add {
            trust_domain,
            bundle_endpoint,
            profile,
            tls_roots,
            endpoint_spiffe_id,
            bundle,
        } => {
            let read = |f: &PathBuf| {
                std::fs::read_to_string(f).map_err(|e| CliError(format!("{}: {e}", f.display())))
            };
            let mut body = json!({
                "trust_domain": trust_domain,
                "bundle_endpoint": bundle_endpoint,
                "profile": profile,
            });
            if let Some(f) = tls_roots {
                body["tls_roots_pem"] = json!(read(&f)?);
            }
            if let Some(id) = endpoint_spiffe_id {
                body["endpoint_spiffe_id"] = json!(id);
            }
            if let Some(f) = bundle {
                body["bundle"] = json!(read(&f)?);
            }
            c.post("/v1/federation", &body).await?
        }
        FederationCmd::List => {
            let v = c.get("/v1/federation").await?;
            out(json_mode, &v, |v| {
                for f in v["items"].as_array().into_iter().flatten() {
                    print_federation(f);
                }
            });
            return Ok(());
        }
        FederationCmd::Show { trust_domain } => c.get(&path(&trust_domain)).await?,
        FederationCmd::Remove { trust_domain } => {
            c.delete(&path(&trust_domain)).await?;
            out(json_mode, &json!({"removed": trust_domain}), |_| {
                println!("removed the federation with {trust_domain}")
            });
            return Ok(());
        }
        FederationCmd::Refresh { trust_domain } => {
            c.post(&format!("{}/refresh", path(&trust_domain)), &json!({}))
                .await?
        }
    };
    out(json_mode, &v, print_federation);
    Ok(())
}
