//! `credence bench issue`: X509-SVID issuance throughput and latency, printed
//! beside the raw crypto floor so results compare across machines.
//!
//! Stages, each for `--duration`:
//! 1. raw floor: ECDSA P-256 sign and verify with aws-lc-rs on every core;
//!    one issuance from a CSR costs one verify (proof of possession) plus
//!    one sign, so the floor is `1 / (1/sign + 1/verify)` per core-set;
//! 2. in-process: CSR check + sign + encode + durable group-committed store;
//! 3. HTTP: the same through `POST /v1/x509/sign` with concurrent keep-alive
//!    clients on loopback (the clients share the machine's cores).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
};
use clap::Subcommand;
use serde_json::json;

use credence_core::{SpiffeId, SystemClock, TrustDomain};
use credence_server::authority::CaLifetimes;
use credence_server::runtime::{self, Options};
use credence_server::service::{Actor, IssuancePolicy, NewIdentity, Service};
use credence_store::{Durability, SqliteStore, Store};

use crate::client::CliError;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// X509-SVID issuance from CSRs: raw floor, in-process and over HTTP
    Issue {
        /// Length of each stage, e.g. 5s
        #[arg(long, default_value = "5s")]
        duration: String,
        /// Concurrent requests in flight; a comma-separated list runs each
        #[arg(long, default_value = "64,256", value_delimiter = ',')]
        concurrency: Vec<usize>,
        /// SQLite durability: normal or full
        #[arg(long, default_value = "normal")]
        durability: String,
        /// Skip the HTTP stage
        #[arg(long)]
        no_http: bool,
        /// Run only one stage: floor, in-process or http
        #[arg(long)]
        only: Option<String>,
    },
    /// Node agent: Workload API fetch latency, new-workload attestation to
    /// first SVID, agent memory with many SVIDs, revocation push latency
    Agent {
        /// SVIDs the agent caches (identities registered for its node)
        #[arg(long, default_value_t = 10_000)]
        svids: usize,
        /// Fetches measured on an attested workload's connection
        #[arg(long, default_value_t = 2_000)]
        fetches: usize,
        /// New workload connections measured
        #[arg(long, default_value_t = 300)]
        connects: usize,
        /// Revocations whose push to the workload's stream is timed
        #[arg(long, default_value_t = 200)]
        revocations: usize,
    },
    /// Policy decisions: scope-indexed Credence engine beside naive Cedar
    Policy {
        /// Team-scoped policies in the set
        #[arg(long, default_value_t = 10_000)]
        policies: usize,
        /// Decisions measured with the index
        #[arg(long, default_value_t = 20_000)]
        decisions: usize,
        /// Decisions measured with naive Cedar (slow on big sets)
        #[arg(long, default_value_t = 200)]
        naive: usize,
        /// Length of the HTTP stage (AuthZEN over keep-alive HTTP/1.1); 0 skips it
        #[arg(long, default_value = "5s")]
        http_duration: String,
        /// Concurrent HTTP clients
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// HTTP load generator: `builtin` (hyper clients in this process,
        /// sharing its cores), `wrk` (a second process; needs `wrk` on
        /// PATH) or `both`; default: both when wrk is installed
        #[arg(long)]
        load: Option<String>,
        /// wrk threads: one keeps the load generator's share of a small
        /// machine low (one thread drives 64 connections without becoming
        /// the bottleneck), so the stage measures the server
        #[arg(long, default_value_t = 1)]
        wrk_threads: usize,
    },
    /// Audit log: SHA-256 floor, durable appends, proofs and full
    /// verification on a large log
    Audit {
        /// Length of the append stage, e.g. 5s
        #[arg(long, default_value = "5s")]
        duration: String,
        /// Concurrent appenders
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Size of the log for the proof and verification stages
        #[arg(long, default_value_t = 1_000_000)]
        entries: u64,
        /// SQLite durability: normal or full
        #[arg(long, default_value = "normal")]
        durability: String,
    },
}

