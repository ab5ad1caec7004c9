use std::sync::Arc;

use serde_json::json;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use credence_core::{CountingRandom, ManualClock, RevocationReason, SpiffeId, TrustDomain};
use credence_server::ServerError;
use credence_server::authority::CaLifetimes;
use credence_server::service::{
    Actor, IdentityKey, IdentityUpdate, IssuancePolicy, NewIdentity, RevokeTarget, Service,
};
use credence_store::{SqliteStore, Store};

pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    pub(crate) svc: Service,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) store: Arc<dyn Store>,
}

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

async fn fixture_with(lifetimes: CaLifetimes, dir: Option<tempfile::TempDir>) -> Fixture {
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&dir.path().join("db"), Default::default())
            .await
            .unwrap(),
    );
    let clock = ManualClock::new(t0());
    let svc = Service::start(
        store.clone(),
        &[3u8; 32],
        &TrustDomain::new("example.org").unwrap(),
        lifetimes,
        IssuancePolicy::default(),
        Some("https://credence.example.org".into()),
        clock.clone(),
        Arc::new(credence_ca::SystemRandom),
    )
    .await
    .unwrap();
    Fixture {
        _dir: dir,
        svc,
        clock,
        store,
    }
}

pub(crate) async fn fixture() -> Fixture {
    fixture_with(CaLifetimes::default(), None).await
}

fn new_identity(id: &str, max_ttl: Option<u32>) -> NewIdentity {
    serde_json::from_value(json!({
        "spiffe_id": id, "kind": "agent", "owner": "team-a",
        "labels": {"model": "m1"}, "max_ttl_seconds": max_ttl,
    }))
    .unwrap()
}

