//! External OIDC issuers: a real HTTP issuer in the test (discovery + JWKS,
//! counting its requests) and the tokens the verifier must refuse.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use base64::Engine as _;
use serde_json::{Value, json};
use time::OffsetDateTime;

use credence_server::oidc::{ExternalIssuer, OidcError, Verifier};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

struct Key {
    kid: String,
    pkcs8: Vec<u8>,
    raw: Vec<u8>,
}

fn key(kid: &str) -> Key {
    let k = rcgen::KeyPair::generate().unwrap();
    Key {
        kid: kid.into(),
        pkcs8: k.serialize_der(),
        raw: k.public_key_raw().to_vec(),
    }
}

fn jwk(k: &Key) -> Value {
    json!({"kty": "EC", "crv": "P-256", "kid": k.kid, "use": "sig", "alg": "ES256",
           "x": B64.encode(&k.raw[1..33]), "y": B64.encode(&k.raw[33..65])})
}

#[derive(Clone)]
struct Issuer {
    url: String,
    jwks: Arc<Mutex<Value>>,
    discovery_issuer: Arc<Mutex<Option<String>>>,
    hits: Arc<Mutex<u32>>,
}

async fn discovery(State(s): State<Issuer>) -> Json<Value> {
    *s.hits.lock().unwrap() += 1;
    let iss = s
        .discovery_issuer
        .lock()
        .unwrap()
        .clone()
        .unwrap_or(s.url.clone());
    Json(json!({"issuer": iss, "jwks_uri": format!("{}/jwks", s.url)}))
}

async fn jwks(State(s): State<Issuer>) -> Json<Value> {
    *s.hits.lock().unwrap() += 1;
    Json(s.jwks.lock().unwrap().clone())
}

async fn start(keys: &[&Key]) -> Issuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = Issuer {
        url,
        jwks: Arc::new(Mutex::new(
            json!({"keys": keys.iter().map(|k| jwk(k)).collect::<Vec<_>>()}),
        )),
        discovery_issuer: Arc::new(Mutex::new(None)),
        hits: Arc::new(Mutex::new(0)),
    };
    let app = axum::Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    state
}

fn config(iss: &Issuer) -> ExternalIssuer {
    serde_json::from_value(json!({
        "name": "ci", "issuer": iss.url, "audiences": ["https://credence.example"],
        "max_token_lifetime": 900, "allow_insecure_http": true,
    }))
    .unwrap()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap()
}

fn claims(iss: &Issuer) -> Value {
    let t = now().unix_timestamp();
    json!({"iss": iss.url, "sub": "repo:acme/api:ref:refs/heads/main", "aud": "https://credence.example",
           "iat": t - 10, "exp": t + 290, "repository": "acme/api", "ref": "refs/heads/main"})
}

fn sign(k: &Key, claims: &Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some(k.kid.clone());
    jsonwebtoken::encode(
        &h,
        claims,
        &jsonwebtoken::EncodingKey::from_ec_der(&k.pkcs8),
    )
    .unwrap()
}

/// A token with any header, signed by nothing or by `sig`.
fn raw(header: Value, claims: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string()),
        B64.encode(sig)
    )
}

