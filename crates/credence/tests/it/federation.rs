//! SPIFFE federation between two Credence servers (two `credence dev`
//! processes, trust domains a.example and b.example): each fetches the
//! other's bundle from its bundle endpoint; a workload of A authenticates
//! by mutual TLS to a service of B, the service trusting A through B's
//! federated copy of A's bundle as B's Workload API hands it out (fetched
//! with py-spiffe, handshake by Python's ssl module). A CA rotation in A
//! reaches B without a restart.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Dev, Killed, have_py};

const PY_FEDERATED_MTLS: &str = r#"
import os, socket, ssl, sys, threading
from cryptography.hazmat.primitives import serialization
from spiffe import WorkloadApiClient

a_sock, b_sock, out_dir, client_id, server_id = sys.argv[1:6]
ca = WorkloadApiClient(socket_path="unix://" + a_sock)
cb = WorkloadApiClient(socket_path="unix://" + b_sock)
a_svids = {str(s.spiffe_id): s for s in ca.fetch_x509_svids()}
b_svids = {str(s.spiffe_id): s for s in cb.fetch_x509_svids()}
client, server = a_svids[client_id], b_svids[server_id]
# what each side's own agent gives it for the other trust domain
def bundle_of(c, td):
    try:
        return c.fetch_x509_bundles().get_bundle_for_trust_domain(td)
    except Exception:
        return None

a_at_b = bundle_of(cb, client.spiffe_id.trust_domain)
b_at_a = bundle_of(ca, server.spiffe_id.trust_domain)
print("a-at-b", 0 if a_at_b is None else len(a_at_b.x509_authorities))
print("b-at-a", 0 if b_at_a is None else len(b_at_a.x509_authorities))
if a_at_b is None or b_at_a is None:
    sys.exit(0)

def pem(certs):
    return b"".join(x.public_bytes(serialization.Encoding.PEM) for x in certs)

def write(name, data):
    p = os.path.join(out_dir, name)
    with open(p, "wb") as f:
        f.write(data)
    return p

def save(prefix, svid):
    key = svid.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return write(prefix + ".pem", pem(svid.cert_chain)), write(prefix + ".key", key)

srv_cert, srv_key = save("server", server)
cli_cert, cli_key = save("client", client)

def uri(peer):
    return [v for k, v in peer.get("subjectAltName", ()) if k == "URI"]

srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
srv.load_cert_chain(srv_cert, srv_key)
srv.load_verify_locations(write("a-at-b.pem", pem(a_at_b.x509_authorities)))
srv.verify_mode = ssl.CERT_REQUIRED
cli = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
cli.check_hostname = False  # SPIFFE: authorize by SPIFFE ID, not hostname
cli.load_cert_chain(cli_cert, cli_key)
cli.load_verify_locations(write("b-at-a.pem", pem(b_at_a.x509_authorities)))

ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(1)
result = {}

def serve():
    conn, _ = ls.accept()
    try:
        with srv.wrap_socket(conn, server_side=True) as s:
            result["server"] = "ok " + " ".join(uri(s.getpeercert()))
            s.recv(1)
            s.sendall(b"k")
    except Exception as e:
        result["server"] = "error " + str(e)

t = threading.Thread(target=serve)
t.start()
try:
    with socket.create_connection(ls.getsockname()) as raw:
        with cli.wrap_socket(raw) as s:
            peer = " ".join(uri(s.getpeercert()))
            s.sendall(b"x")
            print("client ok" if s.recv(1) == b"k" else "client closed", peer)
except Exception as e:
    print("client error", e)
t.join()
print("server", result.get("server"))
"#;

fn register(dev: &Dev, spiffe_id: &str, federates_with: &str) {
    dev.register_for_me_with(spiffe_id, &["--federates-with", federates_with]);
}

fn sequence(dev: &Dev, td: &str) -> Option<u64> {
    dev.json(&["federation", "show", td])["bundle"]["sequence"].as_u64()
}