fn leaf_not_after(der: &[u8]) -> OffsetDateTime {
    let (_, c) = X509Certificate::from_der(der).unwrap();
    c.validity().not_after.to_datetime()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

#[tokio::test]
async fn ttl_defaults_and_caps() {
    let f = fixture().await;
    let a = Actor::admin();
    f.svc
        .create_identity(&a, new_identity("spiffe://example.org/capped", Some(600)))
        .await
        .unwrap();
    f.svc
        .create_identity(&a, new_identity("spiffe://example.org/free", None))
        .await
        .unwrap();
    let (svid, _) = f
        .svc
        .mint_x509(&a, &id("spiffe://example.org/free"), None)
        .await
        .unwrap();
    assert_eq!(
        leaf_not_after(&svid.leaf_der),
        t0() + Duration::hours(1),
        "default 1h"
    );
    let (svid, _) = f
        .svc
        .mint_x509(
            &a,
            &id("spiffe://example.org/capped"),
            Some(Duration::hours(5)),
        )
        .await
        .unwrap();
    assert_eq!(
        leaf_not_after(&svid.leaf_der),
        t0() + Duration::seconds(600),
        "identity cap"
    );
    let (svid, _) = f
        .svc
        .mint_x509(
            &a,
            &id("spiffe://example.org/free"),
            Some(Duration::days(30)),
        )
        .await
        .unwrap();
    assert_eq!(
        leaf_not_after(&svid.leaf_der),
        t0() + Duration::hours(24),
        "server max"
    );
    let jwt = f
        .svc
        .mint_jwt(
            &a,
            &id("spiffe://example.org/free"),
            &["api".into()],
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        jwt.expires_at,
        t0() + Duration::minutes(5),
        "JWT default 5 min"
    );
}

#[tokio::test]
async fn never_outlives_the_signing_ca() {
    let f = fixture_with(
        CaLifetimes {
            intermediate: Duration::minutes(30),
            ..Default::default()
        },
        None,
    )
    .await;
    let a = Actor::admin();
    f.svc
        .create_identity(&a, new_identity("spiffe://example.org/w", None))
        .await
        .unwrap();
    let (svid, _) = f
        .svc
        .mint_x509(&a, &id("spiffe://example.org/w"), None)
        .await
        .unwrap();
    let ca_end = f.svc.authority().intermediate.not_after;
    assert!(leaf_not_after(&svid.leaf_der) <= ca_end);
    assert!(ca_end <= t0() + Duration::minutes(30));
}

#[tokio::test]
async fn disabled_and_deleted_identities_get_nothing() {
    let f = fixture().await;
    let a = Actor::admin();
    let ident = f
        .svc
        .create_identity(&a, new_identity("spiffe://example.org/d", None))
        .await
        .unwrap();
    let key = IdentityKey::Id(ident.id.clone());
    f.svc
        .update_identity(
            &a,
            &key,
            IdentityUpdate {
                status: Some(credence_core::IdentityStatus::Disabled),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let e = f
        .svc
        .mint_x509(&a, &id("spiffe://example.org/d"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ServerError::Forbidden("identity_disabled", _)),
        "{e}"
    );
    let e = f
        .svc
        .mint_jwt(&a, &id("spiffe://example.org/d"), &["x".into()], &[], None)
        .await
        .unwrap_err();
    assert!(matches!(e, ServerError::Forbidden(..)), "{e}");
    f.svc.delete_identity(&a, &key).await.unwrap();
    let e = f
        .svc
        .mint_x509(&a, &id("spiffe://example.org/d"), None)
        .await
        .unwrap_err();
    assert!(matches!(e, ServerError::NotFound(_)), "{e}");
}

#[tokio::test]
async fn crl_reflects_revocation_and_drops_expired() {
    let f = fixture().await;
    let a = Actor::admin();
    f.svc
        .create_identity(&a, new_identity("spiffe://example.org/r", None))
        .await
        .unwrap();
    let (short, _) = f
        .svc
        .mint_x509(
            &a,
            &id("spiffe://example.org/r"),
            Some(Duration::minutes(2)),
        )
        .await
        .unwrap();
    let (long, _) = f
        .svc
        .mint_x509(&a, &id("spiffe://example.org/r"), Some(Duration::hours(2)))
        .await
        .unwrap();
    let crl_entries = |der: &[u8]| {
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(der).unwrap();
        let n = crl
            .crl_number()
            .unwrap()
            .to_u64_digits()
            .first()
            .copied()
            .unwrap_or(0);
        let serials: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|r| hex::encode(r.raw_serial()))
            .collect();
        let next = crl.next_update().unwrap().to_datetime();
        (n, serials, next)
    };
    let (n1, s1, next1) = crl_entries(&f.svc.crl(None).await.unwrap());
    assert!(s1.is_empty());
    assert_eq!(next1, t0() + Duration::hours(1));
    let out = f
        .svc
        .revoke(
            &a,
            RevokeTarget::SpiffeId(id("spiffe://example.org/r")),
            RevocationReason::KeyCompromise,
        )
        .await
        .unwrap();
    assert_eq!(out.len(), 2);
    let (n2, s2, _) = crl_entries(&f.svc.crl(None).await.unwrap());
    assert!(n2 > n1, "CRL number increments");
    assert_eq!(s2.len(), 2);
    assert!(s2.contains(&short.serial.to_hex()) && s2.contains(&long.serial.to_hex()));
    // after the short one expires it drops out of the next CRL
    f.clock.advance(Duration::minutes(40));
    let (n3, s3, _) = crl_entries(&f.svc.crl(None).await.unwrap());
    assert!(n3 > n2);
    assert_eq!(s3, vec![long.serial.to_hex()]);
    assert!(f.svc.is_revoked(&long.serial.to_hex()).await.unwrap());
}

#[tokio::test]
async fn jwt_revocation_is_kept_until_expiry() {
    let f = fixture().await;
    let a = Actor::admin();
    f.svc
        .create_identity(&a, new_identity("spiffe://example.org/j", None))
        .await
        .unwrap();
    let jwt = f
        .svc
        .mint_jwt(
            &a,
            &id("spiffe://example.org/j"),
            &["api".into()],
            &[],
            None,
        )
        .await
        .unwrap();
    f.svc
        .revoke(
            &a,
            RevokeTarget::Serial(jwt.jti.clone()),
            RevocationReason::Unspecified,
        )
        .await
        .unwrap();
    assert!(f.svc.is_revoked(&jwt.jti).await.unwrap());
    let listed = f
        .store
        .list_revoked(credence_store::CredentialKind::Jwt, f.clock.now_for_test())
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    f.clock.advance(Duration::minutes(6));
    let listed = f
        .store
        .list_revoked(credence_store::CredentialKind::Jwt, f.clock.now_for_test())
        .await
        .unwrap();
    assert!(listed.is_empty(), "expired jti drops out");
}

trait NowForTest {
    fn now_for_test(&self) -> OffsetDateTime;
}
impl NowForTest for ManualClock {
    fn now_for_test(&self) -> OffsetDateTime {
        credence_core::Clock::now(self)
    }
}

#[tokio::test]
async fn restart_reuses_ca_and_rotates_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture_with(CaLifetimes::default(), Some(dir)).await;
    let first = f.svc.authority();
    let (root, int, kid) = (
        first.root.cert_der.clone(),
        first.intermediate_id.clone(),
        first
            .jwt_signer(credence_core::Clock::now(f.clock.as_ref()))
            .unwrap()
            .kid()
            .to_owned(),
    );
    f.store.close().await;
    let dir = f._dir;
    let again = fixture_with(CaLifetimes::default(), Some(dir)).await;
    let a2 = again.svc.authority();
    assert_eq!(a2.root.cert_der, root, "root reused");
    assert_eq!(a2.intermediate_id, int, "intermediate reused");
    assert_eq!(
        a2.jwt_signer(credence_core::Clock::now(again.clock.as_ref()))
            .unwrap()
            .kid(),
        kid,
        "JWT key reused"
    );
    // explicit rotation keeps the old intermediate for its CRL
    let new_id = again
        .svc
        .rotate_intermediate(&Actor::admin())
        .await
        .unwrap();
    let a3 = again.svc.authority();
    assert_eq!(a3.intermediate_id, new_id);
    assert!(a3.retired.contains_key(&int));
    assert!(again.svc.crl(Some(&int)).await.is_ok());
}

#[tokio::test]
async fn wrong_kek_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture_with(CaLifetimes::default(), Some(dir)).await;
    f.store.close().await;
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&f._dir.path().join("db"), Default::default())
            .await
            .unwrap(),
    );
    let e = Service::start(
        store,
        &[4u8; 32],
        &TrustDomain::new("example.org").unwrap(),
        CaLifetimes::default(),
        IssuancePolicy::default(),
        None,
        ManualClock::new(t0()),
        Arc::new(CountingRandom::default()),
    )
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("wrong key-encryption key"), "{e}");
}