#[tokio::test]
async fn good_tokens_verify_and_forgeries_are_refused_by_name() {
    let k1 = key("k1");
    let iss = start(&[&k1]).await;
    let v = Verifier::new(config(&iss)).unwrap();
    let good = v.verify(&sign(&k1, &claims(&iss)), now()).await.unwrap();
    assert_eq!(good.issuer_name, "ci");
    assert_eq!(good.subject, "repo:acme/api:ref:refs/heads/main");
    assert_eq!(good.claims["repository"], "acme/api");

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims(&iss);
        f(&mut c);
        sign(&k1, &c)
    };
    let t = now().unix_timestamp();
    let cases: Vec<(String, OidcError)> = vec![
        (sign(&key("k1"), &claims(&iss)), OidcError::Signature),
        (with(&|c| c["exp"] = json!(t - 61)), OidcError::Expired),
        (with(&|c| c["iat"] = json!(t + 120)), OidcError::NotYetValid),
        (with(&|c| c["nbf"] = json!(t + 120)), OidcError::NotYetValid),
        (
            with(&|c| c["exp"] = json!(t + 3600)),
            OidcError::TooLong(3610, 900),
        ),
        (
            with(&|c| c["aud"] = json!(["https://elsewhere.example"])),
            OidcError::Audience(
                vec!["https://elsewhere.example".into()],
                vec!["https://credence.example".into()],
            ),
        ),
        (
            with(&|c| c["iss"] = json!("https://other.example")),
            OidcError::Issuer("https://other.example".into(), iss.url.clone()),
        ),
        (
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            OidcError::MissingClaim("exp"),
        ),
        (
            with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
            OidcError::MissingClaim("sub"),
        ),
        (
            raw(json!({"alg": "none", "kid": "k1"}), &claims(&iss), b""),
            OidcError::Algorithm("none".into()),
        ),
        (
            raw(json!({"alg": "ES384", "kid": "k1"}), &claims(&iss), b"x"),
            OidcError::Algorithm("ES384".into()),
        ),
        (
            raw(
                json!({"alg": "ES256", "kid": "k1", "jku": "https://evil.example/jwks"}),
                &claims(&iss),
                b"x",
            ),
            OidcError::EmbeddedKey("jku".into()),
        ),
    ];
    for (token, want) in cases {
        assert_eq!(v.verify(&token, now()).await.unwrap_err(), want);
    }

    // HS256 "signed" with the issuer's public key: refused before any key
    // is used as an HMAC secret
    let public = serde_json::to_vec(&jwk(&k1)).unwrap();
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": "k1"});
    let signing = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims(&iss).to_string())
    );
    let mac = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &public),
        signing.as_bytes(),
    );
    let hs = format!("{signing}.{}", B64.encode(mac.as_ref()));
    assert_eq!(
        v.verify(&hs, now()).await.unwrap_err(),
        OidcError::Algorithm("HS256".into())
    );
    assert!(matches!(
        v.verify("not.a.jwt", now()).await.unwrap_err(),
        OidcError::Malformed(_)
    ));

    // an accepted algorithm that does not fit the key it names
    let mut both = config(&iss);
    both.algorithms = vec!["ES256".into(), "ES384".into()];
    let v = Verifier::new(both).unwrap();
    let t = raw(json!({"alg": "ES384", "kid": "k1"}), &claims(&iss), b"x");
    assert_eq!(
        v.verify(&t, now()).await.unwrap_err(),
        OidcError::KeyMismatch("k1".into(), "ES384".into())
    );
}

#[tokio::test]
async fn keys_are_refetched_for_a_rotated_kid_but_not_for_a_flood_of_forged_ones() {
    let k1 = key("k1");
    let iss = start(&[&k1]).await;
    let v = Verifier::new(config(&iss)).unwrap();
    v.verify(&sign(&k1, &claims(&iss)), now()).await.unwrap();
    assert_eq!(*iss.hits.lock().unwrap(), 2, "discovery + JWKS");

    // the issuer rotates: a token of the new key makes one refetch
    let k2 = key("k2");
    *iss.jwks.lock().unwrap() = json!({"keys": [jwk(&k1), jwk(&k2)]});
    v.verify(&sign(&k2, &claims(&iss)), now()).await.unwrap();
    let after_rotation = *iss.hits.lock().unwrap();
    assert_eq!(after_rotation, 4);

    // forged kids right after: no more fetches
    for n in 0..20 {
        let err = v
            .verify(&sign(&key(&format!("forged{n}")), &claims(&iss)), now())
            .await;
        assert_eq!(
            err.unwrap_err(),
            OidcError::UnknownKey(format!("forged{n}"))
        );
    }
    assert_eq!(*iss.hits.lock().unwrap(), after_rotation);
    assert_eq!(v.fetches(), u64::from(after_rotation));
}

#[tokio::test]
async fn discovery_must_name_the_configured_issuer_and_plain_http_needs_consent() {
    let k1 = key("k1");
    let iss = start(&[&k1]).await;
    *iss.discovery_issuer.lock().unwrap() = Some("https://impostor.example".into());
    let v = Verifier::new(config(&iss)).unwrap();
    let err = v
        .verify(&sign(&k1, &claims(&iss)), now())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, OidcError::Fetch(m) if m.contains("impostor")),
        "{err}"
    );

    let mut c = config(&iss);
    c.allow_insecure_http = false;
    assert!(matches!(Verifier::new(c), Err(OidcError::Config(_))));
}

