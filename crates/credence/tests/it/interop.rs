//! Credence output checked by tools written by others.

use std::path::Path;

use serde_json::json;

use crate::support::{Dev, have, run, split_pem};

/// Mints an SVID into `dir`; returns (leaf, intermediate, root, serial hex).
fn mint(
    dev: &Dev,
    dir: &Path,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
    String,
) {
    let v = dev.json(&[
        "x509",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let chain = std::fs::read_to_string(dir.join("svid.pem")).unwrap();
    let parts = split_pem(&chain, dir, "chain");
    let roots = split_pem(
        &std::fs::read_to_string(dir.join("bundle.pem")).unwrap(),
        dir,
        "root",
    );
    (
        parts[0].clone(),
        parts[1].clone(),
        roots[0].clone(),
        v["serial"].as_str().unwrap().to_owned(),
    )
}

fn openssl_verify(
    bundle: &Path,
    inter: &Path,
    leaf: &Path,
    crl: Option<&Path>,
) -> std::process::Output {
    let mut args = vec![
        "verify",
        "-x509_strict",
        "-purpose",
        "sslclient",
        "-CAfile",
        bundle.to_str().unwrap(),
        "-untrusted",
        inter.to_str().unwrap(),
    ];
    if let Some(c) = crl {
        args.extend(["-crl_check", "-CRLfile", c.to_str().unwrap()]);
    }
    args.push(leaf.to_str().unwrap());
    run("openssl", &args)
}

#[test]
fn openssl_verifies_chain_and_honours_the_crl() {
    if !have("openssl") {
        return;
    }
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
    let dir = dev.path().join("o");
    let (leaf, inter, _root, serial) = mint(&dev, &dir);
    let bundle = dir.join("bundle.pem");
    let o = openssl_verify(&bundle, &inter, &leaf, None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let o = run(
        "openssl",
        &[
            "verify",
            "-x509_strict",
            "-purpose",
            "sslserver",
            "-CAfile",
            bundle.to_str().unwrap(),
            "-untrusted",
            inter.to_str().unwrap(),
            leaf.to_str().unwrap(),
        ],
    );
    assert!(
        o.status.success(),
        "serverAuth: {}",
        String::from_utf8_lossy(&o.stdout)
    );

    let fetch_crl = |name: &str| {
        let der = dir.join(format!("{name}.der"));
        dev.ok(&["crl", "--out", der.to_str().unwrap()]);
        let pem = dir.join(format!("{name}.pem"));
        let o = run(
            "openssl",
            &[
                "crl",
                "-inform",
                "DER",
                "-in",
                der.to_str().unwrap(),
                "-out",
                pem.to_str().unwrap(),
            ],
        );
        assert!(o.status.success());
        pem
    };
    let crl0 = fetch_crl("crl0");
    let o = openssl_verify(&bundle, &inter, &leaf, Some(&crl0));
    assert!(
        o.status.success(),
        "before revocation: {}",
        String::from_utf8_lossy(&o.stdout)
    );

    dev.ok(&["revoke", "--serial", &serial, "--reason", "key_compromise"]);
    let crl1 = fetch_crl("crl1");
    let o = openssl_verify(&bundle, &inter, &leaf, Some(&crl1));
    assert!(!o.status.success(), "revoked certificate must fail");
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(out.contains("certificate revoked"), "{out}");

    // CRL fields: number increments, nextUpdate present, reason recorded, signature verifies
    let text = |p: &Path| {
        String::from_utf8(
            run(
                "openssl",
                &["crl", "-in", p.to_str().unwrap(), "-noout", "-text"],
            )
            .stdout,
        )
        .unwrap()
    };
    let t0 = text(&crl0);
    let t1 = text(&crl1);
    let number = |t: &str| -> u64 {
        let line = t
            .lines()
            .skip_while(|l| !l.contains("X509v3 CRL Number"))
            .nth(1)
            .unwrap();
        line.trim().parse().unwrap()
    };
    assert!(number(&t1) > number(&t0), "{t0}\n{t1}");
    assert!(t1.contains("Next Update"));
    assert!(t1.contains("Key Compromise"), "{t1}");
    assert!(t1.to_uppercase().contains(&serial.to_uppercase()), "{t1}");
    let o = run(
        "openssl",
        &[
            "crl",
            "-in",
            crl1.to_str().unwrap(),
            "-noout",
            "-CAfile",
            inter.to_str().unwrap(),
        ],
    );
    assert!(
        o.status.success(),
        "CRL signed by the intermediate: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn pkilint_finds_no_errors() {
    if !have("lint_pkix_cert") {
        return;
    }
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
    let dir = dev.path().join("p");
    let (leaf, inter, root, serial) = mint(&dev, &dir);
    for (name, cert) in [("leaf", &leaf), ("intermediate", &inter), ("root", &root)] {
        let o = run(
            "lint_pkix_cert",
            &["lint", "-s", "ERROR", cert.to_str().unwrap()],
        );
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        // pkilint's URI check rejects the spiffe scheme (a known false positive).
        let real: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("(ERROR)") || l.contains("(FATAL)"))
            .filter(|l| !l.contains("pkix.invalid_uri_syntax"))
            .collect();
        assert!(real.is_empty(), "{name}: {out}");
    }
    for (issuer, subject) in [(&inter, &leaf), (&root, &inter)] {
        let o = run(
            "lint_pkix_signer_signee_cert_chain",
            &[
                "lint",
                "-s",
                "ERROR",
                issuer.to_str().unwrap(),
                subject.to_str().unwrap(),
            ],
        );
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            !out.contains("(ERROR)") && !out.contains("(FATAL)"),
            "chain: {out}"
        );
    }
    dev.ok(&["revoke", "--serial", &serial]);
    let crl = dir.join("crl.der");
    dev.ok(&["crl", "--out", crl.to_str().unwrap()]);
    let o = run(
        "lint_crl",
        &[
            "lint",
            "-s",
            "WARNING",
            "-t",
            "CRL",
            "-p",
            "PKIX",
            crl.to_str().unwrap(),
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.trim().is_empty(), "CRL findings: {out}");
}

#[test]
fn pyjwt_verifies_jwt_svid_from_published_jwks() {
    if !have("python3") {
        return;
    }
    let has_jwt = run("python3", &["-c", "import jwt, cryptography"])
        .status
        .success();
    if !has_jwt {
        assert!(
            std::env::var_os("CI").is_none(),
            "pyjwt[crypto] is required in CI"
        );
        eprintln!("skipping: pyjwt not installed");
        return;
    }
    let dev = Dev::start();
    dev.ok(&[
        "identity",
        "create",
        "--spiffe-id",
        "spiffe://example.org/agent",
        "--kind",
        "agent",
        "--owner",
        "ml",
    ]);
    let token = dev.ok(&[
        "jwt",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/agent",
        "--audience",
        "billing-api",
    ]);
    let token = token.trim();
    let script = r#"
import json, sys, urllib.request, jwt
base, token, aud = sys.argv[1:4]
conf = json.load(urllib.request.urlopen(base + "/.well-known/openid-configuration"))
key = jwt.PyJWKClient(conf["jwks_uri"]).get_signing_key_from_jwt(token)
claims = jwt.decode(token, key.key, algorithms=["ES256"], audience=aud,
                    options={"require": ["exp", "iat", "sub", "aud", "jti"]})
print(json.dumps(claims))
"#;
    let o = run("python3", &["-c", script, &dev.url, token, "billing-api"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(claims["sub"], "spiffe://example.org/agent");
    assert_eq!(claims["aud"], "billing-api");
    let ttl = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(ttl, 300, "default 5 minutes");
    // wrong audience is refused by the independent library
    let o = run("python3", &["-c", script, &dev.url, token, "other-api"]);
    assert!(!o.status.success());
}

#[test]
fn jsonwebtoken_verifies_with_bundle_jwt_key() {
    let dev = Dev::start();
    dev.ok(&[
        "identity",
        "create",
        "--spiffe-id",
        "spiffe://example.org/a",
        "--kind",
        "bot",
        "--owner",
        "o",
    ]);
    let h = dev.http();
    let r = h.post(
        "/v1/jwt/mint",
        &json!({"spiffe_id": "spiffe://example.org/a", "audience": ["x", "y"], "ttl": "2m"}),
    );
    assert_eq!(r.status, 200);
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    let bundle = h.get_public("/bundle").json();
    let jwk = bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["use"] == "jwt-svid" && k["kid"].as_str() == header.kid.as_deref())
        .expect("kid resolvable in the bundle")
        .clone();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["y"]);
    v.set_required_spec_claims(&["exp", "sub", "aud"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v).unwrap();
    assert_eq!(data.claims["aud"], json!(["x", "y"]));
    assert_eq!(
        data.claims["exp"].as_i64().unwrap() - data.claims["iat"].as_i64().unwrap(),
        120
    );
    assert!(data.claims["jti"].as_str().unwrap().len() >= 32);
}