#[tokio::test]
async fn identity_validation() {
    let f = fixture().await;
    let a = Actor::admin();
    let e = f
        .svc
        .create_identity(&a, new_identity("spiffe://other.org/x", None))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("trust domain"), "{e}");
    let e = f
        .svc
        .create_identity(&a, new_identity("spiffe://example.org", None))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("path"), "{e}");
    f.svc
        .create_identity(&a, new_identity("spiffe://example.org/dup", None))
        .await
        .unwrap();
    let e = f
        .svc
        .create_identity(&a, new_identity("spiffe://example.org/dup", None))
        .await
        .unwrap_err();
    assert!(matches!(e, ServerError::Conflict(_)), "{e}");
}

/// A JWT key rotation never fails a validation: the next key is in the
/// JWKS before it signs anything, tokens signed by the old key keep
/// verifying after the switch, and a key with a third of its life left
/// gets its successor published ahead of time.
#[tokio::test]
async fn jwt_key_rotation_publishes_before_signing_and_keeps_old_keys() {
    let f = fixture().await;
    let a = Actor::admin();
    f.svc
        .create_identity(&a, new_identity("spiffe://example.org/j", None))
        .await
        .unwrap();
    let mint = || async {
        f.svc
            .mint_jwt(
                &a,
                &id("spiffe://example.org/j"),
                &["api".into()],
                &[],
                None,
            )
            .await
            .unwrap()
            .token
    };
    let kid_of = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
    let verifies = |t: &str| {
        let bundles = std::collections::HashMap::from([(
            "spiffe://example.org".to_owned(),
            f.svc.authority().jwks().to_string().into_bytes(),
        )]);
        // the JWKS relying parties fetch still holds the key that signed it
        let header = jsonwebtoken::decode_header(t).unwrap();
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_slice(&bundles["spiffe://example.org"]).unwrap();
        set.find(&header.kid.unwrap()).is_some()
    };
    let old = mint().await;
    let old_kid = kid_of(&old);
    let new_kid = f
        .svc
        .rotate_jwt_key(&a, Duration::minutes(10))
        .await
        .unwrap();
    assert_ne!(new_kid, old_kid);
    // published at once, not yet signing
    let jwks = f.svc.authority().jwks();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(kids.contains(&new_kid.as_str()) && kids.contains(&old_kid.as_str()));
    assert_eq!(kid_of(&mint().await), old_kid);
    // after the overlap the new key signs; the old token still finds its key
    f.clock.advance(Duration::minutes(11));
    let new = mint().await;
    assert_eq!(kid_of(&new), new_kid);
    assert!(verifies(&old) && verifies(&new));
    // the bundle carries both as jwt-svid keys
    let bundle = f.svc.authority().spiffe_bundle(60);
    let jwt_keys = bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "jwt-svid")
        .count();
    assert_eq!(jwt_keys, 2);
    assert!(f.svc.rotate_jwt_key(&a, Duration::days(8)).await.is_err());

    // a key with a third of its life left gets its successor at the next
    // load, published now and signing from the current key's end
    f.clock.advance(Duration::days(70));
    let wrapper = credence_ca::KeyWrapper::new(&[3u8; 32]).unwrap();
    let td = credence_core::TrustDomain::new("example.org").unwrap();
    let lifetimes = CaLifetimes::default();
    let load = || {
        credence_server::authority::load_or_create(
            f.store.as_ref(),
            &wrapper,
            &td,
            &lifetimes,
            f.clock.as_ref(),
            &credence_ca::SystemRandom,
        )
    };
    let again = load().await.unwrap();
    let now = credence_core::Clock::now(f.clock.as_ref());
    let signing = again.jwt_signer(now).unwrap().kid().to_owned();
    assert_eq!(signing, new_kid);
    let next = again
        .jwt_keys
        .iter()
        .find(|k| k.not_before > now)
        .expect("a successor is published");
    let current = again
        .jwt_keys
        .iter()
        .find(|k| k.signer.kid() == new_kid)
        .unwrap();
    assert_eq!(next.not_before, current.not_after);
    // loading again adds nothing
    assert_eq!(load().await.unwrap().jwt_keys.len(), again.jwt_keys.len());
}
