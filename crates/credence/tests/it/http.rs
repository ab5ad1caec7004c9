use serde_json::json;

use crate::support::Dev;

fn csr(uri: Option<&str>, is_ca: bool) -> String {
    let kp = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(u) = uri {
        p.subject_alt_names = vec![rcgen::SanType::URI(u.try_into().unwrap())];
    }
    if is_ca {
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    p.serialize_request(&kp).unwrap().pem().unwrap()
}

/// The last `n` audit records and the log size, read from the server's
/// database beside it (WAL lets a second connection read while it runs).
fn audit_read(dev: &Dev, n: usize) -> (Vec<credence_store::AuditRecord>, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use credence_store::Store;
        let s =
            credence_store::SqliteStore::open(&dev.path().join("credence.db"), Default::default())
                .await
                .unwrap();
        let total = s.audit_count().await.unwrap();
        let recs = if n == 0 {
            Vec::new()
        } else {
            s.list_audit(total.saturating_sub(n as u64), 1000)
                .await
                .unwrap()
        };
        s.close().await;
        (recs.into_iter().map(|(_, r)| r).collect(), total)
    })
}

fn audit_tail(dev: &Dev, n: usize) -> Vec<credence_store::AuditRecord> {
    audit_read(dev, n).0
}

fn audit_count(dev: &Dev) -> u64 {
    audit_read(dev, 0).1
}

