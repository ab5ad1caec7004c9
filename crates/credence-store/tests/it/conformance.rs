//! Backend-independent conformance suite for [`Store`].
//!
//! Every test is an async function over `&dyn Store` (or over a [`Harness`]
//! when it needs to reopen the database), so each backend instantiates the
//! whole suite with [`conformance_suite!`].

use std::collections::BTreeMap;

use credence_core::{
    Admin, AdminName, BundleEndpointUrl, BundleProfile, Delegation, DelegationId, FederatedBundle,
    Federation, Grantor, Hop, Identity, IdentityId, IdentityKind, IdentityStatus, JoinToken,
    Labels, Mandate, Node, NodeId, NodeStatus, Owner, RevocationReason, Scope, Selector, SpiffeId,
    TrustDomain,
};
use credence_store::{
    AuditActor, AuditRecord, CaRecord, CredentialKind, DelegationFilter, IdentityFilter,
    IssuedCredential, Outcome, PolicySetRecord, Store, StoreError,
};
use time::OffsetDateTime;

/// Opens a store of one backend; `open` twice reaches the same data.
#[async_trait::async_trait]
pub trait Harness: Send + Sync {
    async fn open(&self) -> Box<dyn Store>;
}

/// Generates one `#[tokio::test]` per conformance test for a backend.
/// `$harness` is an async fn returning a [`Harness`].
macro_rules! conformance_suite {
    ($harness:path; store: [$($name:ident),* $(,)?]; harness: [$($hname:ident),* $(,)?] $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let h = $harness().await;
                let store = crate::conformance::Harness::open(&h).await;
                crate::conformance::$name(&*store).await;
                store.close().await;
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $hname() {
                let h = $harness().await;
                crate::conformance::$hname(&h).await;
            }
        )*
    };
}
pub(crate) use conformance_suite;

// ---------------------------------------------------------------- helpers

pub const T0: i64 = 1_700_000_000;

pub fn t(secs_after_t0: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(T0 + secs_after_t0).unwrap()
}

pub fn id_of(n: u32) -> IdentityId {
    IdentityId::parse(&format!("{n:032x}")).unwrap()
}

pub fn spiffe(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://example.org/{path}")).unwrap()
}

pub fn identity(n: u32) -> Identity {
    let mut labels = BTreeMap::new();
    labels.insert("env".to_owned(), "prod".to_owned());
    Identity {
        id: id_of(n),
        spiffe_id: spiffe(&format!("svc/{n}")),
        kind: IdentityKind::Workload,
        owner: Owner::new("team-a").unwrap(),
        description: format!("identity {n}"),
        labels: Labels::new(labels).unwrap(),
        selectors: vec![Selector::parse("unix:uid:1000").unwrap()],
        nodes: Vec::new(),
        scopes: Vec::new(),
        federates_with: Vec::new(),
        max_ttl_seconds: Some(3600),
        status: IdentityStatus::Active,
        created_at: t(i64::from(n)),
        updated_at: t(i64::from(n)),
        last_issued_at: None,
    }
}

pub fn audit(action: &str, target: &str) -> AuditRecord {
    let mut a = AuditRecord::new(
        t(10_000),
        AuditActor {
            id: "admin".to_owned(),
            auth: "admin-token".to_owned(),
        },
        action,
        target,
        Outcome::Success,
    );
    a.details = details(serde_json::json!({ "k": "v", "n": 1 }));
    a
}

pub fn details(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m,
        _ => panic!("details must be an object"),
    }
}

pub fn cred(identity: &Identity, serial: &str, not_after: OffsetDateTime) -> IssuedCredential {
    IssuedCredential {
        kind: CredentialKind::X509,
        serial: serial.to_owned(),
        identity_id: identity.id.clone(),
        spiffe_id: identity.spiffe_id.clone(),
        issuer: "int-01".to_owned(),
        not_before: t(0),
        not_after,
        key_fingerprint: Some("ab".repeat(32)),
        node_id: None,
    }
}

pub fn issue(c: IssuedCredential) -> (IssuedCredential, AuditRecord) {
    let a = audit("x509.issue", &c.serial);
    (c, a)
}

pub fn ca(id: &str, created: i64) -> CaRecord {
    CaRecord {
        id: id.to_owned(),
        role: "intermediate".to_owned(),
        cert_der: Some(vec![0x30, 0x82, 1, 2, 3]),
        public_key_der: vec![0x30, 0x59, 9, 9],
        wrapped_key: vec![7; 48],
        not_before: t(0),
        not_after: t(86_400 * 365),
        active: true,
        created_at: t(created),
    }
}

async fn create(store: &dyn Store, i: &Identity) {
    store
        .create_identity(i, audit("identity.create", i.spiffe_id.as_str()))
        .await
        .unwrap();
}

async fn last_audit(store: &dyn Store) -> AuditRecord {
    let n = store.audit_count().await.unwrap();
    let mut all = store.list_audit(n.saturating_sub(1), 1000).await.unwrap();
    all.pop().expect("at least one audit record").1
}

async fn list_all(store: &dyn Store, filter: &IdentityFilter, page: u32) -> Vec<Identity> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let p = store
            .list_identities(filter, cursor.as_deref(), page)
            .await
            .unwrap();
        assert!(p.items.len() <= page as usize);
        out.extend(p.items);
        match p.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

// ---------------------------------------------------------------- identities