fn err(e: impl std::fmt::Display) -> CliError {
    CliError(e.to_string())
}

/// Throughput and latency of one stage.
pub(crate) struct Stage {
    pub(crate) ops: u64,
    pub(crate) elapsed: Duration,
    pub(crate) lat_us: Vec<u32>,
}

impl Stage {
    pub(crate) fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    pub(crate) fn pct(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return 0.0;
        }
        let i = ((self.lat_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.lat_us[i]) / 1000.0
    }
}

/// Runs `f` on every core for `d`; returns ops/s.
fn per_core_rate(d: Duration, f: impl Fn() + Send + Sync + 'static) -> f64 {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let f = Arc::new(f);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let f = f.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                let t0 = Instant::now();
                while t0.elapsed() < d {
                    for _ in 0..64 {
                        f();
                    }
                    n += 64;
                }
                n
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    total as f64 / start.elapsed().as_secs_f64()
}

fn make_csrs(td: &TrustDomain, n: usize) -> Result<(SpiffeId, Vec<Vec<u8>>), CliError> {
    let id = SpiffeId::from_parts(td, "/bench/svc").map_err(err)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let kp = rcgen::KeyPair::generate().map_err(err)?;
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.subject_alt_names = vec![rcgen::SanType::URI(id.as_str().try_into().map_err(err)?)];
        out.push(p.serialize_request(&kp).map_err(err)?.der().to_vec());
    }
    Ok((id, out))
}

async fn register(svc: &Service, id: &SpiffeId) -> Result<(), CliError> {
    let new: NewIdentity = serde_json::from_value(json!({
        "spiffe_id": id, "kind": "service", "owner": "bench",
    }))
    .map_err(err)?;
    svc.create_identity(&Actor::admin(), new)
        .await
        .map_err(err)?;
    Ok(())
}

pub async fn run(cmd: BenchCmd) -> Result<(), CliError> {
    if let BenchCmd::Policy {
        policies,
        decisions,
        naive,
        http_duration,
        concurrency,
        load,
        wrk_threads,
    } = cmd
    {
        let d = humantime::parse_duration(&http_duration).map_err(err)?;
        let load = crate::bench_policy::Load::parse(load.as_deref())?;
        return crate::bench_policy::run(
            policies,
            decisions,
            naive,
            d,
            concurrency,
            (load, wrk_threads.max(1)),
        )
        .await;
    }
    if let BenchCmd::Agent {
        svids,
        fetches,
        connects,
        revocations,
    } = cmd
    {
        return crate::bench_agent::run(svids, fetches, connects, revocations).await;
    }
    if let BenchCmd::Audit {
        duration,
        concurrency,
        entries,
        durability,
    } = cmd
    {
        return audit_bench(&duration, concurrency, entries, &durability).await;
    }
    let BenchCmd::Issue {
        duration,
        concurrency,
        durability,
        no_http,
        only,
    } = cmd
    else {
        return Ok(());
    };
    let want = |stage: &str| only.as_deref().is_none_or(|o| o == stage);
    if let Some(o) = only.as_deref()
        && !matches!(o, "floor" | "in-process" | "http")
    {
        return Err(err(format!(
            "--only {o:?}: expected floor, in-process or http"
        )));
    }
    let d = humantime::parse_duration(&duration).map_err(err)?;
    let durability = credence_server::config::parse_durability(Some(&durability)).map_err(err)?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if concurrency.is_empty() || concurrency.iter().any(|c| *c == 0 || *c > 4096) {
        return Err(err("--concurrency must be 1 to 4096"));
    }
    println!(
        "credence bench issue: {cores} cores, {duration} per stage, concurrency {concurrency:?}, durability {}",
        if durability == Durability::Full {
            "full"
        } else {
            "normal"
        }
    );

    // 1. raw floor (always measured: the other stages are reported as ratios to it)
    let d_floor = if want("floor") {
        d
    } else {
        Duration::from_millis(500)
    };
    let key = Arc::new(
        EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).map_err(|_| err("keygen"))?,
    );
    let msg = [0x42u8; 300];
    let k = key.clone();
    let sign_rate = tokio::task::spawn_blocking(move || {
        let rng = SystemRandom::new();
        per_core_rate(d_floor, move || {
            let _ = k.sign(&rng, &msg);
        })
    })
    .await
    .map_err(err)?;
    let sig = key
        .sign(&SystemRandom::new(), &msg)
        .map_err(|_| err("sign"))?
        .as_ref()
        .to_vec();
    let pk = key.public_key().as_ref().to_vec();
    let verify_rate = tokio::task::spawn_blocking(move || {
        per_core_rate(d_floor, move || {
            let _ =
                signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &pk).verify(&msg, &sig);
        })
    })
    .await
    .map_err(err)?;
    let floor = 1.0 / (1.0 / sign_rate + 1.0 / verify_rate);
    println!("raw crypto floor (aws-lc-rs, all cores):");
    println!("  ECDSA P-256 sign                 {sign_rate:>10.0} ops/s");
    println!("  ECDSA P-256 verify               {verify_rate:>10.0} ops/s");
    println!("  verify+sign per CSR (floor)      {floor:>10.0} certs/s");

    let td = TrustDomain::new("bench.example").map_err(err)?;
    let t = Instant::now();
    let (id, csrs) = make_csrs(&td, 256)?;
    eprintln!(
        "  (prepared {} CSRs in {:.1}s)",
        csrs.len(),
        t.elapsed().as_secs_f64()
    );
    let csrs = Arc::new(csrs);

    if want("in-process") {
        components(&td, &id, &csrs)?;
    }

    // 2. in-process
    if want("in-process") {
        for &c in &concurrency {
            in_process(&td, &id, &csrs, durability, c, d, floor).await?;
        }
    }
    if no_http || !want("http") {
        return Ok(());
    }
    for &c in &concurrency {
        http_stage(&td, &id, &csrs, durability, c, d, floor).await?;
    }
    Ok(())
}

