//! `credence bench policy`: policy decisions in process, indexed by scope,
//! beside Cedar evaluating the whole set (the "floor" to beat here is the
//! naive call, whose cost grows with the set).
//!
//! The set: one `permit` per team (`principal in Team::"tN"`, reading
//! documents the team owns), plus a few `forbid`s that every request must
//! evaluate (risk and classification guards, scoped only by type: in a
//! set that also governs Credence's own actions, a policy with no
//! principal, action or resource type would have to type-check against
//! those too). Entities: N
//! teams, N agents (one per team), documents owned by teams.
//!
//! After the indexed decisions, a fixed CPU loop as long as their median
//! runs as many times: its p99 is the tail the machine adds by itself
//! (on a VM, the hypervisor taking the core), for comparison.

use std::time::Instant;

use serde_json::json;

use credence_policy::{Engine, EntityRef, Query};

use crate::bench::percentile;
use crate::client::CliError;

const SCHEMA: &str = r#"
namespace Bench {
  entity Team;
  entity Agent in [Team] { risk: Long };
  entity Doc { owner: Team, classification: String };
  action read, write appliesTo { principal: Agent, resource: Doc, context: { hour: Long } };
}
"#;

fn err(e: impl std::fmt::Display) -> CliError {
    CliError(e.to_string())
}

fn policies(n: usize) -> String {
    let mut s = String::with_capacity(n * 160);
    for i in 0..n {
        s.push_str(&format!(
            "@id(\"team-{i}-reads-its-docs\") permit (principal in Bench::Team::\"t{i}\", action == Bench::Action::\"read\", resource) when {{ resource.owner == Bench::Team::\"t{i}\" }};\n"
        ));
    }
    s.push_str("@id(\"no-risky-agents\") forbid (principal is Bench::Agent, action, resource) when { principal.risk > 8 };\n");
    s.push_str("@id(\"no-secret-docs\") forbid (principal, action, resource is Bench::Doc) when { resource.classification == \"secret\" };\n");
    s.push_str("@id(\"office-hours\") forbid (principal, action == Bench::Action::\"write\", resource) when { context.hour < 8 || context.hour > 18 };\n");
    s
}

fn query(i: usize, n: usize) -> Query {
    let mut attrs = serde_json::Map::new();
    attrs.insert(
        "owner".into(),
        json!({"__entity": {"type": "Bench::Team", "id": format!("t{}", i % n)}}),
    );
    attrs.insert("classification".into(), json!("internal"));
    let mut context = serde_json::Map::new();
    context.insert("hour".into(), json!(10));
    Query {
        principal: Some(EntityRef::new("Bench::Agent", format!("a{}", i % n))),
        principal_attrs: serde_json::Map::new(),
        action: Some(EntityRef::new("Bench::Action", "read")),
        resource: Some(EntityRef::new("Bench::Doc", format!("doc-{i}"))),
        resource_attrs: attrs,
        context,
        entities: Vec::new(),
    }
}

/// Measures `count` decisions; returns their median in µs.
fn measure(
    name: &str,
    count: usize,
    n: usize,
    f: impl Fn(&Query) -> bool,
) -> Result<f64, CliError> {
    let mut lat = Vec::with_capacity(count);
    let t0 = Instant::now();
    for i in 0..count {
        let q = query(i * 7919, n);
        let t = Instant::now();
        let allowed = f(&q);
        lat.push(u32::try_from(t.elapsed().as_nanos() / 100).unwrap_or(u32::MAX));
        // agents with risk > 8 are refused, the rest read their team's docs
        let expect = (i * 7919 % n) % 10 <= 8;
        if allowed != expect {
            return Err(CliError(format!("{name}: wrong decision for request {i}")));
        }
    }
    let total = t0.elapsed();
    lat.sort_unstable();
    // percentile() reads thousandths of the unit; samples are in 0.1 µs
    let us = |p: f64| percentile(&lat, p) * 1000.0 / 10.0;
    println!(
        "{name}:\n  {:>10.0} decisions/s   p50 {:.1} µs   p99 {:.1} µs   ({count} decisions)",
        count as f64 / total.as_secs_f64(),
        us(0.50),
        us(0.99),
    );
    Ok(us(0.50))
}

