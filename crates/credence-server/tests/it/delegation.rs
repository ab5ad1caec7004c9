//! Delegation grants at the service: root grants by an administrator,
//! child grants by the grantee that only narrow, cascade revocation.

use serde_json::json;

use credence_core::DelegationId;
use credence_server::ServerError;
use credence_server::authz::Principal;
use credence_server::delegation::NewDelegation;
use credence_server::service::{Actor, NewIdentity};
use credence_store::DelegationFilter;

use crate::service::fixture;

const ISSUER: &str = "https://credence.example.org";

fn agent(path: &str) -> NewIdentity {
    serde_json::from_value(json!({
        "spiffe_id": format!("spiffe://example.org/{path}"), "kind": "agent", "owner": "team-a",
        "scopes": ["docs:read", "docs:write", "docs:delete"],
    }))
    .unwrap()
}

/// The workload `path` calling with its JWT-SVID.
fn as_agent(path: &str) -> Actor {
    Actor {
        name: format!("spiffe://example.org/{path}"),
        method: "jwt_svid",
        request_id: None,
        client_addr: None,
        principal: Principal::Workload,
    }
}

fn ask(grantee: &str, parent: Option<&DelegationId>, v: serde_json::Value) -> NewDelegation {
    let mut req: NewDelegation = serde_json::from_value(v).unwrap();
    req.grantee = format!("spiffe://example.org/{grantee}");
    req.parent = parent.map(|p| p.as_str().to_owned());
    req
}

/// The refusal of a grant `by` asks for `grantee` under `parent`.
async fn refused(
    f: &crate::service::Fixture,
    by: &Actor,
    grantee: &str,
    parent: Option<&DelegationId>,
    v: serde_json::Value,
) -> ServerError {
    f.svc
        .create_delegation(by, ask(grantee, parent, v), ISSUER)
        .await
        .unwrap_err()
}

#[tokio::test]
async fn chains_narrow_and_revocation_cascades() {
    let f = fixture().await;
    let admin = Actor::admin();
    for i in 0..6 {
        f.svc
            .create_identity(&admin, agent(&format!("a{i}")))
            .await
            .unwrap();
    }
    // the team's mandate for a0: read and write the docs, two more hops
    let (root, token) = f
        .svc
        .create_delegation(
            &admin,
            ask(
                "a0",
                None,
                json!({"grantee": "", "scopes": ["docs:read", "docs:write"],
                "audiences": ["https://docs.example"], "max_depth": 4, "ttl_seconds": 3600}),
            ),
            ISSUER,
        )
        .await
        .unwrap();
    assert_eq!(token.split('.').count(), 3);
    assert_eq!(root.principal.principal(), "admin:root");
    assert_eq!(root.depth(), 1);
    // a scope the identity does not have is refused by name
    let e = refused(
        &f,
        &admin,
        "a0",
        None,
        json!({"grantee": "", "scopes": ["mail:send"], "audiences": ["x"]}),
    )
    .await;
    assert!(e.to_string().contains("mail:send"), "{e}");
    // out-of-range input is a clear 400, not a crash or a database error
    for (v, want) in [
        (
            json!({"grantee": "", "audiences": ["x"], "not_before": 253_402_300_000i64}),
            "too far in the future",
        ),
        (
            json!({"grantee": "", "audiences": ["x"], "max_uses": u64::MAX}),
            "max uses",
        ),
        (
            json!({"grantee": "", "audiences": []}),
            "at least one audience",
        ),
        (
            json!({"grantee": "", "audiences": ["x"], "ttl_seconds": 100_000_000u64}),
            "at most 90 days",
        ),
    ] {
        let e = refused(&f, &admin, "a0", None, v).await;
        assert!(
            matches!(e, ServerError::BadRequest("invalid_delegation", ref m) if m.contains(want)),
            "{want}: {e:?}"
        );
    }
    // a0 hands on to a1, a1 to a2, ... to a4: a chain of depth 5
    let mut chain = vec![root.clone()];
    for i in 1..5 {
        let parent = chain.last().unwrap().clone();
        let (d, _) = f
            .svc
            .create_delegation(
                &as_agent(&format!("a{}", i - 1)),
                ask(
                    &format!("a{i}"),
                    Some(&parent.id),
                    json!({"grantee": "",
                    "scopes": ["docs:read"], "max_depth": 4 - i}),
                ),
                ISSUER,
            )
            .await
            .unwrap();
        assert_eq!(d.depth(), i + 1);
        assert_eq!(d.principal, root.principal);
        assert_eq!(d.mandate.audiences, root.mandate.audiences);
        assert!(d.mandate.expires_at <= parent.mandate.expires_at);
        chain.push(d);
    }
    // the last may not delegate any further, and nobody may widen
    let e = refused(
        &f,
        &as_agent("a4"),
        "a5",
        Some(&chain[4].id),
        json!({"grantee": ""}),
    )
    .await;
    assert!(
        e.to_string().contains("allows no further delegation"),
        "{e}"
    );
    let e = refused(
        &f,
        &as_agent("a1"),
        "a5",
        Some(&chain[1].id),
        json!({"grantee": "",
                "scopes": ["docs:read", "docs:write"], "audiences": ["https://mail.example"],
                "ttl_seconds": 86400}),
    )
    .await;
    let msg = e.to_string();
    for part in [
        "scope docs:write",
        "audience https://mail.example",
        "expiry",
    ] {
        assert!(msg.contains(part), "{part} in {msg}");
    }
    assert!(matches!(
        e,
        ServerError::Forbidden("delegation_exceeds_parent", _)
    ));
    // only the grantee may carve from a grant
    let e = refused(
        &f,
        &as_agent("a3"),
        "a5",
        Some(&chain[1].id),
        json!({"grantee": ""}),
    )
    .await;
    assert!(e.to_string().contains("is not held by"), "{e}");
    // a sub-agent sees its chain, not other grants
    let seen = f
        .svc
        .list_delegations(&as_agent("a2"), &DelegationFilter::default())
        .await
        .unwrap();
    assert_eq!(seen.len(), 3, "a2 is an actor of chain[2..5]");
    // revoking the second link stops it and everything below
    let (revoked, _) = f
        .svc
        .revoke_delegation(&as_agent("a0"), chain[1].id.as_str(), Some("task done"))
        .await
        .unwrap();
    let mut below: Vec<DelegationId> = chain[1..].iter().map(|d| d.id.clone()).collect();
    below.sort();
    assert_eq!(revoked, below);
    let live = f
        .store
        .list_delegations(&DelegationFilter::default())
        .await
        .unwrap();
    assert_eq!(
        live.iter().map(|d| &d.id).collect::<Vec<_>>(),
        vec![&chain[0].id]
    );
    let e = refused(
        &f,
        &as_agent("a2"),
        "a5",
        Some(&chain[2].id),
        json!({"grantee": ""}),
    )
    .await;
    assert!(e.to_string().contains("revoked"), "{e}");
    // the story is in the audit log
    let n = f.store.audit_count().await.unwrap();
    let recent = f.store.list_audit(n.saturating_sub(10), 10).await.unwrap();
    assert!(recent.iter().any(|(_, r)| r.action == "delegation.revoke"));
}