/// RFC 8693 exchange of an external token at the token endpoint: only a
/// trust rule of the active policy set lets it become an identity.
#[tokio::test]
async fn external_tokens_become_identities_only_through_trust_rules() {
    use axum::http::{HeaderMap, HeaderValue, header};
    use credence_server::oauth::{Endpoints, token_response};
    use credence_server::policies::NewPolicySet;
    use credence_server::service::Actor;

    let (k1, iss, f) = trusting("github").await;
    let svc = &f.svc;
    svc.create_identity(
        &Actor::admin(),
        serde_json::from_value(json!({
            "spiffe_id": "spiffe://example.org/ci/acme-api", "kind": "ci_job",
            "owner": "team-api", "scopes": ["deploy"],
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let ep = Endpoints {
        issuer: "https://credence.example.org".into(),
        token: "https://credence.example.org/oauth2/token".into(),
    };
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    let t_now = credence_core::Clock::now(f.clock.as_ref()).unix_timestamp();
    let token_for = |repo: &str, r#ref: &str| {
        let mut c = claims(&iss);
        c["repository"] = json!(repo);
        c["ref"] = json!(r#ref);
        c["iat"] = json!(t_now - 10);
        c["exp"] = json!(t_now + 290);
        sign(&k1, &c)
    };
    let exchange = |token: String, subject: &str| {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair(
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            )
            .append_pair("subject_token", &token)
            .append_pair("subject_token_type", "urn:ietf:params:oauth:token-type:jwt")
            .append_pair("requested_subject", subject)
            .append_pair("audience", "https://deploy.example")
            .finish();
        let (svc, ep, h) = (svc, &ep, &h);
        async move {
            let r = token_response(svc, ep, None, h, body.as_bytes()).await;
            let status = r.status().as_u16();
            let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap())
        }
    };
    let good = || token_for("acme/api", "refs/heads/main");

    // no rule, no token
    let (s, b) = exchange(good(), "spiffe://example.org/ci/acme-api").await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
    assert!(
        b["error_description"]
            .as_str()
            .unwrap()
            .contains("no trust rule lets github:"),
        "{b}"
    );

    // the rule of the README: repository and branch
    svc.create_policy_set(
        &Actor::admin(),
        NewPolicySet {
            schema: String::new(),
            policies: r#"
@id("ci-acme-api-main")
permit (
  principal is Credence::ExternalToken,
  action == Credence::Action::"exchange_external_token",
  resource == Credence::Identity::"spiffe://example.org/ci/acme-api"
) when {
  principal.issuer == "github" &&
  principal.hasTag("repository") && principal.getTag("repository") == "acme/api" &&
  principal.hasTag("ref") && principal.getTag("ref") == "refs/heads/main"
};
"#
            .into(),
            namespace: None,
            note: None,
            activate: true,
        },
    )
    .await
    .unwrap();
    let (s, b) = exchange(good(), "spiffe://example.org/ci/acme-api").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["scope"], "deploy");
    let access = b["access_token"].as_str().unwrap();
    let claims = jsonwebtoken::dangerous::insecure_decode::<Value>(access)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "spiffe://example.org/ci/acme-api");
    assert_eq!(claims["aud"], "https://deploy.example");

    // another branch, another identity, an unknown identity
    let (s, b) = exchange(
        token_for("acme/api", "refs/heads/feature"),
        "spiffe://example.org/ci/acme-api",
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
    let (s, b) = exchange(good(), "spiffe://example.org/nope").await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_target")),
        "{b}"
    );
    // forged, expired, alg none: refused before any rule
    let forged = sign(&key("k1"), &jwt_claims(&good()));
    let (s, b) = exchange(forged, "spiffe://example.org/ci/acme-api").await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error_description"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{b}"
    );
    let mut old = jwt_claims(&good());
    old["exp"] = json!(t_now - 3600);
    old["iat"] = json!(t_now - 3700);
    let (s, b) = exchange(sign(&k1, &old), "spiffe://example.org/ci/acme-api").await;
    assert!(
        s == 400 && b["error_description"].as_str().unwrap().contains("expired"),
        "{b}"
    );
    let none = raw(
        json!({"alg": "none", "kid": "k1"}),
        &jwt_claims(&good()),
        b"",
    );
    let (s, b) = exchange(none, "spiffe://example.org/ci/acme-api").await;
    assert!(
        s == 400 && b["error_description"].as_str().unwrap().contains("none"),
        "{b}"
    );

    // the exchange names the external subject and the rule in the audit log
    let found = f
        .store
        .search_audit(
            &credence_store::AuditFilter {
                action: Some("oauth.token".into()),
                outcome: Some(credence_store::Outcome::Success),
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    let ext = found
        .iter()
        .find_map(|(_, e)| e.details.get("external").cloned())
        .expect("an exchange with its external subject");
    assert_eq!(ext["issuer"], "github");
    assert_eq!(ext["rules"], json!(["ci-acme-api-main"]));
}

/// A test issuer with key `k1`, and a service trusting it under `name`
/// (its tokens are dated by the fixture's clock).
async fn trusting(name: &str) -> (Key, Issuer, crate::service::Fixture) {
    let k1 = key("k1");
    let iss = start(&[&k1]).await;
    let f = crate::service::fixture().await;
    let mut cfg = config(&iss);
    cfg.name = name.into();
    f.svc.set_external_issuers(vec![cfg]).unwrap();
    (k1, iss, f)
}

fn jwt_claims(token: &str) -> Value {
    jsonwebtoken::dangerous::insecure_decode::<Value>(token)
        .unwrap()
        .claims
}

/// A node agent attests by an external token (a CI runner, a Kubernetes
/// pod) when a trust rule permits `attest_node`; tokens naming the same
/// machine (by `sub`, or the issuer's node claim) are the same node, and
/// an evicted node stays out.
#[tokio::test]
async fn nodes_attest_by_external_token_under_a_trust_rule() {
    use credence_server::policies::NewPolicySet;
    use credence_server::service::Actor;

    let (k1, iss, f) = trusting("k8s").await;
    let svc = &f.svc;
    let t_now = credence_core::Clock::now(f.clock.as_ref()).unix_timestamp();
    let token = |sub: &str, ns: &str| {
        let mut c = claims(&iss);
        c["sub"] = json!(sub);
        c["namespace"] = json!(ns);
        c["iat"] = json!(t_now - 10);
        c["exp"] = json!(t_now + 290);
        sign(&k1, &c)
    };
    let csr = || crate::nodes::csr(None);

    // no rule: refused, and the refusal is audited
    let err = svc
        .attest_with_oidc_token(&token("system:node:a", "infra"), csr(), None)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("no trust rule lets k8s:system:node:a"),
        "{err}"
    );

    svc.create_policy_set(
        &Actor::admin(),
        NewPolicySet {
            schema: String::new(),
            policies: r#"
@id("infra-nodes")
permit (principal is Credence::ExternalToken, action == Credence::Action::"attest_node", resource)
when { principal.issuer == "k8s" && principal.hasTag("namespace") && principal.getTag("namespace") == "infra" };
"#
            .into(),
            namespace: None,
            note: None,
            activate: true,
        },
    )
    .await
    .unwrap();
    let (node, svid) = svc
        .attest_with_oidc_token(&token("system:node:a", "infra"), csr(), None)
        .await
        .unwrap();
    assert_eq!(node.attestation, "oidc:k8s");
    assert_eq!(svid.spiffe_id, node.spiffe_id);
    // the same machine again: the same node
    let (again, _) = svc
        .attest_with_oidc_token(&token("system:node:a", "infra"), csr(), None)
        .await
        .unwrap();
    assert_eq!(again.id, node.id);
    // another namespace: no rule
    assert!(
        svc.attest_with_oidc_token(&token("system:node:b", "apps"), csr(), None)
            .await
            .is_err()
    );
    // a forged token: refused before any rule
    let forged = sign(&key("k1"), &jwt_claims(&token("system:node:c", "infra")));
    let err = svc
        .attest_with_oidc_token(&forged, csr(), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("signature"), "{err}");
    // evicted stays out
    svc.evict_node(&Actor::admin(), &node.id).await.unwrap();
    let err = svc
        .attest_with_oidc_token(&token("system:node:a", "infra"), csr(), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("evicted"), "{err}");

    // many machines sharing a subject (every pod of a DaemonSet): the
    // issuer's node claim tells them apart, and a token without it is
    // refused
    let mut cfg = config(&iss);
    cfg.name = "k8s".into();
    cfg.node_claim = Some("node_name".into());
    svc.set_external_issuers(vec![cfg]).unwrap();
    let on = |machine: Option<&str>| {
        let mut c = jwt_claims(&token("system:serviceaccount:infra:agent", "infra"));
        if let Some(m) = machine {
            c["node_name"] = json!(m);
        }
        sign(&k1, &c)
    };
    let (n1, _) = svc
        .attest_with_oidc_token(&on(Some("worker-1")), csr(), None)
        .await
        .unwrap();
    let (n2, _) = svc
        .attest_with_oidc_token(&on(Some("worker-2")), csr(), None)
        .await
        .unwrap();
    let (n1b, _) = svc
        .attest_with_oidc_token(&on(Some("worker-1")), csr(), None)
        .await
        .unwrap();
    assert_ne!(n1.id, n2.id);
    assert_eq!(n1.id, n1b.id);
    let err = svc
        .attest_with_oidc_token(&on(None), csr(), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("node_name"), "{err}");
}
