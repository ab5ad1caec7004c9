//! `credence bench agent`: the node agent as workloads and operators see it.
//!
//! A server runs in this process with its agent API on loopback; a real
//! `credence agent` child process attests with a join token and caches one
//! X509-SVID per registered identity (`--svids` of them, plus one that
//! matches this process). Measured:
//! 1. floor: one P-256 key generation + CSR, and one ECDSA P-256 signature;
//! 2. fetch: `FetchX509SVID` first answer on an attested workload's open
//!    connection (peer credentials, cached executable digest, selector match);
//! 3. new workload: connect + attest + first SVID, a fresh connection each;
//! 4. agent memory (VmRSS of the agent process) with all SVIDs cached;
//! 5. push: revoke the workload's SVID in the control plane and time until
//!    the replacement arrives on the workload's open stream (through the
//!    agent's watch stream, a sync, a new CSR signed over mTLS).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use credence_agent::generated::workload as pb;
use credence_agent::generated::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use credence_core::{RevocationReason, SpiffeId, TrustDomain};
use credence_server::service::{Actor, NewIdentity, RevokeTarget};
use credence_store::Durability;

use crate::bench::{percentile, start_server_with};
use crate::client::CliError;

fn err(e: impl std::fmt::Display) -> CliError {
    CliError(e.to_string())
}

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        credence_agent::workload_api::SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    r
}

async fn connect(
    path: &Path,
) -> Result<SpiffeWorkloadApiClient<tonic::transport::Channel>, CliError> {
    let path = path.to_path_buf();
    let channel = tonic::transport::Endpoint::try_from("http://localhost")
        .map_err(err)?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .map_err(err)?;
    Ok(SpiffeWorkloadApiClient::new(channel))
}

async fn first_answer(
    c: &mut SpiffeWorkloadApiClient<tonic::transport::Channel>,
) -> Result<pb::X509svidResponse, CliError> {
    let mut s = c
        .fetch_x509svid(request(pb::X509svidRequest {}))
        .await
        .map_err(err)?
        .into_inner();
    s.message()
        .await
        .map_err(err)?
        .ok_or_else(|| CliError("stream ended".into()))
}