/// The same number of runs of a fixed CPU loop as long as a median
/// decision: what the machine itself (interrupts, a hypervisor taking the
/// core) adds to the tail. On a busy or virtual machine the p99 of any
/// work this short is mostly this, not the work.
fn noise_floor(count: usize, us: f64) {
    let spin = |iters: u64| {
        let mut x = 1u64;
        for i in 0..iters {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        x
    };
    // iterations per µs, from the fastest of a few tries
    let probe = 200_000u64;
    let best = (0..5)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(spin(probe));
            t.elapsed()
        })
        .min()
        .unwrap_or_default();
    let per_us = probe as f64 / (best.as_secs_f64() * 1e6).max(1e-3);
    let iters = (per_us * us).max(1.0) as u64;
    let mut lat = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        std::hint::black_box(spin(iters));
        lat.push(u32::try_from(t.elapsed().as_nanos() / 100).unwrap_or(u32::MAX));
    }
    lat.sort_unstable();
    let at = |p: f64| percentile(&lat, p) * 1000.0 / 10.0;
    println!(
        "fixed CPU loop of the same median length (the machine's own tail):\n                           p50 {:.1} µs   p99 {:.1} µs   ({count} runs)",
        at(0.50),
        at(0.99),
    );
}

/// Which HTTP load generator drives the AuthZEN stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// Keep-alive hyper clients in this process (they share the cores
    /// with the server, so the rate is a lower bound).
    Builtin,
    /// `wrk` in a second process: the usual way HTTP servers are measured.
    Wrk,
    Both,
}

impl Load {
    pub fn parse(s: Option<&str>) -> Result<Self, CliError> {
        match s {
            None if which_wrk().is_some() => Ok(Self::Both),
            None => Ok(Self::Builtin),
            Some("builtin") => Ok(Self::Builtin),
            Some("wrk") => Ok(Self::Wrk),
            Some("both") => Ok(Self::Both),
            Some(o) => Err(err(format!("--load {o:?}: expected builtin, wrk or both"))),
        }
    }
}

fn which_wrk() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("wrk"))
        .find(|p| p.is_file())
}

pub async fn run(
    n: usize,
    decisions: usize,
    naive: usize,
    http: std::time::Duration,
    concurrency: usize,
    (load, wrk_threads): (Load, usize),
) -> Result<(), CliError> {
    let t = Instant::now();
    let mut engine = Engine::compile(SCHEMA, &policies(n)).map_err(err)?;
    let compiled = t.elapsed();
    let mut ents = Vec::with_capacity(2 * n);
    for i in 0..n {
        ents.push(json!({"uid": {"type": "Bench::Team", "id": format!("t{i}")}, "attrs": {}, "parents": []}));
        ents.push(json!({"uid": {"type": "Bench::Agent", "id": format!("a{i}")}, "attrs": {"risk": i % 10},
                         "parents": [{"type": "Bench::Team", "id": format!("t{i}")}]}));
    }
    engine.set_entities(&json!(ents)).map_err(err)?;
    println!(
        "policy bench: {} policies ({n} team-scoped + 3 type-scoped forbids), {} entities; compiled and validated in {:.2} s",
        n + 3,
        2 * n,
        compiled.as_secs_f64()
    );
    let median = measure("indexed (Credence)", decisions, n, |q| {
        engine.decide(q).allow
    })?;
    noise_floor(decisions, median);
    measure(
        "naive Cedar (whole set per request)",
        naive.max(1),
        n,
        |q| engine.decide_unindexed(q).allow,
    )?;
    if !http.is_zero() {
        http_stage(n, &ents, http, concurrency.max(1), (load, wrk_threads)).await?;
    }
    Ok(())
}

/// AuthZEN `POST /access/v1/evaluation` over keep-alive HTTP/1.1 on
/// loopback (one connection per client; the clients share the cores).
async fn http_stage(
    n: usize,
    ents: &[serde_json::Value],
    d: std::time::Duration,
    concurrency: usize,
    (load, wrk_threads): (Load, usize),
) -> Result<(), CliError> {
    use credence_server::policies::NewPolicySet;
    use credence_server::service::Actor;
    use std::sync::Arc;

    let dir = tempfile::tempdir().map_err(err)?;
    let td = credence_core::TrustDomain::new("bench.example").map_err(err)?;
    let token = "bench-admin-token-0123456789";
    let running = crate::bench::start_server(
        &td,
        &dir.path().join("bench.db"),
        credence_store::Durability::Normal,
        token,
    )
    .await?;
    let svc = running.service.clone();
    svc.create_policy_set(
        &Actor::admin(),
        NewPolicySet {
            schema: SCHEMA.to_owned(),
            policies: policies(n),
            namespace: Some("Bench".into()),
            note: None,
            activate: true,
        },
    )
    .await
    .map_err(err)?;
    svc.set_policy_entities(&Actor::admin(), &json!(ents))
        .await
        .map_err(err)?;
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
        (0..1024)
            .map(|i| {
                let i = i * 7919 % n;
                bytes::Bytes::from(
                    serde_json::to_vec(&json!({
                        "subject": {"type": "Agent", "id": format!("a{i}")},
                        "action": {"name": "read"},
                        "resource": {"type": "Doc", "id": format!("doc-{i}"), "properties": {
                            "owner": {"__entity": {"type": "Bench::Team", "id": format!("t{i}")}},
                            "classification": "internal"}},
                        "context": {"hour": 10},
                    }))
                    .unwrap_or_default(),
                )
            })
            .collect(),
    );
    json_in_process(&svc, &bodies)?;
    if load != Load::Wrk {
        builtin_load(&running, &bodies, token, d, concurrency).await?;
    }
    if load != Load::Builtin {
        wrk_load(running.addr, &bodies, token, d, (concurrency, wrk_threads)).await?;
    }
    running.shutdown().await.map_err(err)?;
    Ok(())
}