/// Single-thread cost of each step of an issuance, for the breakdown.
fn components(td: &TrustDomain, id: &SpiffeId, csrs: &[Vec<u8>]) -> Result<(), CliError> {
    use credence_ca::x509::{X509Issuer, create_intermediate, create_root};
    use credence_core::Serial;
    let now = time::OffsetDateTime::now_utc();
    let rk: Arc<dyn credence_ca::Signer> =
        Arc::new(credence_ca::SoftwareKey::generate().map_err(err)?);
    let root = X509Issuer::new(
        create_root(
            td,
            rk.clone(),
            &Serial::from_random([1; 16]),
            now,
            now + time::Duration::days(1),
        )
        .map_err(err)?,
        rk,
    )
    .map_err(err)?;
    let ik: Arc<dyn credence_ca::Signer> =
        Arc::new(credence_ca::SoftwareKey::generate().map_err(err)?);
    let int = X509Issuer::new(
        create_intermediate(
            td,
            &root,
            ik.as_ref(),
            &Serial::from_random([2; 16]),
            now,
            now + time::Duration::days(1),
        )
        .map_err(err)?,
        ik,
    )
    .map_err(err)?;
    let n = 2000;
    let per = |f: &mut dyn FnMut(usize) -> Result<(), CliError>| -> Result<f64, CliError> {
        let t0 = Instant::now();
        for i in 0..n {
            f(i)?;
        }
        Ok(t0.elapsed().as_secs_f64() * 1e6 / n as f64)
    };
    let parse = per(&mut |i| {
        <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(&csrs[i % csrs.len()])
            .map(|_| ())
            .map_err(|e| err(e.to_string()))
    })?;
    let check = per(&mut |i| {
        credence_ca::check_csr(&csrs[i % csrs.len()])
            .map(|_| ())
            .map_err(err)
    })?;
    let checked: Vec<_> = csrs
        .iter()
        .map(|c| credence_ca::check_csr(c))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    let sign = per(&mut |i| {
        int.issue_svid(
            id,
            &checked[i % checked.len()].key,
            &Serial::from_random([3; 16]),
            now,
            now + time::Duration::hours(1),
        )
        .map(|_| ())
        .map_err(err)
    })?;
    println!("single-thread cost per step:");
    println!("  parse CSR (DER)                  {parse:>8.1} us");
    println!("  check CSR (parse + PoP verify)   {check:>8.1} us");
    println!("  build + sign X509-SVID           {sign:>8.1} us");
    Ok(())
}

