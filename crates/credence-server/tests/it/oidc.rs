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