/// The server's own engine answering the same AuthZEN bodies without HTTP:
/// JSON parse, mapping onto Cedar, decision and response JSON. What the
/// HTTP stages add beyond this is transport, authentication and audit.
fn json_in_process(
    svc: &credence_server::service::Service,
    bodies: &[bytes::Bytes],
) -> Result<(), CliError> {
    let pdp = svc.pdp_or_builtin();
    let count = 20_000;
    let mut lat = Vec::with_capacity(count);
    let t0 = Instant::now();
    for i in 0..count {
        let t = Instant::now();
        let v: serde_json::Value =
            serde_json::from_slice(&bodies[i % bodies.len()]).map_err(err)?;
        let out = credence_policy::authzen::evaluation_owned(
            &pdp.engine,
            &pdp.mapping,
            v,
            &credence_policy::authzen::NoResolve,
        )
        .map_err(err)?;
        let bytes = serde_json::to_vec(&out.body).map_err(err)?;
        lat.push(u32::try_from(t.elapsed().as_nanos() / 100).unwrap_or(u32::MAX));
        std::hint::black_box(bytes);
    }
    let total = t0.elapsed();
    lat.sort_unstable();
    let us = |p: f64| percentile(&lat, p) * 1000.0 / 10.0;
    println!(
        "AuthZEN JSON in process (server's engine, no HTTP):\n  {:>10.0} decisions/s   p50 {:.1} µs   p99 {:.1} µs   ({count} decisions)",
        count as f64 / total.as_secs_f64(),
        us(0.50),
        us(0.99),
    );
    Ok(())
}

async fn builtin_load(
    running: &credence_server::runtime::Running,
    bodies: &std::sync::Arc<Vec<bytes::Bytes>>,
    token: &str,
    d: std::time::Duration,
    concurrency: usize,
) -> Result<(), CliError> {
    let bodies = bodies.clone();
    let senders = crate::bench::keepalive_clients(running.addr, concurrency).await?;
    let auth = format!("Bearer {token}");
    let host = running.addr.to_string();
    let stage = crate::bench::drive(concurrency, d, move |i| {
        let body = bodies[i % bodies.len()].clone();
        let sender = senders[i % concurrency].clone();
        let auth = auth.clone();
        let host = host.clone();
        async move {
            let (status, bytes) =
                crate::bench::post_json(&sender, &host, &auth, "/access/v1/evaluation", body)
                    .await?;
            if !status.is_success() || !bytes.starts_with(b"{\"decision\":") {
                return Err(err(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes)
                )));
            }
            Ok(())
        }
    })
    .await?;
    println!(
        "AuthZEN over HTTP, load from this process ({concurrency} keep-alive hyper clients sharing the cores):\n  {:>10.0} decisions/s   p50 {:.2} ms   p99 {:.2} ms   ({} decisions in {:.1}s)",
        stage.rate(),
        stage.pct(0.50),
        stage.pct(0.99),
        stage.ops,
        stage.elapsed.as_secs_f64()
    );
    Ok(())
}