async fn in_process(
    td: &TrustDomain,
    id: &SpiffeId,
    csrs: &Arc<Vec<Vec<u8>>>,
    durability: Durability,
    concurrency: usize,
    d: Duration,
    floor: f64,
) -> Result<(), CliError> {
    let dir = tempfile::tempdir().map_err(err)?;
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&dir.path().join("bench.db"), durability)
            .await
            .map_err(err)?,
    );
    let svc = Arc::new(
        Service::start(
            store.clone(),
            &[7u8; 32],
            td,
            CaLifetimes::default(),
            IssuancePolicy::default(),
            None,
            Arc::new(SystemClock),
            Arc::new(credence_ca::SystemRandom),
        )
        .await
        .map_err(err)?,
    );
    register(&svc, id).await?;
    let before = store.audit_count().await.map_err(err)?;
    let stage = drive(concurrency, d, {
        let svc = svc.clone();
        let csrs = csrs.clone();
        let id = id.clone();
        move |i| {
            let svc = svc.clone();
            let csrs = csrs.clone();
            let id = id.clone();
            async move {
                let der = &csrs[i % csrs.len()];
                let checked = credence_ca::check_csr(der).map_err(err)?;
                svc.issue_x509_from_csr(&Actor::admin(), &id, checked, None)
                    .await
                    .map_err(err)?;
                Ok(())
            }
        }
    })
    .await?;
    let recorded = store.audit_count().await.map_err(err)? - before;
    report(
        &format!("in-process issuance from CSR ({concurrency} callers)"),
        &stage,
        floor,
    );
    if recorded < stage.ops {
        return Err(err(format!(
            "only {recorded} of {} issued certificates were recorded",
            stage.ops
        )));
    }
    store.close().await;
    Ok(())
}

async fn http_stage(
    td: &TrustDomain,
    id: &SpiffeId,
    csrs: &Arc<Vec<Vec<u8>>>,
    durability: Durability,
    concurrency: usize,
    d: Duration,
    floor: f64,
) -> Result<(), CliError> {
    // 3. HTTP
    let dir2 = tempfile::tempdir().map_err(err)?;
    let token = "bench-admin-token-0123456789";
    let running = start_server(td, &dir2.path().join("bench.db"), durability, token).await?;
    register(&running.service, id).await?;
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
        csrs.iter()
            .map(|der| {
                let pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der.clone()));
                bytes::Bytes::from(
                    serde_json::to_vec(&json!({"spiffe_id": id, "csr": pem})).unwrap_or_default(),
                )
            })
            .collect(),
    );
    let senders = keepalive_clients(running.addr, concurrency).await?;
    let auth = format!("Bearer {token}");
    let host = running.addr.to_string();
    let before = running.service.store.audit_count().await.map_err(err)?;
    let stage = drive(concurrency, d, {
        let bodies = bodies.clone();
        move |i| {
            let body = bodies[i % bodies.len()].clone();
            let sender = senders[i % concurrency].clone();
            let auth = auth.clone();
            let host = host.clone();
            async move {
                let (status, _) = post_json(&sender, &host, &auth, "/v1/x509/sign", body).await?;
                if !status.is_success() {
                    return Err(err(format!("HTTP {status}")));
                }
                Ok(())
            }
        }
    })
    .await?;
    let recorded = running.service.store.audit_count().await.map_err(err)? - before;
    report(
        &format!("HTTP issuance from CSR ({concurrency} clients)"),
        &stage,
        floor,
    );
    println!(
        "  every certificate was recorded before its response ({recorded} audit records for {} certificates)",
        stage.ops
    );
    let t = Instant::now();
    running.shutdown().await.map_err(err)?;
    eprintln!("  (server shutdown took {:.1}s)", t.elapsed().as_secs_f64());
    Ok(())
}

