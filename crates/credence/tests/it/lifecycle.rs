//! Start, restart, shutdown, and the TLS server mode.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{BIN, Dev};

#[test]
fn restart_reuses_ca_token_and_data_and_sigterm_is_clean() {
    let mut dev = Dev::start();
    dev.ok(&[
        "identity",
        "create",
        "--spiffe-id",
        "spiffe://example.org/keep",
        "--kind",
        "workload",
        "--owner",
        "o",
    ]);
    let bundle = std::fs::read_to_string(dev.path().join("bundle.pem")).unwrap();
    let token = dev.token.clone();
    let jwks = dev.http().get_public("/.well-known/jwks.json").json();
    let status = dev.stop();
    assert!(status.success(), "SIGTERM exits cleanly: {status:?}");
    let dir = std::mem::replace(&mut dev.dir, tempfile::tempdir().unwrap());
    drop(dev);

    let dev = Dev::start_in(dir);
    assert_eq!(dev.token, token, "admin token reused");
    assert_eq!(
        std::fs::read_to_string(dev.path().join("bundle.pem")).unwrap(),
        bundle,
        "root reused"
    );
    assert_eq!(
        dev.http().get_public("/.well-known/jwks.json").json(),
        jwks,
        "JWT key reused"
    );
    let v = dev.json(&["identity", "show", "spiffe://example.org/keep"]);
    assert_eq!(v["owner"], "o");
}

#[test]
fn dev_refuses_non_loopback_and_bad_trust_domain() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .args([
            "dev",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("loopback"));
    let o = Command::new(BIN)
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--trust-domain",
            "Bad.Org",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("lowercase"));
}

#[test]
fn server_mode_serves_tls_from_config() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    // a TLS certificate for the API listener
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(p("tls.crt"), ck.cert.pem()).unwrap();
    std::fs::write(p("tls.key"), ck.signing_key.serialize_pem()).unwrap();
    std::fs::write(p("kek.hex"), "11".repeat(32)).unwrap();
    std::fs::write(p("admin.token"), "server-admin-token-0123456789").unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = format!(
        r#"
trust_domain = "prod.example"
listen = "127.0.0.1:{port}"
data_dir = "{data}"
[tls]
cert_file = "{crt}"
key_file = "{key}"
[database]
durability = "full"
[ca]
key_encryption_key_file = "{kek}"
intermediate_ttl = "30d"
[issuance]
x509_default_ttl = "30m"
[admin]
token_file = "{tok}"
"#,
        data = p("data").display(),
        crt = p("tls.crt").display(),
        key = p("tls.key").display(),
        kek = p("kek.hex").display(),
        tok = p("admin.token").display(),
    );
    std::fs::write(p("server.toml"), cfg).unwrap();
    let mut child = Command::new(BIN)
        .args(["server", "--config", p("server.toml").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("https://localhost:{port}");
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args([
                "--addr",
                &url,
                "--token",
                "server-admin-token-0123456789",
                "--ca-file",
                p("tls.crt").to_str().unwrap(),
            ])
            .args(args)
            .env_remove("CREDENCE_DATA_DIR")
            .output()
            .unwrap()
    };
    let t0 = Instant::now();
    loop {
        let o = cli(&["identity", "list"]);
        if o.status.success() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "server did not come up: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = cli(&[
        "identity",
        "create",
        "--spiffe-id",
        "spiffe://prod.example/api",
        "--kind",
        "service",
        "--owner",
        "platform",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = cli(&[
        "--json",
        "x509",
        "mint",
        "--spiffe-id",
        "spiffe://prod.example/api",
        "--out",
        p("svid").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let nb = time::OffsetDateTime::parse(
        v["not_before"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let na = time::OffsetDateTime::parse(
        v["not_after"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        (na - nb).whole_minutes() <= 31,
        "configured default TTL applies"
    );
    // plain HTTP is not served
    let o = Command::new(BIN)
        .args([
            "--addr",
            &format!("http://127.0.0.1:{port}"),
            "--token",
            "x",
            "identity",
            "list",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    // without trusting the server's certificate the CLI refuses to talk
    let o = Command::new(BIN)
        .args([
            "--addr",
            &url,
            "--token",
            "server-admin-token-0123456789",
            "identity",
            "list",
        ])
        .env_remove("CREDENCE_CA_FILE")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
}

#[test]
fn server_config_errors_are_specific() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s.toml");
    std::fs::write(
        &cfg,
        "trust_domain = \"example.org\"\nlisten = \"127.0.0.1:0\"\nbogus = 1\n",
    )
    .unwrap();
    let o = Command::new(BIN)
        .args(["server", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("unknown field") && e.contains("bogus"), "{e}");
    let o = Command::new(BIN)
        .args(["server", "--config", "/nonexistent/credence.toml"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/credence.toml"));
}

#[test]
fn issued_certificates_survive_kill_9() {
    let mut dev = Dev::start();
    dev.ok(&[
        "identity",
        "create",
        "--spiffe-id",
        "spiffe://example.org/durable",
        "--kind",
        "service",
        "--owner",
        "o",
    ]);
    let h = dev.http();
    // concurrent issuance so that requests share group commits
    let serials: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let h = dev.http();
                    (0..10)
                        .map(|_| {
                            let r = h.post(
                                "/v1/x509/mint",
                                &serde_json::json!({"spiffe_id": "spiffe://example.org/durable"}),
                            );
                            assert_eq!(r.status, 200);
                            r.json()["serial"].as_str().unwrap().to_owned()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(serials.len(), 80);
    let r = h.post(
        "/v1/revocations",
        &serde_json::json!({"serial": serials[0], "reason": "key_compromise"}),
    );
    assert_eq!(r.status, 200);
    // SIGKILL: no shutdown path runs
    let mut child = dev.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let dir = std::mem::replace(&mut dev.dir, tempfile::tempdir().unwrap());
    drop(dev);
    let dev = Dev::start_in(dir);
    let h = dev.http();
    for s in &serials {
        let r = h.get(&format!("/v1/credentials/{s}"));
        assert_eq!(r.status, 200, "credential {s} lost after kill -9");
    }
    let first = h.get(&format!("/v1/credentials/{}", serials[0])).json();
    assert_eq!(
        first["revocation"]["reason"], "key_compromise",
        "revocation survived"
    );
}