#[test]
fn two_servers_federate_and_a_workload_of_a_authenticates_to_a_service_of_b() {
    if !have_py("spiffe") || !have_py("cryptography") {
        return;
    }
    let hint = ["--bundle-refresh-hint", "1s"];
    let a = Dev::start_domain(tempfile::tempdir().unwrap(), "a.example", &hint);
    let b = Dev::start_domain(tempfile::tempdir().unwrap(), "b.example", &hint);
    // each trusts the other (plain HTTP is accepted for loopback endpoints)
    let out = b.ok(&[
        "federation",
        "add",
        "--trust-domain",
        "a.example",
        "--bundle-endpoint",
        &format!("{}/bundle", a.url),
    ]);
    assert!(out.contains("a.example") && out.contains("1 x509"), "{out}");
    a.ok(&[
        "federation",
        "add",
        "--trust-domain",
        "b.example",
        "--bundle-endpoint",
        &format!("{}/bundle", b.url),
    ]);
    register(&a, "spiffe://a.example/client", "b.example");
    register(&b, "spiffe://b.example/service", "a.example");

    let work = tempfile::tempdir().unwrap();
    let run = || {
        let o = Command::new("python3")
            .args(["-c", PY_FEDERATED_MTLS])
            .arg(a.path().join("agent.sock"))
            .arg(b.path().join("agent.sock"))
            .arg(work.path())
            .args(["spiffe://a.example/client", "spiffe://b.example/service"])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        (
            o.status.success(),
            format!("{out}\n{}", String::from_utf8_lossy(&o.stderr)),
        )
    };
    // the in-process agents mint the SVIDs and pick up the bundles
    let t0 = Instant::now();
    let mut got = run();
    while !(got.0 && got.1.contains("server ok")) && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        got = run();
    }
    let out = got.1;
    assert!(
        out.contains("a-at-b 1") && out.contains("b-at-a 1"),
        "{out}"
    );
    assert!(out.contains("server ok spiffe://a.example/client"), "{out}");
    assert!(
        out.contains("client ok spiffe://b.example/service"),
        "{out}"
    );

    // a rotation in A reaches B without restarting anything
    let before = sequence(&b, "a.example").unwrap();
    let a_seq = |dev: &Dev| {
        dev.http().get_public("/bundle").json()["spiffe_sequence"]
            .as_u64()
            .unwrap()
    };
    a.ok(&["ca", "rotate"]);
    let rotated = a_seq(&a);
    assert!(rotated > before);
    let t0 = Instant::now();
    while sequence(&b, "a.example") != Some(rotated) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "B did not pick up A's rotated bundle"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // a JWT key rotation in A changes the bundle's keys: B holds both
    // the old and the new key without a restart
    a.ok(&["jwt-key", "rotate", "--overlap", "1s"]);
    let t0 = Instant::now();
    while b.json(&["federation", "show", "a.example"])["bundle"]["jwt_keys"] != 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "B did not pick up A's new JWT key"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // the changes are in B's audit log
    let found = b.ok(&["audit", "search", "--action", "federation.bundle"]);
    assert!(found.lines().count() >= 3, "{found}");
    // a workload of A with an SVID from the new intermediate still gets in
    a.ok(&[
        "identity",
        "update",
        "spiffe://a.example/client",
        "--description",
        "re-issue",
    ]);
    let t0 = Instant::now();
    let mut got = run();
    while !(got.0 && got.1.contains("server ok")) && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        got = run();
    }
    assert!(
        got.1.contains("server ok spiffe://a.example/client"),
        "{}",
        got.1
    );

    // removing the relationship stops handing out A's bundle in B
    b.ok(&["federation", "remove", "a.example"]);
    let t0 = Instant::now();
    loop {
        let (_, out) = run();
        if out.contains("a-at-b 0") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{out}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A bundle endpoint of the `https_spiffe` profile (as SPIRE serves by
/// default): Python's ssl module serves A's bundle with an X509-SVID of A.
const PY_BUNDLE_ENDPOINT: &str = r#"
import http.server, ssl, sys
cert, key, bundle_file, port_file = sys.argv[1:5]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = open(bundle_file, "rb").read()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
open(port_file + ".tmp", "w").write(str(srv.server_address[1]))
import os; os.rename(port_file + ".tmp", port_file)
srv.serve_forever()
"#;

/// Serves `bundle` over TLS with `cert`/`key` on loopback (Python's ssl);
/// the guard and the URL.
fn bundle_endpoint(dir: &std::path::Path, cert: &str, key: &str, bundle: &str) -> (Killed, String) {
    let port_file = dir.join("port");
    let _ = std::fs::remove_file(&port_file);
    let server = Killed(
        Command::new("python3")
            .args(["-c", PY_BUNDLE_ENDPOINT, cert, key, bundle])
            .arg(&port_file)
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while !port_file.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "endpoint did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let port = std::fs::read_to_string(&port_file).unwrap();
    (server, format!("https://127.0.0.1:{port}/"))
}

/// An `https_web` endpoint with a private CA: trusted only with the CA
/// given as `--tls-roots`.
#[test]
fn https_web_bundle_endpoint_with_private_roots() {
    if !have_py("ssl") || !crate::support::have("openssl") {
        return;
    }
    let a = Dev::start_domain(tempfile::tempdir().unwrap(), "a.example", &[]);
    let b = Dev::start_domain(tempfile::tempdir().unwrap(), "b.example", &[]);
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n).to_str().unwrap().to_owned();
    // a private CA and a certificate for 127.0.0.1 it signed
    let openssl = |args: &[&str]| {
        let o = Command::new("openssl").args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let (ca_key, ca, key, csr, cert, ext) = (
        w("ca.key"),
        w("ca.pem"),
        w("tls.key"),
        w("tls.csr"),
        w("tls.pem"),
        w("ext"),
    );
    let mut req = vec!["req", "-x509"];
    req.extend(ec);
    req.extend([
        "-subj",
        "/CN=test CA",
        "-days",
        "1",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    openssl(&req);
    let mut req = vec!["req"];
    req.extend(ec);
    req.extend([
        "-subj",
        "/CN=bundle endpoint",
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    openssl(&req);
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        &cert,
        "-extfile",
        &ext,
    ]);
    let doc = a.http().get_public("/bundle").json().to_string();
    std::fs::write(w("bundle.json"), &doc).unwrap();
    let (_server, url) =
        bundle_endpoint(work.path(), &w("tls.pem"), &w("tls.key"), &w("bundle.json"));
    let add = |td: &str, roots: Option<&str>| {
        let mut args = vec![
            "--json",
            "federation",
            "add",
            "--trust-domain",
            td,
            "--bundle-endpoint",
            &url,
        ];
        if let Some(r) = roots {
            args.extend(["--tls-roots", r]);
        }
        let o = b.cli(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    // without the private CA the endpoint is not trusted (recorded, retried)
    let v = add("a.example", None);
    assert!(v["bundle"].is_null(), "{v}");
    assert!(
        v["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("cannot fetch"),
        "{v}"
    );
    b.ok(&["federation", "remove", "a.example"]);
    // with it, the bundle is fetched
    let v = add("a.example", Some(&ca));
    assert_eq!(v["last_error"], serde_json::Value::Null, "{v}");
    assert_eq!(v["bundle"]["x509_authorities"], 1, "{v}");
    // roots that are not PEM certificates are refused with a reason
    let o = b.cli(&[
        "federation",
        "add",
        "--trust-domain",
        "c.example",
        "--bundle-endpoint",
        &url,
        "--tls-roots",
        &w("bundle.json"),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("tls_roots_pem"));
}

#[test]
fn https_spiffe_bundle_endpoint_is_authenticated_by_the_foreign_bundle() {
    if !have_py("ssl") {
        return;
    }
    let a = Dev::start_domain(tempfile::tempdir().unwrap(), "a.example", &[]);
    let b = Dev::start_domain(tempfile::tempdir().unwrap(), "b.example", &[]);
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n).to_str().unwrap().to_owned();
    // the endpoint's SVID, and A's bundle as served (B gets it out of band)
    a.ok(&[
        "identity",
        "create",
        "--spiffe-id",
        "spiffe://a.example/bundle-endpoint",
        "--kind",
        "service",
        "--owner",
        "o",
    ]);
    a.ok(&[
        "x509",
        "mint",
        "--spiffe-id",
        "spiffe://a.example/bundle-endpoint",
        "--out",
        &w("svid"),
    ]);
    let doc = a.http().get_public("/bundle").json().to_string();
    std::fs::write(w("bundle.json"), &doc).unwrap();
    let (_server, url) = bundle_endpoint(
        work.path(),
        &w("svid/svid.pem"),
        &w("svid/svid.key"),
        &w("bundle.json"),
    );

    // the wrong SPIFFE ID is refused (the relationship keeps the given bundle)
    let add = |td: &str, id: &str| {
        b.cli(&[
            "--json",
            "federation",
            "add",
            "--trust-domain",
            td,
            "--bundle-endpoint",
            &url,
            "--profile",
            "https_spiffe",
            "--endpoint-spiffe-id",
            id,
            "--bundle",
            &w("bundle.json"),
        ])
    };
    let o = add("a.example", "spiffe://a.example/not-the-endpoint");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("instead of spiffe://a.example/not-the-endpoint"),
        "{v}"
    );
    assert_eq!(v["bundle"]["x509_authorities"], 1, "{v}");
    b.ok(&["federation", "remove", "a.example"]);

    // the right one: fetched over TLS authenticated by A's bundle
    let o = add("a.example", "spiffe://a.example/bundle-endpoint");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["last_error"], serde_json::Value::Null, "{v}");
    assert_eq!(v["profile"], "https_spiffe", "{v}");
    assert_eq!(v["bundle"]["jwt_keys"], 1, "{v}");

    // bad requests name what is wrong
    for (args, why) in [
        (
            vec!["--profile", "https_spiffe", "--bundle", &w("bundle.json")][..].to_vec(),
            "needs endpoint_spiffe_id",
        ),
        (
            vec![
                "--profile",
                "https_spiffe",
                "--endpoint-spiffe-id",
                "spiffe://c.example/x",
            ],
            "not in trust domain",
        ),
        (
            vec![
                "--profile",
                "https_spiffe",
                "--endpoint-spiffe-id",
                "spiffe://a.example/x",
            ],
            "obtained out of band",
        ),
        (vec!["--profile", "nope"], "unknown profile"),
    ] {
        let mut full = vec![
            "federation",
            "add",
            "--trust-domain",
            "a.example",
            "--bundle-endpoint",
            &url,
        ];
        full.extend(args);
        let o = b.cli(&full);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(why), "{full:?}: {err}");
    }
}