/// One client's keep-alive HTTP/1.1 connection.
pub(crate) type Sender = Arc<
    tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>>,
>;

/// One keep-alive HTTP/1.1 connection per client, like wrk: a lean load
/// generator, so the measurement is of the server, not of a client library.
pub(crate) async fn keepalive_clients(
    addr: std::net::SocketAddr,
    n: usize,
) -> Result<Arc<Vec<Sender>>, CliError> {
    let mut senders = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(err)?;
        stream.set_nodelay(true).map_err(err)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(err)?;
        tokio::spawn(conn);
        senders.push(Arc::new(tokio::sync::Mutex::new(sender)));
    }
    Ok(Arc::new(senders))
}

/// POSTs a JSON body with the admin token; the status and the body.
pub(crate) async fn post_json(
    sender: &Sender,
    host: &str,
    auth: &str,
    path: &str,
    body: bytes::Bytes,
) -> Result<(hyper::StatusCode, bytes::Bytes), CliError> {
    use http_body_util::BodyExt;
    let req = hyper::Request::post(path)
        .header("host", host)
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(body))
        .map_err(err)?;
    let mut s = sender.lock().await;
    let resp = s.send_request(req).await.map_err(err)?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map_err(err)?.to_bytes();
    Ok((status, bytes))
}

/// A plain-HTTP loopback server on a bench database.
pub(crate) async fn start_server(
    td: &TrustDomain,
    db_path: &std::path::Path,
    durability: Durability,
    token: &str,
) -> Result<runtime::Running, CliError> {
    start_server_with(td, db_path, durability, token, None).await
}

pub(crate) async fn start_server_with(
    td: &TrustDomain,
    db_path: &std::path::Path,
    durability: Durability,
    token: &str,
    agent_listen: Option<std::net::SocketAddr>,
) -> Result<runtime::Running, CliError> {
    runtime::start(Options {
        trust_domain: td.clone(),
        listen: "127.0.0.1:0".parse().map_err(err)?,
        db_path: db_path.to_path_buf(),
        durability,
        kek: zeroize::Zeroizing::new(vec![9u8; 32]),
        admin_token: zeroize::Zeroizing::new(token.to_owned()),
        tls: None,
        public_url: None,
        lifetimes: CaLifetimes::default(),
        policy: IssuancePolicy::default(),
        clock: Arc::new(SystemClock),
        rng: Arc::new(credence_ca::SystemRandom),
        checkpoint_interval: Duration::from_secs(1),
        pdp_allow_sample: credence_server::authzen_api::ALLOW_SAMPLE,
        bundle_refresh_hint: None,
        external_issuers: Vec::new(),
        agent_listen,
    })
    .await
    .map_err(err)
}

fn report(name: &str, s: &Stage, floor: f64) {
    println!(
        "{name}:\n  {:>10.0} certs/s   p50 {:.2} ms   p99 {:.2} ms   {:.2} x floor   ({} certs in {:.1}s)",
        s.rate(),
        s.pct(0.50),
        s.pct(0.99),
        s.rate() / floor,
        s.ops,
        s.elapsed.as_secs_f64()
    );
}

/// Runs `concurrency` loops calling `op` until `d` has passed.
pub(crate) async fn drive<F, Fut>(concurrency: usize, d: Duration, op: F) -> Result<Stage, CliError>
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), CliError>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let op = op.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                op(i).await?;
                lat.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                i += concurrency;
            }
            Ok::<_, CliError>(lat)
        }));
    }
    tokio::time::sleep(d).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat_us = Vec::new();
    for t in tasks {
        lat_us.extend(t.await.map_err(err)??);
    }
    let elapsed = start.elapsed();
    lat_us.sort_unstable();
    Ok(Stage {
        ops: lat_us.len() as u64,
        elapsed,
        lat_us,
    })
}

