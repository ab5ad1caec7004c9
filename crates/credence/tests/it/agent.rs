//! The standalone `credence agent` against a running server: join-token
//! attestation, single-use tokens, re-attestation from the persisted SVID,
//! the Workload API as seen by py-spiffe, and eviction.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use credence_agent::generated::workload as pb;

use crate::support::{BIN, Dev, have_py, wait_for, with_header, workload_client};

struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent_cmd(dev: &Dev, dir: &Path, token: Option<&str>) -> Command {
    let addr = dev.path().join("agent-addr");
    wait_for(&addr, "agent-addr");
    let server = format!("https://{}", std::fs::read_to_string(addr).unwrap().trim());
    let mut c = Command::new(BIN);
    c.args(["agent", "--server", &server, "--trust-bundle"])
        .arg(dev.path().join("bundle.pem"))
        .arg("--data-dir")
        .arg(dir)
        .env_remove("CREDENCE_DATA_DIR")
        .env_remove("CREDENCE_JOIN_TOKEN");
    if let Some(t) = token {
        c.args(["--join-token", t]);
    }
    c
}

fn start_agent(dev: &Dev, dir: &Path, token: Option<&str>) -> Agent {
    start_agent_at(dev, dir, token, &dir.join("agent.sock"))
}

fn start_agent_at(dev: &Dev, dir: &Path, token: Option<&str>, socket: &Path) -> Agent {
    let socket = socket.to_path_buf();
    let _ = std::fs::remove_file(&socket);
    let child = agent_cmd(dev, dir, token)
        .arg("--socket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&socket, "the agent's socket");
    Agent { child, socket }
}

fn uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

async fn first_svid(sock: PathBuf) -> pb::X509svidResponse {
    let mut c = workload_client(sock).await;
    let mut s = c
        .fetch_x509svid(with_header(pb::X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

fn serial_of(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    hex::encode(cert.raw_serial())
}

const PY_CLIENT: &str = r#"
import sys
from spiffe import WorkloadApiClient
c = WorkloadApiClient(socket_path="unix://" + sys.argv[1])
svid = c.fetch_x509_svid()
print("x509", svid.spiffe_id)
bundles = c.fetch_x509_bundles()
print("x509-bundle", bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain) is not None)
jwt = c.fetch_jwt_svid(audience={"svc-b"})
print("jwt", jwt.spiffe_id)
ok = c.validate_jwt_svid(jwt.token, "svc-b")
print("validated", ok.spiffe_id)
try:
    c.validate_jwt_svid(jwt.token, "another-audience")
    print("wrong-audience accepted")
except Exception:
    print("wrong-audience refused")
jb = c.fetch_jwt_bundles()
print("jwt-bundle", jb.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain) is not None)
"#;

const PY_STREAM: &str = r#"
import sys, threading
from spiffe import WorkloadApiClient
c = WorkloadApiClient(socket_path="unix://" + sys.argv[1])
seen = []
rotated = threading.Event()
def ok(ctx):
    serial = format(ctx.default_svid.leaf.serial_number, "x")
    if not seen or seen[-1] != serial:
        seen.append(serial)
        print("serial", serial, flush=True)
    if len(seen) >= 2:
        rotated.set()
def err(e):
    print("error", e, flush=True)
h = c.stream_x509_contexts(on_success=ok, on_error=err, retry_connect=False)
sys.stdin.readline()
print("rotated" if rotated.wait(10) else "no rotation", flush=True)
h.cancel()
"#;

/// py-spiffe's stream sees a new SVID after the current one is revoked.
fn py_spiffe_sees_rotation(dev: &Dev, socket: &Path) {
    use std::io::{BufRead, BufReader, Write};
    let mut child = Command::new("python3")
        .args(["-c", PY_STREAM])
        .arg(socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let serial = line
        .trim()
        .strip_prefix("serial ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    // py-spiffe prints the serial as a number: no leading zeros
    dev.ok(&["revoke", "--serial", &format!("{serial:0>32}")]);
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    for l in out.lines() {
        rest.push_str(&l.unwrap());
        rest.push('\n');
    }
    assert!(child.wait().unwrap().success());
    assert!(rest.contains("rotated"), "{line}{rest}");
}

#[test]
fn agent_attests_serves_survives_restart_and_is_evicted() {
    let dev = Dev::start();
    dev.register_for_me("spiffe://example.org/agent-wl");
    let token = dev.json(&["node", "token", "create", "--ttl", "10m"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let mut agent = start_agent(&dev, dir.path(), Some(&token));

    // the token cannot be used twice
    let other = tempfile::tempdir().unwrap();
    let o = agent_cmd(&dev, other.path(), Some(&token))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("join token"), "{err}");

    let nodes = dev.json(&["node", "list"]);
    let nodes = nodes["items"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let node_id = nodes[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(nodes[0]["status"], "active");
    assert_eq!(
        nodes[0]["spiffe_id"],
        format!("spiffe://example.org/credence/agent/{node_id}")
    );
    // the agent key and SVID are kept, the key private
    let key_mode = std::fs::metadata(dir.path().join("agent.key"))
        .unwrap()
        .mode();
    assert_eq!(key_mode & 0o077, 0, "agent.key must be private");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let first = rt.block_on(first_svid(agent.socket.clone()));
    assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/agent-wl");
    let serial = serial_of(&first.svids[0].x509_svid);
    let cred = dev.http().get(&format!("/v1/credentials/{serial}")).json();
    assert_eq!(cred["spiffe_id"], "spiffe://example.org/agent-wl");

    // py-spiffe, a client we did not write
    if have_py("spiffe") {
        let o = Command::new("python3")
            .args(["-c", PY_CLIENT])
            .arg(&agent.socket)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        py_spiffe_sees_rotation(&dev, &agent.socket);
        for want in [
            "x509 spiffe://example.org/agent-wl",
            "x509-bundle True",
            "jwt spiffe://example.org/agent-wl",
            "validated spiffe://example.org/agent-wl",
            "wrong-audience refused",
            "jwt-bundle True",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
    }

    // an identity restricted to another node is not served here, until it
    // is restricted to this one
    dev.ok(&[
        "identity",
        "create",
        "--spiffe-id",
        "spiffe://example.org/pinned",
        "--kind",
        "workload",
        "--owner",
        "o",
        "--selector",
        &format!("unix:uid:{}", uid()),
        "--node",
        &"f".repeat(32),
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let ids = |r: &pb::X509svidResponse| {
        let mut v: Vec<String> = r.svids.iter().map(|s| s.spiffe_id.clone()).collect();
        v.sort();
        v
    };
    let got = rt.block_on(first_svid(agent.socket.clone()));
    assert_eq!(ids(&got), ["spiffe://example.org/agent-wl"]);
    dev.ok(&[
        "identity",
        "update",
        "spiffe://example.org/pinned",
        "--node",
        &node_id,
    ]);
    let t0 = std::time::Instant::now();
    let mut got = rt.block_on(first_svid(agent.socket.clone()));
    while got.svids.len() < 2 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        got = rt.block_on(first_svid(agent.socket.clone()));
    }
    assert_eq!(
        ids(&got),
        [
            "spiffe://example.org/agent-wl",
            "spiffe://example.org/pinned"
        ]
    );

    // a restart re-attests with the persisted SVID: no token, same node
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    drop(agent);
    let agent = start_agent(&dev, dir.path(), None);
    let again = rt.block_on(first_svid(agent.socket.clone()));
    assert_eq!(again.svids[0].spiffe_id, "spiffe://example.org/agent-wl");
    assert_eq!(
        dev.json(&["node", "list"])["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // eviction: the agent is refused, its workloads' SVIDs are revoked
    let held = serial_of(&again.svids[0].x509_svid);
    let mut agent = agent;
    rt.block_on(async {
        let mut c = workload_client(agent.socket.clone()).await;
        let mut s = c
            .fetch_x509svid(with_header(pb::X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        s.message().await.unwrap().unwrap();
        let v = dev.json(&["node", "evict", &node_id]);
        assert!(
            v["revoked"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == held.as_str()),
            "{v}"
        );
        let end = tokio::time::timeout(Duration::from_secs(5), s.message())
            .await
            .expect("the stream hears of the eviction");
        assert!(
            matches!(&end, Err(e) if e.code() == tonic::Code::PermissionDenied)
                || matches!(&end, Ok(None)),
            "{end:?}"
        );
    });
    let status = agent.child.wait().unwrap();
    assert!(!status.success(), "an evicted agent stops");
    assert_eq!(dev.json(&["node", "show", &node_id])["status"], "evicted");
    assert!(!dir.path().join("agent.pem").exists());
    // and cannot come back without a new token
    let o = agent_cmd(&dev, dir.path(), None).output().unwrap();
    assert!(!o.status.success());
}

const NOBODY: u32 = 65534;

/// Runs `credence workload x509` as `uid`.
fn fetch_as(uid: u32, socket: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["--json", "workload", "--socket"])
        .arg(socket)
        .arg("x509")
        .uid(uid)
        .gid(uid)
        .env_remove("CREDENCE_DATA_DIR")
        .output()
        .unwrap()
}

#[test]
fn a_process_of_another_uid_gets_only_its_own_identity() {
    if uid() != 0 {
        eprintln!("skipping: running a process as another uid needs root");
        return;
    }
    let probe = Command::new(BIN)
        .arg("--version")
        .uid(NOBODY)
        .gid(NOBODY)
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipping: the credence binary is not reachable by uid {NOBODY}");
        return;
    }
    let dev = Dev::start();
    for (name, owner_uid) in [("root-only", 0), ("nobody-only", NOBODY)] {
        dev.ok(&[
            "identity",
            "create",
            "--spiffe-id",
            &format!("spiffe://example.org/{name}"),
            "--kind",
            "workload",
            "--owner",
            "o",
            "--selector",
            &format!("unix:uid:{owner_uid}"),
        ]);
    }
    let token = dev.json(&["node", "token", "create"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    // the socket's directory: writable by the agent only, reachable by all
    let sock_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(sock_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = sock_dir.path().join("agent.sock");
    let _agent = start_agent_at(&dev, dir.path(), Some(&token), &socket);

    let ids = |o: std::process::Output| -> Vec<String> {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["svids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["spiffe_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let t0 = std::time::Instant::now();
    let mut mine = ids(fetch_as(0, &socket));
    while mine.is_empty() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        mine = ids(fetch_as(0, &socket));
    }
    assert_eq!(mine, ["spiffe://example.org/root-only"]);
    assert_eq!(
        ids(fetch_as(NOBODY, &socket)),
        ["spiffe://example.org/nobody-only"]
    );
    // with no identity of its own, the other uid is refused outright
    dev.ok(&["identity", "delete", "spiffe://example.org/nobody-only"]);
    std::thread::sleep(Duration::from_millis(500));
    let o = fetch_as(NOBODY, &socket);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("PermissionDenied"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        ids(fetch_as(0, &socket)),
        ["spiffe://example.org/root-only"]
    );
}

#[test]
fn agent_keeps_serving_its_cache_while_the_server_is_down() {
    let mut dev = Dev::start();
    dev.register_for_me("spiffe://example.org/steady");
    let token = dev.json(&["node", "token", "create"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&dev, dir.path(), Some(&token));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let before = rt.block_on(first_svid(agent.socket.clone()));
    assert!(dev.stop().success());
    std::thread::sleep(Duration::from_millis(500));
    let after = rt.block_on(first_svid(agent.socket.clone()));
    assert_eq!(
        serial_of(&after.svids[0].x509_svid),
        serial_of(&before.svids[0].x509_svid),
        "the cached SVID is still served"
    );
}

#[test]
fn agent_renews_its_svid_and_the_server_its_own() {
    let dev = Dev::start_with(tempfile::tempdir().unwrap(), &["--agent-svid-ttl", "4s"]);
    dev.register_for_me("spiffe://example.org/renewed");
    let token = dev.json(&["node", "token", "create"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&dev, dir.path(), Some(&token));
    let node = dev.json(&["node", "list"])["items"][0].clone();
    let id = node["id"].as_str().unwrap().to_owned();
    let first = node["agent_serial"].as_str().unwrap().to_owned();
    // well past the first SVID's expiry: renewed several times, still served
    std::thread::sleep(Duration::from_secs(6));
    let now = dev.json(&["node", "show", &id]);
    assert_ne!(now["agent_serial"].as_str().unwrap(), first);
    assert_eq!(now["status"], "active");
    // the agent still talks to the server: a new registration reaches it
    dev.register_for_me("spiffe://example.org/late");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut got = rt.block_on(first_svid(agent.socket.clone()));
    while got.svids.len() < 2 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        got = rt.block_on(first_svid(agent.socket.clone()));
    }
    assert_eq!(got.svids.len(), 2, "the renewed agent keeps syncing");
    assert!(!dir.path().join("agent.pem.tmp").exists());
}

/// A standalone node agent hands a federated trust domain's bundle to the
/// workloads whose identities federate with it, and follows its removal.
#[test]
fn standalone_agent_serves_federated_bundles() {
    let dev = Dev::start();
    let partner = Dev::start_domain(tempfile::tempdir().unwrap(), "partner.example", &[]);
    dev.ok(&[
        "federation",
        "add",
        "--trust-domain",
        "partner.example",
        "--bundle-endpoint",
        &format!("{}/bundle", partner.url),
    ]);
    dev.register_for_me_with(
        "spiffe://example.org/federated",
        &["--federates-with", "partner.example"],
    );
    let token = dev.json(&["node", "token", "create"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&dev, dir.path(), Some(&token));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let got = rt.block_on(first_svid(agent.socket.clone()));
    let bundle = got
        .federated_bundles
        .get("spiffe://partner.example")
        .expect("the partner's bundle is handed out");
    let pem = std::fs::read_to_string(partner.path().join("bundle.pem")).unwrap();
    let der: Vec<u8> = pem::parse_many(pem.as_bytes())
        .unwrap()
        .iter()
        .flat_map(|p| p.contents().to_vec())
        .collect();
    assert_eq!(
        bundle, &der,
        "the partner's roots, as the partner serves them"
    );

    // removing the relationship reaches the agent's stream
    dev.ok(&["federation", "remove", "partner.example"]);
    let t0 = std::time::Instant::now();
    loop {
        let got = rt.block_on(first_svid(agent.socket.clone()));
        if got.federated_bundles.is_empty() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "still handed out");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A Python OIDC issuer (discovery + JWKS over HTTP on loopback) and a
/// token it signed for a pod, written to files; serves until killed.
const PY_ISSUER: &str = r#"
import base64, http.server, json, os, sys, time
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

out = sys.argv[1]
key = ec.generate_private_key(ec.SECP256R1())
nums = key.public_key().public_numbers()
b64 = lambda n: base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()
jwks = {"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "x": b64(nums.x), "y": b64(nums.y)}]}
srv = http.server.HTTPServer(("127.0.0.1", 0), None)
url = "http://127.0.0.1:%d" % srv.server_address[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        doc = {"issuer": url, "jwks_uri": url + "/jwks"} if self.path.startswith("/.well-known") else jwks
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv.RequestHandlerClass = H
now = int(time.time())
tok = jwt.encode({"iss": url, "sub": "system:serviceaccount:infra:agent", "aud": "credence-nodes",
                  "namespace": "infra", "iat": now, "exp": now + 600},
                 key, algorithm="ES256", headers={"kid": "k1"})
open(os.path.join(out, "token"), "w").write(tok)
open(os.path.join(out, "issuers.tmp"), "w").write(json.dumps([{
    "name": "k8s", "issuer": url, "audiences": ["credence-nodes"], "algorithms": ["ES256"],
    "max_token_lifetime": 900, "allow_insecure_http": True}]))
os.rename(os.path.join(out, "issuers.tmp"), os.path.join(out, "issuers.json"))
srv.serve_forever()
"#;

#[test]
fn agent_attests_with_an_external_oidc_token_under_a_trust_rule() {
    if !have_py("jwt") || !have_py("cryptography") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let _issuer = crate::support::Killed(
        Command::new("python3")
            .args(["-c", PY_ISSUER])
            .arg(work.path())
            .spawn()
            .unwrap(),
    );
    wait_for(&work.path().join("issuers.json"), "the test issuer");
    let issuers = work.path().join("issuers.json");
    let dev = Dev::start_with(
        tempfile::tempdir().unwrap(),
        &["--external-issuers", issuers.to_str().unwrap()],
    );
    let rules = work.path().join("rules.cedar");
    std::fs::write(
        &rules,
        r#"@id("infra-nodes")
permit (principal is Credence::ExternalToken, action == Credence::Action::"attest_node", resource)
when { principal.issuer == "k8s" && principal.hasTag("namespace") && principal.getTag("namespace") == "infra" };
"#,
    )
    .unwrap();
    let schema = work.path().join("empty.cedarschema");
    std::fs::write(&schema, "").unwrap();
    dev.ok(&[
        "policy",
        "push",
        "--schema",
        schema.to_str().unwrap(),
        rules.to_str().unwrap(),
        "--activate",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let child = agent_cmd(&dev, dir.path(), None)
        .arg("--oidc-token-file")
        .arg(work.path().join("token"))
        .arg("--socket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _agent = Agent {
        child,
        socket: socket.clone(),
    };
    wait_for(&socket, "the agent's socket");
    let nodes = dev.json(&["node", "list"]);
    let found = nodes.to_string();
    assert!(found.contains("oidc:k8s"), "{found}");
}