pub async fn identity_create_get_duplicate(store: &dyn Store) {
    let a = identity(1);
    create(store, &a).await;
    assert_eq!(store.get_identity(&a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(
        store.get_identity_by_spiffe_id(&a.spiffe_id).await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(store.get_identity(&id_of(99)).await.unwrap(), None);
    assert_eq!(
        store
            .get_identity_by_spiffe_id(&spiffe("nope"))
            .await
            .unwrap(),
        None
    );

    // same SPIFFE ID, other id
    let mut dup = identity(2);
    dup.spiffe_id = a.spiffe_id.clone();
    let err = store
        .create_identity(&dup, audit("identity.create", "x"))
        .await
        .unwrap_err();
    match err {
        StoreError::Conflict(m) => {
            assert!(m.contains("spiffe://example.org/svc/1"), "{m}");
            assert!(m.contains("already exists"), "{m}");
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    // same id, other SPIFFE ID
    let mut dup = identity(3);
    dup.id = a.id.clone();
    assert!(matches!(
        store
            .create_identity(&dup, audit("identity.create", "x"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    // nothing of the failed creates is visible
    assert_eq!(store.get_identity(&id_of(2)).await.unwrap(), None);
    assert_eq!(
        store
            .get_identity_by_spiffe_id(&spiffe("svc/3"))
            .await
            .unwrap(),
        None
    );

    // an identity with no labels, selectors or TTL round-trips too
    let mut bare = identity(4);
    bare.labels = Labels::default();
    bare.selectors = vec![];
    bare.max_ttl_seconds = None;
    bare.description = String::new();
    bare.last_issued_at = Some(t(5));
    create(store, &bare).await;
    assert_eq!(store.get_identity(&bare.id).await.unwrap(), Some(bare));
}

pub async fn identity_list_filters_and_pagination(store: &dyn Store) {
    // 25 identities; created_at collides in pairs so the id breaks ties
    let mut all = Vec::new();
    for n in 1..=25u32 {
        let mut i = identity(n);
        i.created_at = t(i64::from(n / 2));
        i.updated_at = i.created_at;
        if n % 5 == 0 {
            i.kind = IdentityKind::Bot;
        }
        if n % 2 == 0 {
            i.owner = Owner::new("team-b").unwrap();
        }
        if n % 3 == 0 {
            i.status = IdentityStatus::Disabled;
        }
        let mut labels = BTreeMap::new();
        labels.insert(
            "env".to_owned(),
            if n % 4 == 0 { "dev" } else { "prod" }.to_owned(),
        );
        if n % 2 == 1 {
            labels.insert("tier".to_owned(), "web".to_owned());
        }
        i.labels = Labels::new(labels).unwrap();
        all.push(i);
    }
    // insert out of order: listing order must not depend on insertion order
    for i in all.iter().rev() {
        create(store, i).await;
    }
    let mut expected = all.clone();
    expected.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));

    // pages of 10: 10, 10, 5
    let none = IdentityFilter::default();
    let p1 = store.list_identities(&none, None, 10).await.unwrap();
    assert_eq!(p1.items.len(), 10);
    let c1 = p1.next_cursor.clone().expect("more pages");
    let p2 = store.list_identities(&none, Some(&c1), 10).await.unwrap();
    assert_eq!(p2.items.len(), 10);
    let c2 = p2.next_cursor.clone().expect("more pages");
    let p3 = store.list_identities(&none, Some(&c2), 10).await.unwrap();
    assert_eq!(p3.items.len(), 5);
    assert!(p3.next_cursor.is_none());
    let got: Vec<Identity> = p1
        .items
        .into_iter()
        .chain(p2.items)
        .chain(p3.items)
        .collect();
    assert_eq!(got, expected);

    // an exactly full last page has no cursor
    let p = store.list_identities(&none, Some(&c2), 5).await.unwrap();
    assert_eq!(p.items.len(), 5);
    assert!(p.next_cursor.is_none());

    // limit clamping
    assert_eq!(
        store
            .list_identities(&none, None, 0)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(list_all(store, &none, 100_000).await, expected);
    assert_eq!(list_all(store, &none, 1).await, expected);

    let check = |filter: IdentityFilter, pred: &dyn Fn(&Identity) -> bool| {
        let want: Vec<Identity> = expected.iter().filter(|i| pred(i)).cloned().collect();
        async move {
            assert!(!want.is_empty());
            assert_eq!(list_all(store, &filter, 3).await, want, "{filter:?}");
        }
    };
    check(
        IdentityFilter {
            kind: Some(IdentityKind::Bot),
            ..Default::default()
        },
        &|i| i.kind == IdentityKind::Bot,
    )
    .await;
    check(
        IdentityFilter {
            owner: Some("team-b".to_owned()),
            ..Default::default()
        },
        &|i| i.owner.as_str() == "team-b",
    )
    .await;
    check(
        IdentityFilter {
            status: Some(IdentityStatus::Disabled),
            ..Default::default()
        },
        &|i| i.status == IdentityStatus::Disabled,
    )
    .await;
    check(
        IdentityFilter {
            labels: vec![("env".into(), "dev".into())],
            ..Default::default()
        },
        &|i| i.labels.get("env") == Some("dev"),
    )
    .await;
    check(
        IdentityFilter {
            labels: vec![("env".into(), "prod".into()), ("tier".into(), "web".into())],
            ..Default::default()
        },
        &|i| i.labels.get("env") == Some("prod") && i.labels.get("tier") == Some("web"),
    )
    .await;
    check(
        IdentityFilter {
            spiffe_id: Some(spiffe("svc/7")),
            ..Default::default()
        },
        &|i| i.id == id_of(7),
    )
    .await;
    check(
        IdentityFilter {
            owner: Some("team-a".to_owned()),
            status: Some(IdentityStatus::Active),
            labels: vec![("tier".into(), "web".into())],
            ..Default::default()
        },
        &|i| {
            i.owner.as_str() == "team-a"
                && i.status == IdentityStatus::Active
                && i.labels.get("tier") == Some("web")
        },
    )
    .await;

    // nothing matches
    let p = store
        .list_identities(
            &IdentityFilter {
                labels: vec![("env".into(), "nope".into())],
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert!(p.items.is_empty() && p.next_cursor.is_none());

    // bad cursors
    for bad in ["garbage", "00", "zz"] {
        assert!(
            matches!(
                store.list_identities(&none, Some(bad), 10).await,
                Err(StoreError::BadArgument(_))
            ),
            "{bad}"
        );
    }
}

pub async fn identity_update(store: &dyn Store) {
    let a = identity(1);
    let b = identity(2);
    create(store, &a).await;
    create(store, &b).await;

    let mut changed = a.clone();
    changed.spiffe_id = spiffe("renamed");
    changed.kind = IdentityKind::Agent;
    changed.owner = Owner::new("team-z").unwrap();
    changed.description = "changed".to_owned();
    let mut labels = BTreeMap::new();
    labels.insert("model".to_owned(), "x".to_owned());
    changed.labels = Labels::new(labels).unwrap();
    changed.selectors = vec![
        Selector::parse("k8s:ns:prod").unwrap(),
        Selector::parse("k8s:sa:api").unwrap(),
    ];
    changed.max_ttl_seconds = None;
    changed.status = IdentityStatus::Disabled;
    changed.updated_at = t(500);
    store
        .update_identity(
            &changed,
            audit("identity.update", changed.spiffe_id.as_str()),
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_identity(&a.id).await.unwrap(),
        Some(changed.clone())
    );
    assert_eq!(
        store.get_identity_by_spiffe_id(&a.spiffe_id).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .get_identity_by_spiffe_id(&changed.spiffe_id)
            .await
            .unwrap(),
        Some(changed.clone())
    );
    // label index follows the update
    let by_old = IdentityFilter {
        labels: vec![("env".into(), "prod".into())],
        ..Default::default()
    };
    assert_eq!(list_all(store, &by_old, 10).await, vec![b.clone()]);
    let by_new = IdentityFilter {
        labels: vec![("model".into(), "x".into())],
        ..Default::default()
    };
    assert_eq!(list_all(store, &by_new, 10).await, vec![changed.clone()]);

    // updating with the same SPIFFE ID is fine
    let mut again = changed.clone();
    again.description = "again".to_owned();
    store
        .update_identity(&again, audit("identity.update", "x"))
        .await
        .unwrap();
    assert_eq!(
        store.get_identity(&a.id).await.unwrap(),
        Some(again.clone())
    );

    // taking another identity's SPIFFE ID conflicts
    let mut steal = again.clone();
    steal.spiffe_id = b.spiffe_id.clone();
    assert!(matches!(
        store
            .update_identity(&steal, audit("identity.update", "x"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.get_identity(&a.id).await.unwrap(), Some(again));

    // unknown id
    assert!(matches!(
        store
            .update_identity(&identity(77), audit("identity.update", "x"))
            .await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn identity_delete(store: &dyn Store) {
    let a = identity(1);
    create(store, &a).await;
    store
        .record_issued(vec![issue(cred(&a, "0a01", t(1000)))])
        .await
        .unwrap();
    store
        .delete_identity(&a.id, audit("identity.delete", "x"))
        .await
        .unwrap();
    assert_eq!(store.get_identity(&a.id).await.unwrap(), None);
    assert!(
        list_all(store, &IdentityFilter::default(), 10)
            .await
            .is_empty()
    );
    assert!(
        list_all(
            store,
            &IdentityFilter {
                labels: vec![("env".into(), "prod".into())],
                ..Default::default()
            },
            10
        )
        .await
        .is_empty()
    );
    match store
        .delete_identity(&a.id, audit("identity.delete", "x"))
        .await
    {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
    // credential rows stay for the CRL and the inventory
    assert!(store.get_credential("0a01").await.unwrap().is_some());
    // and the SPIFFE ID can be registered again
    create(store, &a).await;
}

// ---------------------------------------------------------------- issuance

pub async fn record_issued_concurrent_callers(store: &dyn Store) {
    let idents: Vec<Identity> = (1..=10).map(identity).collect();
    for i in &idents {
        create(store, i).await;
    }
    let before = store.audit_count().await.unwrap();
    const CALLERS: usize = 200;
    const PER_CALLER: usize = 3;
    let calls = (0..CALLERS).map(|c| {
        let ident = &idents[c % idents.len()];
        let creds: Vec<_> = (0..PER_CALLER)
            .map(|k| {
                let mut cr = cred(ident, &format!("{c:04x}{k:02x}"), t(100_000));
                if k == 1 {
                    cr.kind = CredentialKind::Jwt;
                    cr.key_fingerprint = None;
                }
                let mut a = audit("x509.issue", &cr.serial);
                a.time = t(20_000 + c as i64);
                (cr, a)
            })
            .collect();
        store.record_issued(creds)
    });
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    assert_eq!(
        store.audit_count().await.unwrap() - before,
        (CALLERS * PER_CALLER) as u64
    );
    for c in 0..CALLERS {
        for k in 0..PER_CALLER {
            let serial = format!("{c:04x}{k:02x}");
            let (got, revoked) = store.get_credential(&serial).await.unwrap().unwrap();
            let ident = &idents[c % idents.len()];
            assert_eq!(got.serial, serial);
            assert_eq!(got.identity_id, ident.id);
            assert_eq!(got.spiffe_id, ident.spiffe_id);
            assert_eq!(got.issuer, "int-01");
            assert_eq!(got.not_before, t(0));
            assert_eq!(got.not_after, t(100_000));
            if k == 1 {
                assert_eq!(got.kind, CredentialKind::Jwt);
                assert_eq!(got.key_fingerprint, None);
            } else {
                assert_eq!(got.kind, CredentialKind::X509);
                assert_eq!(got.key_fingerprint, Some("ab".repeat(32)));
            }
            assert!(revoked.is_none());
            assert!(!store.is_revoked(&serial).await.unwrap());
        }
    }
    // last_issued_at is the latest audit time of the identity's credentials
    for (n, i) in idents.iter().enumerate() {
        let latest = (0..CALLERS)
            .filter(|c| c % idents.len() == n)
            .max()
            .unwrap();
        let got = store.get_identity(&i.id).await.unwrap().unwrap();
        assert_eq!(got.last_issued_at, Some(t(20_000 + latest as i64)));
    }
    // every audit record of the batch is there, with its detail
    let records = store.list_audit(before, 1000).await.unwrap();
    assert_eq!(records.len(), CALLERS * PER_CALLER);
    assert!(records.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(records.iter().all(|(_, a)| a.action == "x509.issue"
        && a.details == details(serde_json::json!({ "k": "v", "n": 1 }))));

    // an empty call is a no-op
    store.record_issued(vec![]).await.unwrap();
    assert_eq!(
        store.audit_count().await.unwrap() - before,
        (CALLERS * PER_CALLER) as u64
    );
}

pub async fn record_issued_duplicate_serial_fails_only_its_caller(store: &dyn Store) {
    let a = identity(1);
    create(store, &a).await;
    store
        .record_issued(vec![issue(cred(&a, "dd", t(1000)))])
        .await
        .unwrap();
    let before = store.audit_count().await.unwrap();
    let calls = (0..50).map(|c| {
        let serial = if c == 25 {
            "dd".to_owned()
        } else {
            format!("{c:04x}")
        };
        store.record_issued(vec![issue(cred(&a, &serial, t(1000)))])
    });
    let results = futures::future::join_all(calls).await;
    for (c, r) in results.into_iter().enumerate() {
        if c == 25 {
            assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
        } else {
            r.unwrap();
            assert!(
                store
                    .get_credential(&format!("{c:04x}"))
                    .await
                    .unwrap()
                    .is_some()
            );
        }
    }
    assert_eq!(store.audit_count().await.unwrap() - before, 49);
}

// ---------------------------------------------------------------- revocation

pub async fn revoke_serial_idempotent(store: &dyn Store) {
    let a = identity(1);
    create(store, &a).await;
    store
        .record_issued(vec![
            issue(cred(&a, "0abc", t(1000))),
            issue(cred(&a, "0abd", t(1000))),
        ])
        .await
        .unwrap();
    let before = store.audit_count().await.unwrap();
    let e = store
        .revoke_serial(
            "0abc",
            RevocationReason::KeyCompromise,
            t(100),
            audit("revoke.serial", "0abc"),
        )
        .await
        .unwrap();
    assert_eq!(e.serial, "0abc");
    assert_eq!(e.kind, CredentialKind::X509);
    assert_eq!(e.spiffe_id, a.spiffe_id);
    assert_eq!(e.revoked_at, t(100));
    assert_eq!(e.reason, RevocationReason::KeyCompromise);
    assert_eq!(e.not_after, t(1000));
    assert_eq!(e.issuer, "int-01");
    assert_eq!(store.audit_count().await.unwrap(), before + 1);
    assert!(store.is_revoked("0abc").await.unwrap());
    assert!(!store.is_revoked("0abd").await.unwrap());
    assert!(!store.is_revoked("ffff").await.unwrap());

    // second revocation: same entry, original time and reason, no audit
    let again = store
        .revoke_serial(
            "0abc",
            RevocationReason::Superseded,
            t(200),
            audit("revoke.serial", "0abc"),
        )
        .await
        .unwrap();
    assert_eq!(again.revoked_at, t(100));
    assert_eq!(again.reason, RevocationReason::KeyCompromise);
    assert_eq!(store.audit_count().await.unwrap(), before + 1);

    let (c, r) = store.get_credential("0abc").await.unwrap().unwrap();
    assert_eq!(c.serial, "0abc");
    let r = r.expect("revoked");
    assert_eq!(
        (r.revoked_at, r.reason),
        (t(100), RevocationReason::KeyCompromise)
    );

    // never issued
    assert!(matches!(
        store
            .revoke_serial(
                "ffff",
                RevocationReason::Unspecified,
                t(100),
                audit("revoke.serial", "ffff")
            )
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.audit_count().await.unwrap(), before + 1);
    assert!(store.get_credential("ffff").await.unwrap().is_none());
}

pub async fn revoke_identity_credentials_only_live(store: &dyn Store) {
    let a = identity(1);
    let b = identity(2);
    create(store, &a).await;
    create(store, &b).await;
    store
        .record_issued(vec![
            issue(cred(&a, "a3", t(1000))), // live
            issue(cred(&a, "a1", t(1000))), // live
            issue(cred(&a, "a2", t(50))),   // expired at t(100)
            issue(cred(&a, "a4", t(1000))), // already revoked
            issue(cred(&b, "b1", t(1000))), // other identity
        ])
        .await
        .unwrap();
    store
        .revoke_serial(
            "a4",
            RevocationReason::Superseded,
            t(10),
            audit("revoke.serial", "a4"),
        )
        .await
        .unwrap();
    let before = store.audit_count().await.unwrap();
    let got = store
        .revoke_identity_credentials(
            &a.spiffe_id,
            RevocationReason::CessationOfOperation,
            t(100),
            audit("revoke.identity", a.spiffe_id.as_str()),
        )
        .await
        .unwrap();
    let serials: Vec<&str> = got.iter().map(|e| e.serial.as_str()).collect();
    assert_eq!(serials, vec!["a1", "a3"]);
    assert!(
        got.iter()
            .all(|e| e.reason == RevocationReason::CessationOfOperation
                && e.revoked_at == t(100)
                && e.spiffe_id == a.spiffe_id)
    );
    assert_eq!(store.audit_count().await.unwrap(), before + 1);
    assert!(!store.is_revoked("a2").await.unwrap());
    assert!(!store.is_revoked("b1").await.unwrap());
    // a4 kept its original revocation
    let (_, r) = store.get_credential("a4").await.unwrap().unwrap();
    assert_eq!(r.unwrap().reason, RevocationReason::Superseded);

    // nothing left to revoke: empty, still audited
    let got = store
        .revoke_identity_credentials(
            &a.spiffe_id,
            RevocationReason::Unspecified,
            t(200),
            audit("revoke.identity", a.spiffe_id.as_str()),
        )
        .await
        .unwrap();
    assert!(got.is_empty());
    assert_eq!(store.audit_count().await.unwrap(), before + 2);
    assert_eq!(last_audit(store).await.action, "revoke.identity");
}

pub async fn list_revoked_drops_expired(store: &dyn Store) {
    let a = identity(1);
    create(store, &a).await;
    let mut jwt = cred(&a, "jti-1", t(1000));
    jwt.kind = CredentialKind::Jwt;
    store
        .record_issued(vec![
            issue(cred(&a, "c3", t(1000))),
            issue(cred(&a, "c1", t(300))),
            issue(cred(&a, "c2", t(1000))),
            issue(cred(&a, "c4", t(1000))), // never revoked
            issue(jwt),
        ])
        .await
        .unwrap();
    for s in ["c3", "c1", "c2", "jti-1"] {
        store
            .revoke_serial(
                s,
                RevocationReason::KeyCompromise,
                t(10),
                audit("revoke.serial", s),
            )
            .await
            .unwrap();
    }
    let serials =
        |v: Vec<credence_store::RevokedEntry>| v.into_iter().map(|e| e.serial).collect::<Vec<_>>();
    assert_eq!(
        serials(
            store
                .list_revoked(CredentialKind::X509, t(100))
                .await
                .unwrap()
        ),
        vec!["c1", "c2", "c3"]
    );
    // c1 expired: it drops out of the CRL
    assert_eq!(
        serials(
            store
                .list_revoked(CredentialKind::X509, t(300))
                .await
                .unwrap()
        ),
        vec!["c2", "c3"]
    );
    assert_eq!(
        serials(
            store
                .list_revoked(CredentialKind::Jwt, t(100))
                .await
                .unwrap()
        ),
        vec!["jti-1"]
    );
    assert!(
        store
            .list_revoked(CredentialKind::X509, t(1000))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn prune_expired_removes_old_rows(store: &dyn Store) {
    let a = identity(1);
    create(store, &a).await;
    store
        .record_issued(vec![
            issue(cred(&a, "p1", t(100))),
            issue(cred(&a, "p2", t(200))),
            issue(cred(&a, "p3", t(300))),
        ])
        .await
        .unwrap();
    store
        .revoke_serial(
            "p1",
            RevocationReason::Unspecified,
            t(10),
            audit("revoke.serial", "p1"),
        )
        .await
        .unwrap();
    assert_eq!(store.prune_expired(t(200)).await.unwrap(), 1);
    assert!(store.get_credential("p1").await.unwrap().is_none());
    assert!(store.get_credential("p2").await.unwrap().is_some());
    assert_eq!(store.prune_expired(t(301)).await.unwrap(), 2);
    assert_eq!(store.prune_expired(t(301)).await.unwrap(), 0);
}

// ---------------------------------------------------------------- CA material

pub async fn ca_save_list_activate(store: &dyn Store) {
    let root = CaRecord {
        role: "root".to_owned(),
        ..ca("root-01", 1)
    };
    let int = ca("int-01", 2);
    let jwt = CaRecord {
        id: "jwt-k1".to_owned(),
        role: "jwt".to_owned(),
        cert_der: None,
        ..ca("x", 2)
    };
    for c in [&int, &jwt, &root] {
        store.save_ca(c, audit("ca.create", &c.id)).await.unwrap();
    }
    let got = store.list_cas().await.unwrap();
    let ids: Vec<&str> = got.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, vec!["root-01", "int-01", "jwt-k1"]);
    let g = &got[1];
    assert_eq!(
        (&g.role, &g.cert_der, &g.public_key_der, &g.wrapped_key),
        (
            &int.role,
            &int.cert_der,
            &int.public_key_der,
            &int.wrapped_key
        )
    );
    assert_eq!(
        (g.not_before, g.not_after, g.created_at, g.active),
        (int.not_before, int.not_after, int.created_at, true)
    );
    assert_eq!(got[2].cert_der, None);

    assert!(matches!(
        store.save_ca(&int, audit("ca.create", "int-01")).await,
        Err(StoreError::Conflict(_))
    ));
    store
        .set_ca_active("int-01", false, audit("ca.deactivate", "int-01"))
        .await
        .unwrap();
    let got = store.list_cas().await.unwrap();
    assert!(!got.iter().find(|c| c.id == "int-01").unwrap().active);
    assert!(got.iter().find(|c| c.id == "root-01").unwrap().active);
    store
        .set_ca_active("int-01", true, audit("ca.activate", "int-01"))
        .await
        .unwrap();
    assert!(store.list_cas().await.unwrap().iter().all(|c| c.active));
    assert!(matches!(
        store
            .set_ca_active("nope", true, audit("ca.activate", "nope"))
            .await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn next_crl_number_monotonic(store: &dyn Store) {
    assert_eq!(store.next_crl_number("int-01").await.unwrap(), 1);
    assert_eq!(store.next_crl_number("int-01").await.unwrap(), 2);
    assert_eq!(store.next_crl_number("int-02").await.unwrap(), 1);
    // concurrent callers each get a distinct number
    let mut got: Vec<u64> =
        futures::future::join_all((0..50).map(|_| store.next_crl_number("int-01")))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    got.sort_unstable();
    assert_eq!(got, (3..=52).collect::<Vec<u64>>());
    assert_eq!(store.next_crl_number("int-02").await.unwrap(), 2);
}

// ---------------------------------------------------------------- audit

pub async fn audit_record_for_every_mutation(store: &dyn Store) {
    assert_eq!(store.audit_count().await.unwrap(), 0);
    let mut expected: Vec<&str> = Vec::new();
    let a = identity(1);

    store
        .create_identity(&a, audit("identity.create", "a"))
        .await
        .unwrap();
    expected.push("identity.create");
    let mut a2 = a.clone();
    a2.description = "x".to_owned();
    store
        .update_identity(&a2, audit("identity.update", "a"))
        .await
        .unwrap();
    expected.push("identity.update");
    store
        .record_issued(vec![
            issue(cred(&a, "01", t(1000))),
            issue(cred(&a, "02", t(1000))),
        ])
        .await
        .unwrap();
    expected.extend(["x509.issue", "x509.issue"]);
    store
        .revoke_serial(
            "01",
            RevocationReason::KeyCompromise,
            t(5),
            audit("revoke.serial", "01"),
        )
        .await
        .unwrap();
    expected.push("revoke.serial");
    store
        .revoke_identity_credentials(
            &a.spiffe_id,
            RevocationReason::Unspecified,
            t(5),
            audit("revoke.identity", "a"),
        )
        .await
        .unwrap();
    expected.push("revoke.identity");
    store
        .save_ca(&ca("int-01", 1), audit("ca.create", "int-01"))
        .await
        .unwrap();
    expected.push("ca.create");
    store
        .set_ca_active("int-01", false, audit("ca.deactivate", "int-01"))
        .await
        .unwrap();
    expected.push("ca.deactivate");
    store
        .delete_identity(&a.id, audit("identity.delete", "a"))
        .await
        .unwrap();
    expected.push("identity.delete");
    let mut refused = audit("attest.x509", "spiffe://example.org/evil");
    refused.outcome = Outcome::Failure;
    refused.actor.id = "spiffe://example.org/evil".to_owned();
    refused.details = details(
        serde_json::json!({ "error": "no matching selector", "nested": [1, 2, { "a": null }] }),
    );
    let seq = store.append_audit(refused.clone()).await.unwrap();
    expected.push("attest.x509");

    // housekeeping carries no audit record
    store.next_crl_number("int-01").await.unwrap();
    store.prune_expired(t(0)).await.unwrap();

    assert_eq!(store.audit_count().await.unwrap(), expected.len() as u64);
    let all = store.list_audit(0, 1000).await.unwrap();
    let actions: Vec<&str> = all.iter().map(|(_, a)| a.action.as_str()).collect();
    assert_eq!(actions, expected);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
    let (last_seq, last) = all.last().unwrap();
    assert_eq!(*last_seq, seq);
    assert_eq!(last, &refused, "the event reads back exactly");

    // paging by sequence
    let first3 = store.list_audit(0, 3).await.unwrap();
    assert_eq!(first3.len(), 3);
    let rest = store.list_audit(first3[2].0 + 1, 1000).await.unwrap();
    assert_eq!(rest.len(), expected.len() - 3);
    assert!(
        store
            .list_audit(*last_seq + 1, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.list_audit(u64::MAX, 10).await.unwrap().is_empty());
    assert_eq!(store.list_audit(0, 0).await.unwrap().len(), 1);

    // the record serializes with an RFC 3339 time
    let json = serde_json::to_value(last).unwrap();
    assert_eq!(json["time"], "2023-11-15T01:00:00Z");
    let back: AuditRecord = serde_json::from_value(json).unwrap();
    assert_eq!(back.time, last.time);
}

pub async fn failed_mutation_writes_no_audit(store: &dyn Store) {
    let a = identity(1);
    create(store, &a).await;
    store
        .save_ca(&ca("int-01", 1), audit("ca.create", "int-01"))
        .await
        .unwrap();
    let before = store.audit_count().await.unwrap();

    let mut dup = identity(2);
    dup.spiffe_id = a.spiffe_id.clone();
    assert!(
        store
            .create_identity(&dup, audit("identity.create", "dup"))
            .await
            .is_err()
    );
    assert!(
        store
            .create_identity(&a, audit("identity.create", "dup"))
            .await
            .is_err()
    );
    assert!(
        store
            .update_identity(&identity(9), audit("identity.update", "x"))
            .await
            .is_err()
    );
    assert!(
        store
            .delete_identity(&id_of(9), audit("identity.delete", "x"))
            .await
            .is_err()
    );
    assert!(
        store
            .revoke_serial(
                "ffff",
                RevocationReason::Unspecified,
                t(1),
                audit("revoke.serial", "ffff")
            )
            .await
            .is_err()
    );
    assert!(
        store
            .save_ca(&ca("int-01", 1), audit("ca.create", "int-01"))
            .await
            .is_err()
    );
    assert!(
        store
            .set_ca_active("nope", false, audit("ca.deactivate", "nope"))
            .await
            .is_err()
    );
    store
        .record_issued(vec![issue(cred(&a, "01", t(1000)))])
        .await
        .unwrap();
    let before_dup_issue = store.audit_count().await.unwrap();
    assert_eq!(before_dup_issue, before + 1);
    assert!(
        store
            .record_issued(vec![
                issue(cred(&a, "02", t(1000))),
                issue(cred(&a, "01", t(1000)))
            ])
            .await
            .is_err()
    );
    // the whole failed request is rolled back, its good credential included
    assert!(store.get_credential("02").await.unwrap().is_none());

    assert_eq!(store.audit_count().await.unwrap(), before + 1);
    assert_eq!(last_audit(store).await.action, "x509.issue");
}

pub async fn closed_store_refuses(store: &dyn Store) {
    let a = identity(1);
    create(store, &a).await;
    store.close().await;
    store.close().await; // idempotent
    assert_eq!(store.get_identity(&a.id).await, Err(StoreError::Closed));
    assert_eq!(
        store
            .create_identity(&identity(2), audit("identity.create", "x"))
            .await,
        Err(StoreError::Closed)
    );
    assert_eq!(
        store
            .record_issued(vec![issue(cred(&a, "01", t(10)))])
            .await,
        Err(StoreError::Closed)
    );
    assert_eq!(store.next_crl_number("x").await, Err(StoreError::Closed));
    assert_eq!(StoreError::Closed.to_string(), "store is shutting down");
}

// ---------------------------------------------------------------- durability

pub async fn reopen_keeps_data(h: &dyn Harness) {
    let a = identity(1);
    {
        let store = h.open().await;
        create(&*store, &a).await;
        store
            .record_issued(vec![issue(cred(&a, "0f", t(1000)))])
            .await
            .unwrap();
        store
            .revoke_serial(
                "0f",
                RevocationReason::KeyCompromise,
                t(3),
                audit("revoke.serial", "0f"),
            )
            .await
            .unwrap();
        store
            .save_ca(&ca("int-01", 1), audit("ca.create", "int-01"))
            .await
            .unwrap();
        assert_eq!(store.next_crl_number("int-01").await.unwrap(), 1);
        store.close().await;
    }
    let store = h.open().await;
    let mut want = a.clone();
    want.last_issued_at = Some(t(10_000));
    assert_eq!(store.get_identity(&a.id).await.unwrap(), Some(want));
    assert!(store.is_revoked("0f").await.unwrap());
    assert_eq!(store.list_cas().await.unwrap().len(), 1);
    assert_eq!(store.next_crl_number("int-01").await.unwrap(), 2);
    assert_eq!(store.audit_count().await.unwrap(), 4);
    // the log resumes where it was: same root, indices continue, and the new
    // tree is provably an extension of the old one
    let (size4, root4) = store.audit_head().await.unwrap();
    assert_eq!(size4, 4);
    let leaves: Vec<_> = store.audit_leaves(0, 4).await.unwrap();
    let hashes: Vec<_> = leaves
        .iter()
        .map(|(_, l)| credence_audit::hash_leaf(l))
        .collect();
    assert_eq!(credence_audit::root_of(&hashes), root4);
    let seq = store.append_audit(audit("x", "y")).await.unwrap();
    assert_eq!(seq, 4);
    let (size5, root5) = store.audit_head().await.unwrap();
    assert_eq!(size5, 5);
    let proof = credence_store::proofs::consistency_proof(store.as_ref(), 4, 5)
        .await
        .unwrap();
    credence_audit::verify_consistency(4, 5, &root4, &root5, &proof).unwrap();
    store.close().await;

    // a store dropped without close() also reopens fine
    {
        let store = h.open().await;
        store.append_audit(audit("x", "z")).await.unwrap();
    }
    let store = h.open().await;
    assert_eq!(store.audit_count().await.unwrap(), 6);
    store.close().await;
}

pub async fn audit_log_is_a_verifiable_merkle_tree(store: &dyn Store) {
    use credence_audit::{hash_leaf, root_of, verify_consistency, verify_inclusion};
    use credence_store::proofs;
    // a mix of single-event transactions and group commits
    for i in 0..5u32 {
        create(store, &identity(i)).await;
    }
    let who = identity(0);
    let mut tasks = Vec::new();
    for c in 0..4 {
        let creds: Vec<_> = (0..7)
            .map(|k| issue(cred(&who, &format!("{c:02x}{k:02x}"), t(100_000))))
            .collect();
        tasks.push(store.record_issued(creds));
    }
    for r in futures::future::join_all(tasks).await {
        r.unwrap();
    }
    // a failed mutation changes nothing in the log
    let (size_before, root_before) = store.audit_head().await.unwrap();
    assert!(
        store
            .create_identity(&identity(1), audit("identity.create", "dup"))
            .await
            .is_err()
    );
    assert_eq!(
        store.audit_head().await.unwrap(),
        (size_before, root_before)
    );
    store
        .append_audit(audit("x", "after-failure"))
        .await
        .unwrap();

    let (size, root) = store.audit_head().await.unwrap();
    assert_eq!(size, 5 + 28 + 1);
    assert_eq!(store.audit_count().await.unwrap(), size);
    let leaves = store.audit_leaves(0, size).await.unwrap();
    assert_eq!(leaves.len() as u64, size);
    assert!(
        leaves
            .iter()
            .enumerate()
            .all(|(i, (idx, _))| *idx == i as u64),
        "no gaps"
    );
    let hashes: Vec<_> = leaves.iter().map(|(_, l)| hash_leaf(l)).collect();
    assert_eq!(root_of(&hashes), root, "stored root = recomputed root");
    for (_, l) in &leaves {
        AuditRecord::from_leaf_bytes(l).unwrap();
    }
    for n in 1..=size {
        assert_eq!(
            proofs::root_at(store, n).await.unwrap(),
            root_of(&hashes[..n as usize])
        );
        for i in [0, n / 2, n - 1] {
            let p = proofs::inclusion_proof(store, i, n).await.unwrap();
            verify_inclusion(
                &hashes[i as usize],
                i,
                n,
                &p,
                &root_of(&hashes[..n as usize]),
            )
            .unwrap();
        }
        for m in [1, n / 3, n - 1] {
            if m == 0 || m > n {
                continue;
            }
            let p = proofs::consistency_proof(store, m, n).await.unwrap();
            verify_consistency(
                m,
                n,
                &root_of(&hashes[..m as usize]),
                &root_of(&hashes[..n as usize]),
                &p,
            )
            .unwrap();
        }
    }
    // asking past the end is a caller error
    assert!(matches!(
        proofs::inclusion_proof(store, 0, size + 1).await,
        Err(StoreError::BadArgument(_))
    ));
    assert!(matches!(
        proofs::inclusion_proof(store, size, size).await,
        Err(StoreError::BadArgument(_))
    ));
}

pub async fn audit_checkpoints_and_search(store: &dyn Store) {
    assert_eq!(store.latest_checkpoint().await.unwrap(), None);
    let a = identity(1);
    create(store, &a).await;
    let mut failed = audit("admin.authenticate", "/v1/identities");
    failed.outcome = Outcome::Failure;
    store.append_audit(failed).await.unwrap();
    let mut issued = audit("x509.issue", "spiffe://example.org/w1");
    issued.time = t(50_000);
    store.append_audit(issued).await.unwrap();
    store.save_checkpoint(2, "note-2\n", t(1)).await.unwrap();
    store.save_checkpoint(3, "note-3\n", t(2)).await.unwrap();
    store.save_checkpoint(3, "other\n", t(3)).await.unwrap();
    assert_eq!(
        store.latest_checkpoint().await.unwrap(),
        Some((3, "note-3\n".to_owned()))
    );
    assert_eq!(store.checkpoints(0, 10).await.unwrap().len(), 2);
    assert_eq!(store.checkpoints(3, 3).await.unwrap()[0].0, 3);

    let f = |action: Option<&str>| credence_store::AuditFilter {
        action: action.map(str::to_owned),
        ..Default::default()
    };
    let all = store.search_audit(&f(None), None, 100).await.unwrap();
    assert_eq!(all.len(), 3);
    let only = store
        .search_audit(&f(Some("x509.issue")), None, 100)
        .await
        .unwrap();
    assert_eq!(only.len(), 1);
    let failures = store
        .search_audit(
            &credence_store::AuditFilter {
                outcome: Some(Outcome::Failure),
                ..Default::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].1.action, "admin.authenticate");
    let by_id = store
        .search_audit(
            &credence_store::AuditFilter {
                spiffe_id: Some("spiffe://example.org/w1".into()),
                ..Default::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    assert_eq!(by_id.len(), 1);
    let since = store
        .search_audit(
            &credence_store::AuditFilter {
                since: Some(t(40_000)),
                ..Default::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    assert_eq!(since.len(), 1);
    let after_first = store
        .search_audit(&f(None), Some(all[0].0), 100)
        .await
        .unwrap();
    assert_eq!(after_first.len(), 2);
}

// ---------------------------------------------------------------- nodes

fn node(n: u8) -> Node {
    let id = NodeId::from_random([n; 16]);
    Node {
        spiffe_id: spiffe(&format!("credence/agent/{id}")),
        id,
        attestation: "join_token".to_owned(),
        token_id: Some(format!("tok{n}")),
        status: NodeStatus::Active,
        agent_serial: None,
        agent_not_after: None,
        created_at: t(i64::from(n)),
        updated_at: t(i64::from(n)),
    }
}

fn join_token(n: u8, expires: i64) -> JoinToken {
    JoinToken {
        id: format!("tok{n}"),
        hash: format!("{n:02x}").repeat(32),
        created_at: t(0),
        expires_at: t(expires),
        used_at: None,
        node_id: None,
    }
}

pub async fn join_token_single_use_and_expiry(store: &dyn Store) {
    store
        .create_join_token(&join_token(1, 600), audit("node.token.create", "tok1"))
        .await
        .unwrap();
    store
        .create_join_token(&join_token(2, 600), audit("node.token.create", "tok2"))
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_join_token(&join_token(1, 600), audit("node.token.create", "tok1"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    let before = store.audit_count().await.unwrap();
    // unknown and expired tokens write nothing
    assert!(matches!(
        store
            .redeem_join_token(&"ff".repeat(32), t(1), &node(9), audit("node.attest", "x"))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store
            .redeem_join_token(
                &join_token(2, 0).hash,
                t(600),
                &node(2),
                audit("node.attest", "x")
            )
            .await,
        Err(StoreError::BadArgument(_))
    ));
    assert_eq!(store.audit_count().await.unwrap(), before);
    assert!(store.get_node(&node(2).id).await.unwrap().is_none());

    let spent = store
        .redeem_join_token(
            &join_token(1, 0).hash,
            t(5),
            &node(1),
            audit("node.attest", "n1"),
        )
        .await
        .unwrap();
    assert_eq!(spent.used_at, Some(t(5)));
    assert_eq!(spent.node_id, Some(node(1).id));
    assert_eq!(store.get_node(&node(1).id).await.unwrap(), Some(node(1)));
    // a replay fails and creates no second node
    assert!(matches!(
        store
            .redeem_join_token(
                &join_token(1, 0).hash,
                t(6),
                &node(3),
                audit("node.attest", "n3")
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(store.get_node(&node(3).id).await.unwrap().is_none());
    assert_eq!(
        store.get_join_token("tok1").await.unwrap().unwrap().used_at,
        Some(t(5))
    );
    assert_eq!(store.audit_count().await.unwrap(), before + 1);
}

pub async fn evict_node_revokes_its_credentials(store: &dyn Store) {
    store
        .create_join_token(&join_token(1, 600), audit("node.token.create", "tok1"))
        .await
        .unwrap();
    let n = node(1);
    store
        .redeem_join_token(&join_token(1, 0).hash, t(5), &n, audit("node.attest", "n1"))
        .await
        .unwrap();
    store
        .set_node_svid(&n.id, "a0", t(3_600), t(6))
        .await
        .unwrap();
    let got = store.get_node(&n.id).await.unwrap().unwrap();
    assert_eq!(got.agent_serial.as_deref(), Some("a0"));
    assert_eq!(got.agent_not_after, Some(t(3_600)));

    let i = identity(1);
    create(store, &i).await;
    let mut via_node = cred(&i, "01", t(3_600));
    via_node.node_id = Some(n.id.clone());
    let mut expired = cred(&i, "02", t(1));
    expired.node_id = Some(n.id.clone());
    let direct = cred(&i, "03", t(3_600));
    store
        .record_issued(vec![issue(via_node), issue(expired), issue(direct)])
        .await
        .unwrap();
    let revoked = store
        .evict_node(&n.id, t(10), audit("node.evict", n.id.as_str()))
        .await
        .unwrap();
    assert_eq!(
        revoked
            .iter()
            .map(|r| r.serial.as_str())
            .collect::<Vec<_>>(),
        ["01"]
    );
    assert_eq!(revoked[0].reason, RevocationReason::CessationOfOperation);
    assert!(store.is_revoked("01").await.unwrap());
    assert!(!store.is_revoked("03").await.unwrap());
    assert_eq!(
        store.get_node(&n.id).await.unwrap().unwrap().status,
        NodeStatus::Evicted
    );
    let (c, _) = store.get_credential("01").await.unwrap().unwrap();
    assert_eq!(c.node_id, Some(n.id.clone()));
    assert!(matches!(
        store
            .evict_node(&node(7).id, t(10), audit("node.evict", "x"))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.list_nodes().await.unwrap().len(), 1);
}

pub async fn nodes_attested_without_join_token(store: &dyn Store) {
    let mut n = node(9);
    n.attestation = "oidc:github".into();
    n.token_id = None;
    let first = store
        .attest_node(&n, audit("node.attest", n.spiffe_id.as_str()))
        .await
        .unwrap();
    assert_eq!(first, n);
    assert_eq!(store.get_node(&n.id).await.unwrap(), Some(n.clone()));
    // the same node again: kept, not duplicated
    let mut again = n.clone();
    again.created_at = t(100);
    again.updated_at = t(100);
    let got = store
        .attest_node(&again, audit("node.attest", n.spiffe_id.as_str()))
        .await
        .unwrap();
    assert_eq!(got.created_at, n.created_at);
    assert_eq!(store.list_nodes().await.unwrap().len(), 1);
    // evicted stays evicted
    store
        .evict_node(&n.id, t(200), audit("node.evict", n.id.as_str()))
        .await
        .unwrap();
    let err = store
        .attest_node(&again, audit("node.attest", n.spiffe_id.as_str()))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
}

pub async fn identity_nodes_round_trip(store: &dyn Store) {
    let mut i = identity(1);
    i.nodes = vec![node(1).id, node(2).id];
    create(store, &i).await;
    assert_eq!(store.get_identity(&i.id).await.unwrap(), Some(i.clone()));
    i.nodes.pop();
    i.updated_at = t(50);
    store
        .update_identity(&i, audit("identity.update", i.spiffe_id.as_str()))
        .await
        .unwrap();
    assert_eq!(store.get_identity(&i.id).await.unwrap(), Some(i));
}

pub async fn identity_scopes_round_trip(store: &dyn Store) {
    let mut i = identity(1);
    i.scopes = Scope::parse_list(["docs:read", "docs:write"]).unwrap();
    create(store, &i).await;
    assert_eq!(store.get_identity(&i.id).await.unwrap(), Some(i.clone()));
    i.scopes.pop();
    i.updated_at = t(50);
    store
        .update_identity(&i, audit("identity.update", i.spiffe_id.as_str()))
        .await
        .unwrap();
    assert_eq!(store.get_identity(&i.id).await.unwrap(), Some(i));
}

pub async fn identity_federates_with_round_trip(store: &dyn Store) {
    let mut i = identity(1);
    i.federates_with = vec![
        TrustDomain::new("partner.example").unwrap(),
        TrustDomain::new("other.example").unwrap(),
    ];
    create(store, &i).await;
    assert_eq!(store.get_identity(&i.id).await.unwrap(), Some(i.clone()));
    i.federates_with.remove(0);
    i.updated_at = t(50);
    store
        .update_identity(&i, audit("identity.update", i.spiffe_id.as_str()))
        .await
        .unwrap();
    assert_eq!(store.get_identity(&i.id).await.unwrap(), Some(i));
}

// ---------------------------------------------------------------- federation

pub async fn federation_relationships_and_refreshes(store: &dyn Store) {
    let web = Federation {
        trust_domain: TrustDomain::new("b.example").unwrap(),
        bundle_endpoint: BundleEndpointUrl::parse("https://b.example/bundle").unwrap(),
        profile: BundleProfile::HttpsWeb,
        tls_roots_pem: Some("-----BEGIN CERTIFICATE-----\n...".into()),
        created_at: t(1),
        created_by: "admin".into(),
        bundle: None,
        last_error: None,
        last_attempt_at: None,
    };
    let spiffe = Federation {
        trust_domain: TrustDomain::new("a.example").unwrap(),
        bundle_endpoint: BundleEndpointUrl::parse("https://a.example:8443/").unwrap(),
        profile: BundleProfile::HttpsSpiffe {
            endpoint_spiffe_id: SpiffeId::parse("spiffe://a.example/bundle-server").unwrap(),
        },
        tls_roots_pem: None,
        created_at: t(2),
        created_by: "admin".into(),
        bundle: Some(FederatedBundle {
            document: r#"{"keys":[]}"#.into(),
            sequence: Some(1),
            refresh_hint_seconds: None,
            fetched_at: t(2),
        }),
        last_error: None,
        last_attempt_at: Some(t(2)),
    };
    let before = store.audit_count().await.unwrap();
    for f in [&web, &spiffe] {
        store
            .create_federation(f, audit("federation.add", f.trust_domain.as_str()))
            .await
            .unwrap();
    }
    let err = store
        .create_federation(&web, audit("federation.add", "b.example"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(
        store.list_federations().await.unwrap(),
        vec![spiffe.clone(), web.clone()]
    );
    assert_eq!(
        store.get_federation(&web.trust_domain).await.unwrap(),
        Some(web.clone())
    );

    // a failure keeps the old bundle and is not an audit event
    store
        .record_federation_refresh(&spiffe.trust_domain, t(10), Err("timed out".into()), None)
        .await
        .unwrap();
    let got = store
        .get_federation(&spiffe.trust_domain)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.bundle, spiffe.bundle);
    assert_eq!(got.last_error.as_deref(), Some("timed out"));
    assert_eq!(got.last_attempt_at, Some(t(10)));

    // a new bundle clears the error and commits with its audit record
    let fresh = FederatedBundle {
        document: r#"{"keys":[{"kty":"EC"}]}"#.into(),
        sequence: Some(2),
        refresh_hint_seconds: Some(300),
        fetched_at: t(20),
    };
    store
        .record_federation_refresh(
            &spiffe.trust_domain,
            t(20),
            Ok(fresh.clone()),
            Some(audit("federation.bundle", "a.example")),
        )
        .await
        .unwrap();
    let got = store
        .get_federation(&spiffe.trust_domain)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.bundle, Some(fresh));
    assert_eq!(got.last_error, None);

    let missing = TrustDomain::new("nope.example").unwrap();
    let err = store
        .record_federation_refresh(&missing, t(30), Err("x".into()), None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    store
        .delete_federation(&web.trust_domain, audit("federation.remove", "b.example"))
        .await
        .unwrap();
    let err = store
        .delete_federation(&web.trust_domain, audit("federation.remove", "b.example"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(store.get_federation(&web.trust_domain).await.unwrap(), None);
    // two adds, one changed bundle, one removal
    assert_eq!(store.audit_count().await.unwrap() - before, 4);
}

// ---------------------------------------------------------------- admins

pub async fn admins_create_find_delete(store: &dyn Store) {
    let alice = Admin {
        name: AdminName::parse("alice").unwrap(),
        teams: vec![
            Owner::new("payments").unwrap(),
            Owner::new("search").unwrap(),
        ],
        description: "payments lead".into(),
        created_at: t(1),
        created_by: "root".into(),
        expires_at: Some(t(86_400)),
    };
    let bob = Admin {
        name: AdminName::parse("bob").unwrap(),
        teams: Vec::new(),
        description: String::new(),
        created_at: t(2),
        created_by: "root".into(),
        expires_at: None,
    };
    store
        .create_admin(&bob, &"b".repeat(64), audit("admin.create", "bob"))
        .await
        .unwrap();
    store
        .create_admin(&alice, &"a".repeat(64), audit("admin.create", "alice"))
        .await
        .unwrap();
    assert_eq!(last_audit(store).await.target, "alice");
    // same name, or same token hash: refused, nothing written
    let n = store.audit_count().await.unwrap();
    assert!(matches!(
        store
            .create_admin(&alice, &"c".repeat(64), audit("admin.create", "alice"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    let mut carol = bob.clone();
    carol.name = AdminName::parse("carol").unwrap();
    assert!(
        store
            .create_admin(&carol, &"a".repeat(64), audit("admin.create", "carol"))
            .await
            .is_err()
    );
    assert_eq!(store.audit_count().await.unwrap(), n);

    assert_eq!(
        store.admin_by_token_hash(&"a".repeat(64)).await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(
        store.admin_by_token_hash(&"d".repeat(64)).await.unwrap(),
        None
    );
    assert_eq!(store.get_admin(&bob.name).await.unwrap(), Some(bob.clone()));
    let names: Vec<String> = store
        .list_admins()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name.to_string())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    store
        .delete_admin(&alice.name, audit("admin.delete", "alice"))
        .await
        .unwrap();
    assert_eq!(
        store.admin_by_token_hash(&"a".repeat(64)).await.unwrap(),
        None
    );
    assert!(matches!(
        store
            .delete_admin(&alice.name, audit("admin.delete", "alice"))
            .await,
        Err(StoreError::NotFound(_))
    ));
}

// ---------------------------------------------------------------- policies

fn policy_set(n: u32) -> PolicySetRecord {
    PolicySetRecord {
        version: 0,
        namespace: Some("App".into()),
        schema: format!("namespace App {{ entity E{n}; }}"),
        policies: format!("@id(\"p{n}\") permit(principal, action, resource);"),
        note: format!("version {n}"),
        created_at: t(i64::from(n)),
        created_by: "admin".into(),
        active: true,
    }
}

pub async fn policy_sets_versions_and_activation(store: &dyn Store) {
    assert!(store.active_policy_set().await.unwrap().is_none());
    let v1 = store
        .save_policy_set(&policy_set(1), true, audit("policy.create", "1"))
        .await
        .unwrap();
    let v2 = store
        .save_policy_set(&policy_set(2), false, audit("policy.create", "2"))
        .await
        .unwrap();
    assert_eq!((v1, v2), (1, 2));
    let active = store.active_policy_set().await.unwrap().unwrap();
    assert_eq!(active.version, 1);
    assert_eq!(active.note, "version 1");
    store
        .activate_policy_set(2, audit("policy.activate", "2"))
        .await
        .unwrap();
    assert_eq!(store.active_policy_set().await.unwrap().unwrap().version, 2);
    // rollback
    store
        .activate_policy_set(1, audit("policy.activate", "1"))
        .await
        .unwrap();
    let all = store.list_policy_sets(10).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|p| (p.version, p.active))
            .collect::<Vec<_>>(),
        [(2, false), (1, true)]
    );
    assert_eq!(
        store.get_policy_set(2).await.unwrap().unwrap().schema,
        policy_set(2).schema
    );
    assert!(store.get_policy_set(9).await.unwrap().is_none());
    let before = store.audit_count().await.unwrap();
    assert!(matches!(
        store
            .activate_policy_set(9, audit("policy.activate", "9"))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.audit_count().await.unwrap(), before);
    // a new active version replaces the active one atomically
    let v3 = store
        .save_policy_set(&policy_set(3), true, audit("policy.create", "3"))
        .await
        .unwrap();
    assert_eq!(
        store.active_policy_set().await.unwrap().unwrap().version,
        v3
    );
    // entities
    assert!(store.policy_entities().await.unwrap().is_none());
    store
        .save_policy_entities("[]", t(5), audit("policy.entities", ""))
        .await
        .unwrap();
    store
        .save_policy_entities("[{}]", t(6), audit("policy.entities", ""))
        .await
        .unwrap();
    assert_eq!(
        store.policy_entities().await.unwrap().as_deref(),
        Some("[{}]")
    );
}

fn grant(
    n: u8,
    parent: Option<&Delegation>,
    grantee: &Identity,
    max_uses: Option<u64>,
) -> Delegation {
    let id = DelegationId::from_random([n; 16]);
    let mut chain = parent.map(|p| p.chain.clone()).unwrap_or_default();
    chain.push(Hop {
        delegation: id.as_str().to_owned(),
        grantee: grantee.spiffe_id.as_str().to_owned(),
    });
    let principal = Grantor::External {
        issuer: "corp".into(),
        subject: "alice".into(),
    };
    Delegation {
        id,
        parent: parent.map(|p| p.id.clone()),
        chain,
        grantor: match parent {
            None => principal.clone(),
            Some(p) => Grantor::Identity {
                spiffe_id: p.grantee.as_str().to_owned(),
            },
        },
        principal,
        grantee: grantee.spiffe_id.clone(),
        mandate: Mandate {
            scopes: Scope::parse_list(["docs:read"]).unwrap(),
            audiences: vec!["https://docs".into()],
            max_token_ttl_seconds: 300,
            max_depth: 5,
            not_before: t(0),
            expires_at: t(3600),
            max_uses,
        },
        uses: 0,
        note: format!("grant {n}"),
        created_at: t(0),
        revoked_at: None,
        revocation_reason: None,
    }
}

/// A chain of grants round-trips; uses are counted against the limit in
/// the transaction that records the token; revoking a link revokes the
/// links below it and what was minted under them, not those above.
pub async fn delegation_chains_and_cascade_revocation(store: &dyn Store) {
    let agents: Vec<Identity> = (1..=4).map(identity).collect();
    for a in &agents {
        create(store, a).await;
    }
    let mut chain: Vec<Delegation> = Vec::new();
    for (n, a) in agents.iter().enumerate() {
        let uses = if n == 3 { Some(1) } else { None };
        let g = grant(n as u8 + 1, chain.last(), a, uses);
        store
            .create_delegation(&g, audit("delegation.create", g.id.as_str()))
            .await
            .unwrap();
        assert_eq!(
            store.get_delegation(&g.id).await.unwrap().as_ref(),
            Some(&g)
        );
        chain.push(g);
    }
    assert_eq!(last_audit(store).await.action, "delegation.create");
    let got = store.delegation_chain(&chain[3].id).await.unwrap();
    assert_eq!(got, chain);
    assert_eq!(chain[3].depth(), 4);
    // duplicates and unknown parents
    let dup = store
        .create_delegation(&chain[0], audit("delegation.create", "dup"))
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    let mut orphan = grant(9, Some(&chain[3]), &agents[0], None);
    orphan.parent = Some(DelegationId::from_random([0xee; 16]));
    let r = store.create_delegation(&orphan, audit("x", "y")).await;
    assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    // listings
    let all = store
        .list_delegations(&DelegationFilter::default())
        .await
        .unwrap();
    assert_eq!(all, chain);
    let under = store
        .list_delegations(&DelegationFilter {
            under: Some(chain[1].id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(under, chain[1..].to_vec());
    let held = store
        .list_delegations(&DelegationFilter {
            grantee: Some(agents[2].spiffe_id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(held, vec![chain[2].clone()]);
    // a token under each grant; the last grant allows one use
    for (n, g) in chain.iter().enumerate() {
        let c = cred(&agents[n], &format!("tok{n}"), t(600));
        store
            .record_delegated(&g.id, c, audit("oauth.token", g.id.as_str()))
            .await
            .unwrap();
    }
    let again = store
        .record_delegated(
            &chain[3].id,
            cred(&agents[3], "tok-again", t(600)),
            audit("oauth.token", "x"),
        )
        .await;
    assert!(
        matches!(again, Err(StoreError::Conflict(ref m)) if m.contains("used up")),
        "{again:?}"
    );
    assert!(store.get_credential("tok-again").await.unwrap().is_none());
    assert_eq!(
        store
            .get_delegation(&chain[3].id)
            .await
            .unwrap()
            .unwrap()
            .uses,
        1
    );
    // revoke the second link: it and everything below, not the root
    let (grants, creds) = store
        .revoke_delegation(
            &chain[1].id,
            "compromised",
            t(100),
            audit("delegation.revoke", "x"),
        )
        .await
        .unwrap();
    let mut below: Vec<DelegationId> = chain[1..].iter().map(|g| g.id.clone()).collect();
    below.sort();
    assert_eq!(grants, below);
    let mut serials: Vec<&str> = creds.iter().map(|c| c.serial.as_str()).collect();
    serials.sort_unstable();
    assert_eq!(serials, ["tok1", "tok2", "tok3"]);
    assert!(!store.is_revoked("tok0").await.unwrap());
    assert!(store.is_revoked("tok2").await.unwrap());
    let g2 = store.get_delegation(&chain[2].id).await.unwrap().unwrap();
    assert_eq!(g2.revoked_at, Some(t(100)));
    assert_eq!(g2.revocation_reason.as_deref(), Some("compromised"));
    assert!(
        store
            .get_delegation(&chain[0].id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none()
    );
    let live = store
        .list_delegations(&DelegationFilter::default())
        .await
        .unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!((&live[0].id, live[0].uses), (&chain[0].id, 1));
    // nothing new joins a revoked subtree, nothing is minted under it
    let late = grant(10, Some(&chain[2]), &agents[0], None);
    let r = store.create_delegation(&late, audit("x", "y")).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    let r = store
        .record_delegated(
            &chain[2].id,
            cred(&agents[2], "tok-late", t(600)),
            audit("x", "y"),
        )
        .await;
    assert!(
        matches!(r, Err(StoreError::Conflict(ref m)) if m.contains("revoked")),
        "{r:?}"
    );
    // revoking again changes nothing and records nothing
    let before = store.audit_count().await.unwrap();
    let (g, c) = store
        .revoke_delegation(
            &chain[2].id,
            "again",
            t(200),
            audit("delegation.revoke", "y"),
        )
        .await
        .unwrap();
    assert!(g.is_empty() && c.is_empty());
    assert_eq!(store.audit_count().await.unwrap(), before);
    let missing = store
        .revoke_delegation(
            &DelegationId::from_random([0x77; 16]),
            "x",
            t(1),
            audit("x", "y"),
        )
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}
