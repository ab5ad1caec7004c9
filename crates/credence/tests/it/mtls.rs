//! Two workloads authenticate each other over mutual TLS using only what
//! the Workload API gave them (fetched with py-spiffe, handshake by
//! Python's ssl module, i.e. OpenSSL): it works, and after one side's
//! identity is revoked its old certificate is refused.

use std::process::Command;

use crate::support::{Dev, have, have_py};

const PY_MTLS: &str = r#"
import os, socket, ssl, sys, threading
from cryptography.hazmat.primitives import serialization
from spiffe import WorkloadApiClient

sock, out_dir, crl, server_id, client_id = sys.argv[1:6]
reuse_client = len(sys.argv) > 6
c = WorkloadApiClient(socket_path="unix://" + sock)
svids = {str(s.spiffe_id): s for s in c.fetch_x509_svids()}
print("have", " ".join(sorted(svids)))
bundle = c.fetch_x509_bundles().get_bundle_for_trust_domain(svids[server_id].spiffe_id.trust_domain)

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

roots = write("bundle.pem", pem(bundle.x509_authorities))
srv_cert, srv_key = save("server", svids[server_id])
if reuse_client:
    cli_cert, cli_key = os.path.join(out_dir, "client.pem"), os.path.join(out_dir, "client.key")
else:
    cli_cert, cli_key = save("client", svids[client_id])

def uri(peer):
    return [v for k, v in peer.get("subjectAltName", ()) if k == "URI"]

srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
srv.load_cert_chain(srv_cert, srv_key)
srv.load_verify_locations(roots)
srv.load_verify_locations(crl)
srv.verify_mode = ssl.CERT_REQUIRED
srv.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
cli = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
cli.check_hostname = False  # SPIFFE: authorize by SPIFFE ID, not hostname
cli.load_cert_chain(cli_cert, cli_key)
cli.load_verify_locations(roots)

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
            if s.recv(1) == b"k":
                print("client ok", peer)
            else:
                print("client closed")
except Exception as e:
    print("client error", e)
t.join()
print("server", result.get("server"))
"#;

fn crl_pem(dev: &Dev, dir: &std::path::Path) -> String {
    let der = dir.join("crl.der");
    let pem = dir.join("crl.pem");
    dev.ok(&["crl", "--out", der.to_str().unwrap()]);
    let o = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-in"])
        .arg(&der)
        .arg("-out")
        .arg(&pem)
        .output()
        .unwrap();
    assert!(o.status.success());
    pem.to_str().unwrap().to_owned()
}

#[test]
fn mtls_between_two_workloads_then_revocation() {
    if !have("openssl") || !have_py("spiffe") || !have_py("cryptography") {
        return;
    }
    let dev = Dev::start();
    for name in ["svc-a", "svc-b"] {
        dev.register_for_me(&format!("spiffe://example.org/{name}"));
    }
    let work = tempfile::tempdir().unwrap();
    let sock = dev.path().join("agent.sock");
    let run = |crl: &str, reuse: bool| {
        let mut c = Command::new("python3");
        c.args(["-c", PY_MTLS])
            .arg(&sock)
            .arg(work.path())
            .arg(crl)
            .args(["spiffe://example.org/svc-a", "spiffe://example.org/svc-b"]);
        if reuse {
            c.arg("reuse");
        }
        let o = c.output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    };
    // give the in-process agent a moment to mint both SVIDs
    let t0 = std::time::Instant::now();
    let mut out = run(&crl_pem(&dev, work.path()), false);
    while !out.contains("svc-b") && t0.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(100));
        out = run(&crl_pem(&dev, work.path()), false);
    }
    assert!(
        out.contains("server ok spiffe://example.org/svc-b"),
        "{out}"
    );
    assert!(
        out.contains("client ok spiffe://example.org/svc-a"),
        "{out}"
    );

    // revoke svc-b: disable it (no new SVIDs) and revoke what it holds
    dev.ok(&["identity", "disable", "spiffe://example.org/svc-b"]);
    dev.ok(&[
        "revoke",
        "--spiffe-id",
        "spiffe://example.org/svc-b",
        "--reason",
        "key_compromise",
    ]);
    let out = run(&crl_pem(&dev, work.path()), true);
    assert!(!out.contains("spiffe://example.org/svc-b "), "{out}");
    assert!(out.contains("have spiffe://example.org/svc-a\n"), "{out}");
    assert!(out.contains("server error"), "{out}");
    assert!(out.contains("revoked"), "{out}");
    assert!(!out.contains("client ok"), "{out}");
}
