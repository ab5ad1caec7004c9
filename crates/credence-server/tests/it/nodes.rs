//! Join tokens and node attestation at the service level: a refused CSR
//! does not spend the token, a token works once and expires, eviction
//! refuses the agent and what it was issued.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use time::Duration;

use credence_core::NodeStatus;
use credence_server::ServerError;
use credence_server::service::Actor;

use crate::service::fixture;

pub(crate) fn csr(san: Option<&str>) -> credence_ca::x509::CheckedCsr {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = DistinguishedName::new();
    if let Some(s) = san {
        p.subject_alt_names = vec![SanType::URI(s.try_into().unwrap())];
    }
    let der = p.serialize_request(&key).unwrap().der().to_vec();
    credence_ca::check_csr(&der).unwrap()
}

fn code(e: &ServerError) -> &'static str {
    e.code()
}

#[tokio::test]
async fn tokens_work_once_expire_and_survive_refused_csrs() {
    let f = fixture().await;
    let t = f
        .svc
        .create_join_token(&Actor::admin(), Duration::minutes(10))
        .await
        .unwrap();
    // a CSR naming an id is refused before the token is spent
    let e = f
        .svc
        .attest_with_join_token(
            &t.token,
            csr(Some("spiffe://example.org/credence/agent/x")),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), "spiffe_id_mismatch");
    assert!(f.svc.list_nodes().await.unwrap().is_empty());
    let (node, svid) = f
        .svc
        .attest_with_join_token(&t.token, csr(None), None)
        .await
        .unwrap();
    assert_eq!(node.status, NodeStatus::Active);
    assert_eq!(node.agent_serial, Some(svid.serial.to_hex()));
    assert_eq!(svid.spiffe_id, node.spiffe_id);
    // replay
    let e = f
        .svc
        .attest_with_join_token(&t.token, csr(None), None)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "invalid_join_token");
    // expiry
    let late = f
        .svc
        .create_join_token(&Actor::admin(), Duration::minutes(1))
        .await
        .unwrap();
    f.clock.advance(Duration::minutes(2));
    let e = f
        .svc
        .attest_with_join_token(&late.token, csr(None), None)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "invalid_join_token");
    assert_eq!(f.svc.list_nodes().await.unwrap().len(), 1);
    // out-of-range lifetimes
    for bad in [Duration::seconds(1), Duration::days(31)] {
        let e = f
            .svc
            .create_join_token(&Actor::admin(), bad)
            .await
            .unwrap_err();
        assert_eq!(code(&e), "invalid_ttl");
    }

    // the agent authenticates with its SVID until evicted
    let leaf = &svid.leaf_der;
    assert_eq!(f.svc.authenticate_agent(leaf).await.unwrap().id, node.id);
    let revoked = f.svc.evict_node(&Actor::admin(), &node.id).await.unwrap();
    assert!(revoked.iter().any(|r| r.serial == svid.serial.to_hex()));
    let e = f.svc.authenticate_agent(leaf).await.unwrap_err();
    assert_eq!(code(&e), "agent_refused");
    // refusals and attestations are in the audit log
    assert!(f.store.audit_count().await.unwrap() > 0);
}