fn serial_of(resp: &pb::X509svidResponse) -> Result<String, CliError> {
    let leaf = resp
        .svids
        .first()
        .ok_or_else(|| CliError("no SVID".into()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf.x509_svid).map_err(err)?;
    Ok(hex::encode(cert.raw_serial()))
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn line(name: &str, mut v: Vec<u32>) {
    v.sort_unstable();
    println!(
        "{name}:\n  p50 {:.3} ms   p99 {:.3} ms   max {:.3} ms   ({} samples)",
        percentile(&v, 0.50),
        percentile(&v, 0.99),
        percentile(&v, 1.0),
        v.len()
    );
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut f: F) -> Result<(), CliError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !f().await {
        if t0.elapsed() > limit {
            return Err(CliError(format!("timed out waiting for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

pub async fn run(
    svids: usize,
    fetches: usize,
    connects: usize,
    revocations: usize,
) -> Result<(), CliError> {
    let td = TrustDomain::new("bench.example").map_err(err)?;
    let dir = tempfile::tempdir().map_err(err)?;
    let running = start_server_with(
        &td,
        &dir.path().join("bench.db"),
        Durability::Normal,
        "bench-admin-token-0123456789",
        Some("127.0.0.1:0".parse().map_err(err)?),
    )
    .await?;
    let svc = running.service.clone();
    let agent_addr = running
        .agent_addr
        .ok_or_else(|| CliError("no agent API".into()))?;

    println!("agent bench: {svids} cached SVIDs, loopback, 2 processes (server+bench, agent)");
    // 1. floor
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        credence_agent::agent::key_and_csr("spiffe://bench.example/floor").map_err(err)?;
    }
    let keygen = t.elapsed() / n;
    let key = credence_ca::SoftwareKey::generate().map_err(err)?;
    let t = Instant::now();
    for _ in 0..n {
        credence_ca::Signer::sign_x509(&key, b"floor").map_err(err)?;
    }
    let sign = t.elapsed() / n;
    println!(
        "floor:\n  P-256 key + CSR {:.3} ms   ECDSA P-256 sign {:.3} ms",
        keygen.as_secs_f64() * 1e3,
        sign.as_secs_f64() * 1e3
    );

    // registrations: one for this process, the rest for nobody here
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .map_err(err)?;
    let me = SpiffeId::parse("spiffe://bench.example/workload").map_err(err)?;
    let new = |id: &str, selectors: Vec<String>| -> Result<NewIdentity, CliError> {
        serde_json::from_value(json!({
            "spiffe_id": id, "kind": "workload", "owner": "bench", "selectors": selectors,
        }))
        .map_err(err)
    };
    svc.create_identity(
        &Actor::admin(),
        new(me.as_str(), vec![format!("unix:uid:{uid}")])?,
    )
    .await
    .map_err(err)?;
    let admin = Actor::admin();
    let t = Instant::now();
    for chunk in (0..svids).collect::<Vec<_>>().chunks(256) {
        let mut batch = Vec::with_capacity(chunk.len());
        for i in chunk {
            batch.push(new(
                &format!("spiffe://bench.example/other/{i}"),
                vec!["unix:uid:4000000000".into(), format!("unix:gid:{i}")],
            )?);
        }
        let results =
            futures::future::join_all(batch.into_iter().map(|n| svc.create_identity(&admin, n)))
                .await;
        for r in results {
            r.map_err(err)?;
        }
    }
    eprintln!(
        "  (registered {} identities in {:.1}s)",
        svids + 1,
        t.elapsed().as_secs_f64()
    );

    // the agent, as its own process
    let token = svc
        .create_join_token(&Actor::admin(), time::Duration::minutes(10))
        .await
        .map_err(err)?;
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, svc.authority().bundle_pem()).map_err(err)?;
    let socket = dir.path().join("agent.sock");
    let before = svc.store.audit_count().await.map_err(err)?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(std::env::current_exe().map_err(err)?)
        .arg("agent")
        .arg("--server")
        .arg(format!("https://{agent_addr}"))
        .arg("--trust-bundle")
        .arg(&bundle)
        .arg("--join-token")
        .arg(&token.token)
        .arg("--data-dir")
        .arg(dir.path().join("agent"))
        .arg("--socket")
        .arg(&socket)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(err)?;
    let pid = child.id().unwrap_or(0);
    wait_until("the agent's socket", Duration::from_secs(60), || {
        let s = socket.clone();
        async move { s.exists() }
    })
    .await?;
    // every SVID signed: node attest + one issuance per identity
    let want = before + 1 + svids as u64 + 1;
    wait_until("the agent's SVIDs", Duration::from_secs(600), || {
        let svc = svc.clone();
        async move { svc.store.audit_count().await.unwrap_or(0) >= want }
    })
    .await?;
    println!(
        "agent start (attest + {} SVIDs signed over mTLS):\n  {:.2} s",
        svids + 1,
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    match rss_kib(pid) {
        Some(kib) => println!(
            "agent memory with {} SVIDs:\n  {:.1} MiB RSS   (target < 100 MiB)",
            svids + 1,
            kib as f64 / 1024.0
        ),
        None => println!("agent memory: unavailable"),
    }

    // 2. fetch on an attested workload's connection
    let mut c = connect(&socket).await?;
    let t = Instant::now();
    let first = first_answer(&mut c).await?;
    let cold = t.elapsed();
    if first.svids.len() != 1 {
        return Err(CliError(format!(
            "expected 1 SVID for this process, got {}",
            first.svids.len()
        )));
    }
    let mut v = Vec::with_capacity(fetches);
    for _ in 0..fetches {
        let t = Instant::now();
        first_answer(&mut c).await?;
        v.push(micros(t.elapsed()));
    }
    line("FetchX509SVID, attested workload (target p99 < 5 ms)", v);

    // 3. new workloads: connect, attest, first SVID
    println!(
        "first SVID of the first workload (executable digest not cached):\n  {:.3} ms",
        cold.as_secs_f64() * 1e3
    );
    let mut v = Vec::with_capacity(connects);
    for _ in 0..connects {
        let t = Instant::now();
        let mut c = connect(&socket).await?;
        first_answer(&mut c).await?;
        v.push(micros(t.elapsed()));
    }
    line("new workload: connect + attest + first SVID", v);

    // 5. push latency of revocations
    let mut stream = c
        .fetch_x509svid(request(pb::X509svidRequest {}))
        .await
        .map_err(err)?
        .into_inner();
    let mut current = serial_of(
        &stream
            .message()
            .await
            .map_err(err)?
            .ok_or_else(|| CliError("stream ended".into()))?,
    )?;
    let mut v = Vec::with_capacity(revocations);
    for _ in 0..revocations {
        svc.revoke(
            &Actor::admin(),
            RevokeTarget::Serial(current.clone()),
            RevocationReason::KeyCompromise,
        )
        .await
        .map_err(err)?;
        let t = Instant::now();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .map_err(|_| CliError("no push within 10 s".into()))?
                .map_err(err)?
                .ok_or_else(|| CliError("stream ended".into()))?;
            let s = serial_of(&msg)?;
            if s != current {
                current = s;
                break;
            }
        }
        v.push(micros(t.elapsed()));
    }
    line(
        "revocation push: revoke returned -> replacement on the workload's stream (target p99 < 1 s)",
        v,
    );

    let _ = child.start_kill();
    let _ = child.wait().await;
    running.shutdown().await.map_err(err)?;
    Ok(())
}
