use std::os::unix::fs::PermissionsExt;

use crate::support::Dev;

#[test]
fn identity_lifecycle_through_the_cli() {
    let dev = Dev::start();
    let created = dev.json(&[
        "identity",
        "create",
        "--spiffe-id",
        "spiffe://example.org/agents/summarizer",
        "--kind",
        "agent",
        "--owner",
        "team-ml",
        "--label",
        "model=gpt-x",
        "--label",
        "config_sha256=abc123",
        "--selector",
        "unix:uid:1000",
        "--description",
        "summarizes tickets",
        "--max-ttl",
        "30m",
    ]);
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["kind"], "agent");
    assert_eq!(created["labels"]["model"], "gpt-x");
    assert_eq!(created["max_ttl_seconds"], 1800);
    assert_eq!(created["status"], "active");

    for (i, kind) in [
        "workload",
        "service",
        "bot",
        "device",
        "ci_job",
        "service_account",
    ]
    .iter()
    .enumerate()
    {
        dev.ok(&[
            "identity",
            "create",
            "--spiffe-id",
            &format!("spiffe://example.org/k/{i}"),
            "--kind",
            kind,
            "--owner",
            if i % 2 == 0 { "team-a" } else { "team-b" },
        ]);
    }

    // filters
    let l = dev.json(&["identity", "list", "--kind", "agent"]);
    assert_eq!(l["identities"].as_array().unwrap().len(), 1);
    let l = dev.json(&["identity", "list", "--owner", "team-a"]);
    assert_eq!(l["identities"].as_array().unwrap().len(), 3);
    let l = dev.json(&["identity", "list", "--label", "model=gpt-x"]);
    assert_eq!(l["identities"].as_array().unwrap().len(), 1);
    // pagination
    let p1 = dev.json(&["identity", "list", "--limit", "3"]);
    assert_eq!(p1["identities"].as_array().unwrap().len(), 3);
    let cur = p1["next_cursor"].as_str().unwrap().to_owned();
    let p2 = dev.json(&["identity", "list", "--limit", "3", "--cursor", &cur]);
    assert_eq!(p2["identities"].as_array().unwrap().len(), 3);
    assert_ne!(p1["identities"][0]["id"], p2["identities"][0]["id"]);
    let all = dev.json(&["identity", "list", "--limit", "2", "--all"]);
    assert_eq!(all["identities"].as_array().unwrap().len(), 7);

    // show by id and by SPIFFE ID; text output too
    let s = dev.json(&["identity", "show", &id]);
    assert_eq!(s["spiffe_id"], "spiffe://example.org/agents/summarizer");
    let text = dev.ok(&["identity", "show", "spiffe://example.org/agents/summarizer"]);
    assert!(
        text.contains("team-ml") && text.contains("model=gpt-x"),
        "{text}"
    );

    // update
    let u = dev.json(&[
        "identity",
        "update",
        &id,
        "--owner",
        "team-ml-2",
        "--label",
        "model=gpt-y",
    ]);
    assert_eq!(u["owner"], "team-ml-2");
    assert_eq!(u["labels"]["model"], "gpt-y");
    assert!(
        u["labels"].get("config_sha256").is_none(),
        "labels replaced"
    );

    // disable blocks issuance, enable restores it
    dev.ok(&["identity", "disable", &id]);
    let o = dev.cli(&[
        "jwt",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/agents/summarizer",
        "--audience",
        "a",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("disabled"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line reason: {err}");
    dev.ok(&["identity", "enable", &id]);
    let tok = dev.ok(&[
        "jwt",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/agents/summarizer",
        "--audience",
        "a",
    ]);
    assert_eq!(tok.trim().split('.').count(), 3, "the token alone: {tok}");
    let shown = dev.json(&["identity", "show", &id]);
    assert!(
        shown["last_issued_at"].is_string(),
        "last_issued_at recorded"
    );

    // delete
    dev.ok(&["identity", "delete", &id]);
    let o = dev.cli(&["identity", "show", &id]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
}

#[test]
fn x509_mint_writes_files_and_revoke_by_identity() {
    let dev = Dev::start();
    dev.ok(&[
        "identity",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--kind",
        "service",
        "--owner",
        "web",
    ]);
    let out = dev.path().join("svid");
    let out_s = out.to_str().unwrap();
    dev.ok(&[
        "x509",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--out",
        out_s,
    ]);
    let mode = std::fs::metadata(out.join("svid.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let chain = std::fs::read_to_string(out.join("svid.pem")).unwrap();
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf + intermediate"
    );
    let bundle = std::fs::read_to_string(out.join("bundle.pem")).unwrap();
    assert_eq!(
        bundle,
        std::fs::read_to_string(dev.path().join("bundle.pem")).unwrap()
    );
    let key = std::fs::read_to_string(out.join("svid.key")).unwrap();
    assert!(key.contains("BEGIN PRIVATE KEY"));

    // sign a CSR made by openssl-free means (rcgen) from a file
    let kp = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    let csr = p.serialize_request(&kp).unwrap().pem().unwrap();
    let csr_path = dev.path().join("req.csr");
    std::fs::write(&csr_path, csr).unwrap();
    let chain2 = dev.ok(&[
        "x509",
        "sign",
        "--csr",
        csr_path.to_str().unwrap(),
        "--spiffe-id",
        "spiffe://example.org/web",
    ]);
    assert!(chain2.starts_with("-----BEGIN CERTIFICATE-----"));

    let r = dev.json(&[
        "revoke",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--reason",
        "superseded",
    ]);
    assert_eq!(r["revoked"].as_array().unwrap().len(), 2);
    assert_eq!(r["revoked"][0]["reason"], "superseded");
    let o = dev.cli(&["revoke", "--serial", "zz"]);
    assert!(!o.status.success());
    let o = dev.cli(&["revoke", "--serial", "0badc0de", "--reason", "nope"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown revocation reason"));
}

#[test]
fn missing_address_and_bad_token_fail_with_one_line() {
    let o = std::process::Command::new(crate::support::BIN)
        .args(["identity", "list"])
        .env_remove("CREDENCE_ADDR")
        .env_remove("CREDENCE_DATA_DIR")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no server address"));
    let dev = Dev::start();
    let o = std::process::Command::new(crate::support::BIN)
        .args([
            "--addr",
            &dev.url,
            "--token",
            "wrong-token-value",
            "identity",
            "list",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("401"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);
}

/// A bad external issuer stops `credence dev` with the reason, before any
/// database or CA material is created.
#[test]
fn dev_refuses_a_bad_external_issuer_before_creating_anything() {
    let dir = tempfile::tempdir().unwrap();
    let issuers = dir.path().join("issuers.json");
    std::fs::write(
        &issuers,
        r#"[{"name": "ci", "issuer": "http://issuer.example", "audiences": ["x"]}]"#,
    )
    .unwrap();
    let data = dir.path().join("data");
    let o = std::process::Command::new(crate::support::BIN)
        .args(["dev", "--listen", "127.0.0.1:0", "--agent-listen", "off"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--external-issuers")
        .arg(&issuers)
        .env_remove("CREDENCE_DATA_DIR")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("must be https://"), "{err}");
    assert!(!data.join("credence.db").exists());
}