/// The same requests from `wrk` in a second process (a Lua script cycles
/// through the bodies). The target is judged on this line: the server's
/// rate with a load generator that costs little CPU.
async fn wrk_load(
    addr: std::net::SocketAddr,
    bodies: &[bytes::Bytes],
    token: &str,
    d: std::time::Duration,
    (concurrency, threads): (usize, usize),
) -> Result<(), CliError> {
    let wrk = which_wrk().ok_or_else(|| err("wrk is not on PATH (apt-get install wrk)"))?;
    let dir = tempfile::tempdir().map_err(err)?;
    let mut lua = String::from(
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
    );
    lua.push_str(&format!(
        "wrk.headers[\"Authorization\"] = \"Bearer {token}\"\nlocal bodies = {{\n"
    ));
    for b in bodies {
        lua.push_str("[==[");
        lua.push_str(&String::from_utf8_lossy(b));
        lua.push_str("]==],\n");
    }
    // requests formatted once per thread, so wrk spends its CPU sending
    // rather than building requests in Lua (the usual wrk practice)
    lua.push_str(
        "}\nlocal reqs = {}\nlocal i = 0\ninit = function(args)\n  for k, b in ipairs(bodies) do reqs[k] = wrk.format(nil, nil, nil, b) end\nend\nrequest = function()\n  i = i + 1\n  return reqs[(i % #reqs) + 1]\nend\n",
    );
    let script = dir.path().join("authzen.lua");
    std::fs::write(&script, lua).map_err(err)?;
    let threads = threads.min(concurrency);
    let out = tokio::process::Command::new(wrk)
        .arg(format!("-t{threads}"))
        .arg(format!("-c{concurrency}"))
        .arg(format!("-d{}s", d.as_secs().max(1)))
        .arg("--latency")
        .arg("-s")
        .arg(&script)
        .arg(format!("http://{addr}/access/v1/evaluation"))
        .output()
        .await
        .map_err(err)?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(err(format!(
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let report =
        WrkReport::parse(&text).ok_or_else(|| err(format!("unexpected wrk output:\n{text}")))?;
    if report.bad > 0 {
        return Err(err(format!(
            "wrk saw {} failed responses:\n{text}",
            report.bad
        )));
    }
    println!(
        "AuthZEN over HTTP, load from wrk in a second process ({threads} thread{}, {concurrency} keep-alive connections; target >= 20,000/s):\n  {:>10.0} decisions/s   p50 {:.2} ms   p99 {:.2} ms   ({} decisions in {:.1}s)",
        if threads == 1 { "" } else { "s" },
        report.rate,
        report.p50_ms,
        report.p99_ms,
        report.requests,
        report.secs
    );
    Ok(())
}

/// What the bench reads from wrk's summary.
#[derive(Debug, PartialEq)]
struct WrkReport {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    secs: f64,
    /// Non-2xx responses plus socket errors
    bad: u64,
}

impl WrkReport {
    fn parse(text: &str) -> Option<Self> {
        fn ms(v: &str) -> Option<f64> {
            let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
            let n: f64 = num.parse().ok()?;
            Some(match unit {
                "us" => n / 1000.0,
                "ms" => n,
                "s" => n * 1000.0,
                "m" => n * 60_000.0,
                _ => return None,
            })
        }
        let mut r = WrkReport {
            rate: f64::NAN,
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            requests: 0,
            secs: 0.0,
            bad: 0,
        };
        for line in text.lines().map(str::trim) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["Requests/sec:", v] => r.rate = v.parse().ok()?,
                ["50%", v] => r.p50_ms = ms(v)?,
                ["99%", v] => r.p99_ms = ms(v)?,
                [n, "requests", "in", t, ..] => {
                    r.requests = n.parse().ok()?;
                    r.secs = ms(t.trim_end_matches(','))? / 1000.0;
                }
                ["Non-2xx", "or", "3xx", "responses:", v] => r.bad += v.parse::<u64>().ok()?,
                ["Socket", "errors:", rest @ ..] => {
                    for w in rest.chunks(2) {
                        if let [_, v] = w {
                            r.bad += v.trim_end_matches(',').parse::<u64>().ok()?;
                        }
                    }
                }
                _ => {}
            }
        }
        (r.rate.is_finite() && r.p99_ms.is_finite()).then_some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_summary() {
        let text = "Running 5s test @ http://127.0.0.1:1/access/v1/evaluation
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.85ms  610.33us  13.03ms   83.10%
    Req/Sec    11.31k   801.09     12.78k    74.00%
  Latency Distribution
     50%    2.79ms
     75%    3.02ms
     90%    3.44ms
     99%  850.00us
  112523 requests in 5.00s, 25.32MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  22499.12
Transfer/sec:      5.06MB
";
        let r = WrkReport::parse(text).unwrap();
        assert_eq!(r.requests, 112_523);
        assert!((r.rate - 22_499.12).abs() < 1e-6);
        assert!((r.p50_ms - 2.79).abs() < 1e-9);
        assert!((r.p99_ms - 0.85).abs() < 1e-9);
        assert!((r.secs - 5.0).abs() < 1e-9);
        assert_eq!(r.bad, 7);
        assert!(WrkReport::parse("garbage").is_none());
    }
}