#[test]
fn public_endpoints_need_no_token_and_admin_needs_one() {
    let dev = Dev::start();
    let h = dev.http();
    let r = h.get_public("/healthz");
    assert_eq!(r.status, 200);
    let oidc = h.get_public("/.well-known/openid-configuration").json();
    assert_eq!(oidc["issuer"], dev.url.as_str());
    assert!(
        oidc["jwks_uri"]
            .as_str()
            .unwrap()
            .ends_with("/.well-known/jwks.json")
    );
    assert_eq!(oidc["id_token_signing_alg_values_supported"][0], "ES256");
    let jwks = h.get_public("/.well-known/jwks.json");
    assert_eq!(jwks.status, 200);
    assert_eq!(jwks.json()["keys"][0]["kty"], "EC");
    let b = h.get_public("/bundle").json();
    let uses: Vec<&str> = b["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["use"].as_str().unwrap())
        .collect();
    assert!(uses.contains(&"x509-svid") && uses.contains(&"jwt-svid"));
    assert!(b["spiffe_sequence"].is_u64() && b["spiffe_refresh_hint"].is_u64());
    let crl = h.get_public("/crl");
    assert_eq!(crl.status, 200);
    assert_eq!(crl.content_type, "application/pkix-crl");

    // admin API: missing, wrong scheme, wrong token
    for auth in [
        None,
        Some("Basic abc"),
        Some("Bearer wrong"),
        Some("Bearer "),
    ] {
        let r = h.req("GET", "/v1/identities", auth, None, vec![]);
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(r.error_code(), "unauthorized");
    }
    assert_eq!(h.get("/v1/identities").status, 200);
    // every refused authentication is an audit record with the peer address
    let recs = audit_tail(&dev, 4);
    assert_eq!(recs.len(), 4);
    for r in &recs {
        assert_eq!(r.action, "admin.authenticate");
        assert_eq!(r.outcome, credence_store::Outcome::Failure);
        assert_eq!(r.target, "/v1/identities");
        assert!(
            r.client_addr.as_deref().unwrap().starts_with("127.0.0.1:"),
            "{r:?}"
        );
        assert!(r.reason.is_some());
    }
    // admin actions carry the caller's request id
    let r = h.req(
        "POST",
        "/v1/identities",
        Some(&format!("Bearer {}", dev.token)),
        Some("application/json"),
        br#"{"spiffe_id":"spiffe://example.org/rid","kind":"bot","owner":"o"}"#.to_vec(),
    );
    assert_eq!(r.status, 201);
    let last = audit_tail(&dev, 1).pop().unwrap();
    assert_eq!(last.action, "identity.create");
    assert!(last.request_id.is_some());
    assert_eq!(last.actor.auth, "admin_token");
    // unknown endpoint and wrong method are JSON errors too
    let r = h.get_public("/nope");
    assert_eq!(r.status, 404);
    r.error_code();
    let r = h.req("DELETE", "/healthz", None, None, vec![]);
    assert_eq!(r.status, 405);
    r.error_code();
}

#[test]
fn bad_input_is_refused_clearly_and_writes_nothing() {
    let dev = Dev::start();
    let h = dev.http();
    let r = h.post(
        "/v1/identities",
        &json!({"spiffe_id": "spiffe://example.org/web", "kind": "service", "owner": "web"}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let before = audit_count(&dev);

    let bad_ids = [
        ("spiffe://example.org/a/../b", "\"..\""),
        ("spiffe://Example.org/a", "lowercase"),
        ("spiffe://example.org/a?x=1", "query"),
        ("spiffe://example.org/a#f", "fragment"),
        ("spiffe://example.org/a//b", "empty segments"),
        ("https://example.org/a", "spiffe://"),
    ];
    for (id, want) in bad_ids {
        let r = h.post(
            "/v1/identities",
            &json!({"spiffe_id": id, "kind": "service", "owner": "o"}),
        );
        assert_eq!(r.status, 400, "{id}");
        r.error_code();
        assert!(r.message().contains(want), "{id}: {}", r.message());
    }
    // unknown fields, wrong kinds, wrong types
    let r = h.post("/v1/identities", &json!({"spiffe_id": "spiffe://example.org/x", "kind": "service", "owner": "o", "colour": "red"}));
    assert_eq!(r.status, 400);
    assert!(r.message().contains("unknown field"), "{}", r.message());
    let r = h.post(
        "/v1/identities",
        &json!({"spiffe_id": "spiffe://example.org/x", "kind": "robot", "owner": "o"}),
    );
    assert_eq!(r.status, 400);
    assert!(r.message().contains("robot"), "{}", r.message());
    let r = h.post(
        "/v1/identities",
        &json!({"spiffe_id": "spiffe://example.org/x", "kind": "service", "owner": ""}),
    );
    assert_eq!(r.status, 400);
    assert!(r.message().contains("owner"), "{}", r.message());
    // duplicate
    let r = h.post(
        "/v1/identities",
        &json!({"spiffe_id": "spiffe://example.org/web", "kind": "service", "owner": "web"}),
    );
    assert_eq!(r.status, 409);
    // wrong content type, malformed JSON, oversized body
    let r = h.post_raw("/v1/identities", "text/plain", b"{}".to_vec());
    assert_eq!(r.status, 415);
    assert_eq!(r.error_code(), "unsupported_media_type");
    let r = h.post_raw(
        "/v1/identities",
        "application/json",
        b"{\"spiffe_id\":".to_vec(),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "invalid_json");
    let r = h.post_raw("/v1/identities", "application/json", vec![b' '; 200 * 1024]);
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "payload_too_large");
    // bad query
    let r = h.get("/v1/identities?kind=robot");
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "invalid_query");
    let r = h.get("/v1/identities?limit=0");
    assert_eq!(r.status, 400);
    let r = h.get("/v1/identities?cursor=garbage!!");
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));

    // CSRs
    let web = "spiffe://example.org/web";
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (json!({"spiffe_id": web, "csr": "garbage"}), "invalid CSR"),
        (
            json!({"spiffe_id": web, "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}),
            "invalid CSR",
        ),
        (json!({"spiffe_id": web, "csr": csr(Some(web), true)}), "CA"),
        (
            json!({"spiffe_id": web, "csr": csr(Some("spiffe://example.org/other"), false)}),
            "asks for spiffe://example.org/other",
        ),
        (
            json!({"spiffe_id": web, "csr": csr(None, false), "ttl": "-5s"}),
            "ttl",
        ),
        (
            json!({"spiffe_id": web, "csr": csr(None, false), "ttl": 0}),
            "ttl",
        ),
    ];
    for (body, want) in cases {
        let r = h.post("/v1/x509/sign", &body);
        assert_eq!(
            r.status,
            400,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.error_code();
        assert!(r.message().contains(want), "want {want:?}: {}", r.message());
    }
    // a CSR whose signature does not verify (one bit flipped in the signature)
    let good = csr(None, false);
    let der = pem::parse(good.as_bytes()).unwrap().into_contents();
    let mut bad = der.clone();
    let n = bad.len();
    bad[n - 3] ^= 0x01;
    let bad_pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", bad));
    let r = h.post("/v1/x509/sign", &json!({"spiffe_id": web, "csr": bad_pem}));
    assert_eq!(r.status, 400);
    assert!(
        r.message().contains("signature") || r.message().contains("malformed"),
        "{}",
        r.message()
    );
    // unregistered identity
    let r = h.post(
        "/v1/x509/sign",
        &json!({"spiffe_id": "spiffe://example.org/nobody", "csr": csr(None, false)}),
    );
    assert_eq!(r.status, 404);
    // JWT: audience required
    let r = h.post("/v1/jwt/mint", &json!({"spiffe_id": web, "audience": []}));
    assert_eq!(r.status, 400);
    let r = h.post("/v1/jwt/mint", &json!({"spiffe_id": web}));
    assert_eq!(r.status, 400);
    assert!(r.message().contains("audience"), "{}", r.message());
    // revocation: exactly one target, unknown serial
    let r = h.post(
        "/v1/revocations",
        &json!({"serial": "01", "spiffe_id": web}),
    );
    assert_eq!(r.status, 400);
    let r = h.post("/v1/revocations", &json!({"serial": "0123456789abcdef"}));
    assert_eq!(r.status, 404);

    assert_eq!(audit_count(&dev), before, "refused requests wrote nothing");

    // and the good path still works afterwards
    let r = h.post(
        "/v1/x509/sign",
        &json!({"spiffe_id": web, "csr": csr(Some(web), false), "ttl": "10m"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(audit_count(&dev), before + 1);
}