fn sample_event(i: u64) -> credence_store::AuditRecord {
    let mut e = credence_store::AuditRecord::new(
        time::OffsetDateTime::now_utc(),
        credence_store::AuditActor {
            id: "admin".into(),
            auth: "admin_token".into(),
        },
        "x509.issue",
        "spiffe://bench.example/svc",
        credence_store::Outcome::Success,
    );
    e.request_id = Some(format!("{i:024x}"));
    e.client_addr = Some("127.0.0.1:40000".into());
    e.issuance = Some(credence_store::AuditIssuance {
        serial: format!("{i:032x}"),
        spiffe_id: "spiffe://bench.example/svc".into(),
        ttl_seconds: 3600,
        key_sha256: "ab".repeat(32),
    });
    e
}

pub(crate) fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

async fn audit_bench(
    duration: &str,
    concurrency: usize,
    entries: u64,
    durability: &str,
) -> Result<(), CliError> {
    use credence_audit::{Checkpoint, Ed25519NoteSigner, LogVerifier, hash_children, hash_leaf};
    let d = humantime::parse_duration(duration).map_err(err)?;
    let durability = credence_server::config::parse_durability(Some(durability)).map_err(err)?;
    if concurrency == 0 || concurrency > 4096 {
        return Err(err("--concurrency must be 1 to 4096"));
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "credence bench audit: {cores} cores, {duration} append stage, {concurrency} appenders, {entries} entries, durability {}",
        if durability == Durability::Full {
            "full"
        } else {
            "normal"
        }
    );
    // 1. floor: SHA-256 on one core (verification is single-threaded)
    let leaf = sample_event(1).leaf_bytes().map_err(err)?;
    let n = 200_000u32;
    let t = Instant::now();
    let mut h = [0u8; 32];
    for _ in 0..n {
        h = hash_leaf(&leaf);
    }
    let leaf_rate = f64::from(n) / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..n {
        h = hash_children(&h, &h);
    }
    let node_rate = f64::from(n) / t.elapsed().as_secs_f64();
    println!("raw SHA-256 floor (aws-lc-rs, one core):");
    println!(
        "  leaf hash ({} B)                 {leaf_rate:>10.0} /s   ({:.0} MB/s)",
        leaf.len(),
        leaf_rate * leaf.len() as f64 / 1e6
    );
    println!("  node hash (64 B)                 {node_rate:>10.0} /s");
    println!(
        "  per appended entry (leaf + ~1 node){:>8.0} /s",
        1.0 / (1.0 / leaf_rate + 1.0 / node_rate)
    );

    let dir = tempfile::tempdir().map_err(err)?;
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&dir.path().join("audit.db"), durability)
            .await
            .map_err(err)?,
    );

    // 2. durable appends from concurrent callers
    let stage = drive(concurrency, d, {
        let store = store.clone();
        move |i| {
            let store = store.clone();
            async move {
                store
                    .append_audit(sample_event(i as u64))
                    .await
                    .map(|_| ())
                    .map_err(err)
            }
        }
    })
    .await?;
    println!(
        "durable appends ({concurrency} concurrent callers, group commit):\n  {:>10.0} events/s   p50 {:.2} ms   p99 {:.2} ms   ({} events in {:.1}s)",
        stage.rate(),
        stage.pct(0.5),
        stage.pct(0.99),
        stage.ops,
        stage.elapsed.as_secs_f64()
    );

    // 3. grow the log to `entries` (bulk, 2,000 per transaction)
    let t = Instant::now();
    let (mut size, _) = store.audit_head().await.map_err(err)?;
    while size < entries {
        let k = (entries - size).min(2_000);
        let batch: Vec<_> = (0..k).map(|i| sample_event(size + i)).collect();
        store.append_audit_batch(batch).await.map_err(err)?;
        size += k;
    }
    let (size, root) = store.audit_head().await.map_err(err)?;
    eprintln!(
        "  (log grown to {size} entries in {:.1}s)",
        t.elapsed().as_secs_f64()
    );
    // let the background WAL checkpoint of the bulk load finish: the
    // measurements below are of steady state, not of that one-off copy
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 4. inclusion and consistency proofs at that size
    let mut lat = Vec::with_capacity(2_000);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..2_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let idx = x % size;
        let t = Instant::now();
        let p = credence_store::proofs::inclusion_proof(store.as_ref(), idx, size)
            .await
            .map_err(err)?;
        lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        if idx == 0 {
            let leaf0 = store.audit_leaves(0, 1).await.map_err(err)?;
            credence_audit::verify_inclusion(&hash_leaf(&leaf0[0].1), 0, size, &p, &root)
                .map_err(err)?;
        }
    }
    lat.sort_unstable();
    println!(
        "inclusion proof at {size} entries (from stored nodes):\n  p50 {:.3} ms   p99 {:.3} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    let t = Instant::now();
    let p = credence_store::proofs::consistency_proof(store.as_ref(), size / 3, size)
        .await
        .map_err(err)?;
    println!(
        "consistency proof {} -> {size}: {:.3} ms ({} hashes)",
        size / 3,
        t.elapsed().as_secs_f64() * 1000.0,
        p.len()
    );

    // 5. full verification: signature, every entry decoded canonically, root
    let signer = Ed25519NoteSigner::generate("bench.example/credence/audit").map_err(err)?;
    let note = Checkpoint::new("bench.example/credence/audit", size, root)
        .sign(&signer)
        .map_err(err)?;
    let t = Instant::now();
    let mut v = LogVerifier::new(&note, &[signer.verifier()]).map_err(err)?;
    // pages are read while the previous one is being verified
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Vec<u8>>>(2);
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut start = 0;
            while start < size {
                let page = store.audit_leaves(start, size).await.map_err(err)?;
                if page.is_empty() {
                    break;
                }
                start += page.len() as u64;
                let leaves = page.into_iter().map(|(_, l)| l).collect();
                if tx.send(leaves).await.is_err() {
                    break;
                }
            }
            Ok::<(), CliError>(())
        })
    };
    while let Some(page) = rx.recv().await {
        v = tokio::task::spawn_blocking(move || v.push_many(&page).map(|_| v))
            .await
            .map_err(err)?
            .map_err(err)?;
    }
    reader.await.map_err(err)??;
    v.finish().map_err(err)?;
    println!(
        "full verification of {size} entries (read, decode, hash, compare root): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    store.close().await;

    // 6. the same through the server, as `credence audit verify` does it
    let token = "bench-admin-token-0123456789";
    let running = start_server(
        &TrustDomain::new("bench.example").map_err(err)?,
        &dir.path().join("audit.db"),
        durability,
        token,
    )
    .await?;
    let client = crate::client::Client::new(
        Some(running.base_url.clone()),
        Some(token.to_owned()),
        None,
        None,
    )?;
    running.service.checkpoint().await.map_err(err)?;
    let t = Instant::now();
    let vkey = client.get_text("/v1/audit/key").await?;
    let verifier = credence_audit::Verifier::from_vkey(vkey.trim()).map_err(err)?;
    let note = client.get_text("/v1/audit/checkpoint").await?;
    let mut v = LogVerifier::new(&note, &[verifier]).map_err(err)?;
    let n = v.checkpoint().size;
    let leaves = crate::audit_cmd::fetch_leaves(&client, n, false).await?;
    let v = tokio::task::spawn_blocking(move || v.push_many(&leaves).map(|_| v))
        .await
        .map_err(err)?
        .map_err(err)?;
    v.finish().map_err(err)?;
    println!(
        "credence audit verify over HTTP, {n} entries (fetch, decode, hash, compare root): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    running.shutdown().await.map_err(err)?;
    Ok(())
}
