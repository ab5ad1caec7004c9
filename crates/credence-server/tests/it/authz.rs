//! Credence's own authorization through the policy engine: team-scoped
//! administrators, issuance policy, scopes, and failing closed.

use std::sync::Arc;

use serde_json::json;
use time::Duration;

use credence_core::{AdminName, Scope, SpiffeId};
use credence_server::ServerError;
use credence_server::admins::TokenLookup;
use credence_server::authz::{AdminPrincipal, Principal};
use credence_server::policies::NewPolicySet;
use credence_server::service::{Actor, IdentityKey, IdentityUpdate, NewIdentity, RevokeTarget};
use credence_store::IdentityFilter;

use crate::service::{Fixture, fixture};

/// A set that lets team administrators manage their team's identities and
/// read, plus the restrictions given.
const TEAM_ADMINS: &str = r#"
@id("team-admins-manage-their-team")
permit (
  principal is Credence::Admin,
  action in Credence::Action::"manage_identity",
  resource is Credence::Identity
)
when { principal.teams.contains(resource.owner) };

@id("team-admins-read-their-team")
permit (
  principal is Credence::Admin,
  action == Credence::Action::"read_identity",
  resource is Credence::Identity
)
when { principal.teams.contains(resource.owner) };
"#;

async fn activate(f: &Fixture, policies: &str) {
    let new: NewPolicySet = serde_json::from_value(json!({
        "schema": "",
        "policies": policies,
        "activate": true,
    }))
    .unwrap();
    f.svc.create_policy_set(&Actor::admin(), new).await.unwrap();
}

fn admin_of(name: &str, teams: &[&str]) -> Actor {
    Actor {
        name: name.into(),
        method: "admin_token",
        request_id: None,
        client_addr: Some("10.1.2.3:5555".into()),
        principal: Principal::Admin(Arc::new(AdminPrincipal {
            name: AdminName::parse(name).unwrap(),
            teams: teams.iter().map(|t| (*t).to_owned()).collect(),
        })),
    }
}

fn new_identity(path: &str, owner: &str) -> NewIdentity {
    serde_json::from_value(json!({
        "spiffe_id": format!("spiffe://example.org/{path}"),
        "kind": "agent",
        "owner": owner,
        "scopes": ["docs:read", "docs:list"],
    }))
    .unwrap()
}

fn forbidden(r: Result<impl std::fmt::Debug, ServerError>) -> String {
    match r {
        Err(ServerError::Forbidden(_, m)) => m,
        other => panic!("expected forbidden, got {other:?}"),
    }
}

fn key(path: &str) -> IdentityKey {
    IdentityKey::parse(&format!("spiffe://example.org/{path}")).unwrap()
}

fn sid(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://example.org/{path}")).unwrap()
}

#[tokio::test]
async fn named_admins_may_do_nothing_until_a_policy_permits() {
    let f = fixture().await;
    let alice = admin_of("alice", &["payments"]);
    let m = forbidden(
        f.svc
            .create_identity(&alice, new_identity("pay/api", "payments"))
            .await,
    );
    assert!(m.contains("alice may not create_identity"), "{m}");
    assert!(m.contains("no policy permits it"), "{m}");
    // the refusal is in the audit log with its reason
    let last = f.store.audit_count().await.unwrap();
    let recs = f.store.list_audit(last - 1, 1).await.unwrap();
    assert_eq!(recs[0].1.action, "admin.authorize");
    assert_eq!(recs[0].1.outcome, credence_store::Outcome::Failure);
    // root may, by the built-in policy
    f.svc
        .create_identity(&Actor::admin(), new_identity("pay/api", "payments"))
        .await
        .unwrap();
}

#[tokio::test]
async fn team_admin_is_confined_to_its_team() {
    let f = fixture().await;
    activate(&f, TEAM_ADMINS).await;
    let alice = admin_of("alice", &["payments"]);
    let root = Actor::admin();

    // create: only identities owned by its team
    f.svc
        .create_identity(&alice, new_identity("pay/api", "payments"))
        .await
        .unwrap();
    let m = forbidden(
        f.svc
            .create_identity(&alice, new_identity("search/api", "search"))
            .await,
    );
    assert!(m.contains("spiffe://example.org/search/api"), "{m}");
    f.svc
        .create_identity(&root, new_identity("search/api", "search"))
        .await
        .unwrap();

    // read and list: only its team's
    f.svc.show_identity(&alice, &key("pay/api")).await.unwrap();
    forbidden(f.svc.show_identity(&alice, &key("search/api")).await);
    let page = f
        .svc
        .list_identities_for(&alice, &IdentityFilter::default(), None, 100)
        .await
        .unwrap();
    let ids: Vec<String> = page.items.iter().map(|i| i.spiffe_id.to_string()).collect();
    assert_eq!(ids, ["spiffe://example.org/pay/api"]);
    let all = f
        .svc
        .list_identities_for(&root, &IdentityFilter::default(), None, 100)
        .await
        .unwrap();
    assert_eq!(all.items.len(), 2);

    // update: its own, but not moving it to another team
    let relabel = IdentityUpdate {
        description: Some("payments API".into()),
        ..Default::default()
    };
    f.svc
        .update_identity(&alice, &key("pay/api"), relabel.clone())
        .await
        .unwrap();
    forbidden(
        f.svc
            .update_identity(&alice, &key("search/api"), relabel)
            .await,
    );
    let steal = IdentityUpdate {
        owner: Some(credence_core::Owner::new("search").unwrap()),
        ..Default::default()
    };
    forbidden(f.svc.update_identity(&alice, &key("pay/api"), steal).await);
    let grab: IdentityUpdate = serde_json::from_value(json!({"owner": "payments"})).unwrap();
    forbidden(
        f.svc
            .update_identity(&alice, &key("search/api"), grab)
            .await,
    );

    // credentials: mint and revoke its own only
    f.svc
        .mint_jwt(&alice, &sid("pay/api"), &["api".into()], &[], None)
        .await
        .unwrap();
    forbidden(
        f.svc
            .mint_jwt(&alice, &sid("search/api"), &["api".into()], &[], None)
            .await,
    );
    let theirs = f
        .svc
        .mint_jwt(&root, &sid("search/api"), &["api".into()], &[], None)
        .await
        .unwrap();
    forbidden(
        f.svc
            .revoke(
                &alice,
                RevokeTarget::Serial(theirs.jti.clone()),
                credence_core::RevocationReason::KeyCompromise,
            )
            .await,
    );
    forbidden(
        f.svc
            .revoke(
                &alice,
                RevokeTarget::SpiffeId(sid("search/api")),
                credence_core::RevocationReason::KeyCompromise,
            )
            .await,
    );
    f.svc
        .revoke(
            &alice,
            RevokeTarget::SpiffeId(sid("pay/api")),
            credence_core::RevocationReason::Superseded,
        )
        .await
        .unwrap();

    // disable/enable and delete: its own only
    forbidden(f.svc.delete_identity(&alice, &key("search/api")).await);
    f.svc
        .delete_identity(&alice, &key("pay/api"))
        .await
        .unwrap();

    // an administrator of two teams manages both
    let bob = admin_of("bob", &["payments", "search"]);
    f.svc
        .update_identity(
            &bob,
            &key("search/api"),
            IdentityUpdate {
                status: Some(credence_core::IdentityStatus::Disabled),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_forbid_narrows_even_root_and_ip_context_is_usable() {
    let f = fixture().await;
    activate(
        &f,
        &format!(
            "{TEAM_ADMINS}\n{}",
            r#"
@id("no-deletes-from-outside")
forbid (principal, action == Credence::Action::"delete_identity", resource)
unless { context has client_ip && context.client_ip.isInRange(ip("10.0.0.0/8")) };
"#
        ),
    )
    .await;
    let root = Actor::admin(); // no client address
    f.svc
        .create_identity(&root, new_identity("pay/api", "payments"))
        .await
        .unwrap();
    let m = forbidden(f.svc.delete_identity(&root, &key("pay/api")).await);
    assert!(m.contains("forbidden by no-deletes-from-outside"), "{m}");
    let alice = admin_of("alice", &["payments"]); // 10.1.2.3
    f.svc
        .delete_identity(&alice, &key("pay/api"))
        .await
        .unwrap();
}

#[tokio::test]
async fn issuance_is_decided_by_policy_with_ttl_audience_and_attestation() {
    let f = fixture().await;
    activate(
        &f,
        r#"
@id("agents-short-jwts")
forbid (principal, action == Credence::Action::"issue_jwt_svid", resource)
when { principal.kind == "agent" && context.ttl_seconds > 300 };

@id("agents-only-internal-audiences")
forbid (principal, action == Credence::Action::"issue_jwt_svid", resource)
when { principal.kind == "agent" && !context.audiences.contains("internal-api") };

@id("quarantined-label")
forbid (principal, action, resource)
when { principal.hasTag("quarantine") };
"#,
    )
    .await;
    let root = Actor::admin();
    f.svc
        .create_identity(&root, new_identity("bot", "team-a"))
        .await
        .unwrap();
    let aud = ["internal-api".to_owned()];
    f.svc
        .mint_jwt(&root, &sid("bot"), &aud, &[], Some(Duration::seconds(300)))
        .await
        .unwrap();
    let m = forbidden(
        f.svc
            .mint_jwt(&root, &sid("bot"), &aud, &[], Some(Duration::seconds(600)))
            .await,
    );
    assert!(m.contains("agents-short-jwts"), "{m}");
    let m = forbidden(
        f.svc
            .mint_jwt(&root, &sid("bot"), &["elsewhere".into()], &[], None)
            .await,
    );
    assert!(m.contains("agents-only-internal-audiences"), "{m}");
    // labels are tags: quarantining one identity stops all its issuance
    f.svc.mint_x509(&root, &sid("bot"), None).await.unwrap();
    let q: IdentityUpdate =
        serde_json::from_value(json!({"labels": {"quarantine": "incident-42"}})).unwrap();
    f.svc.update_identity(&root, &key("bot"), q).await.unwrap();
    let m = forbidden(f.svc.mint_x509(&root, &sid("bot"), None).await);
    assert!(m.contains("quarantined-label"), "{m}");
    assert!(m.contains("issue_x509_svid"), "{m}");
}

#[tokio::test]
async fn token_scopes_are_a_subset_of_the_identity_scopes() {
    let f = fixture().await;
    let root = Actor::admin();
    f.svc
        .create_identity(&root, new_identity("reader", "team-a"))
        .await
        .unwrap();
    let scopes = Scope::parse_list(["docs:read"]).unwrap();
    let jwt = f
        .svc
        .mint_jwt(&root, &sid("reader"), &["api".into()], &scopes, None)
        .await
        .unwrap();
    let claims = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(&jwt.token)
        .unwrap()
        .claims;
    assert_eq!(claims["scope"], "docs:read");
    let both = Scope::parse_list(["docs:read", "docs:list"]).unwrap();
    let jwt = f
        .svc
        .mint_jwt(&root, &sid("reader"), &["api".into()], &both, None)
        .await
        .unwrap();
    let claims = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(&jwt.token)
        .unwrap()
        .claims;
    assert_eq!(claims["scope"], "docs:read docs:list");
    // a JWT without scopes carries no scope claim
    let plain = f
        .svc
        .mint_jwt(&root, &sid("reader"), &["api".into()], &[], None)
        .await
        .unwrap();
    let claims = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(&plain.token)
        .unwrap()
        .claims;
    assert!(claims.get("scope").is_none());
    let wider = Scope::parse_list(["docs:read", "docs:delete"]).unwrap();
    let m = forbidden(
        f.svc
            .mint_jwt(&root, &sid("reader"), &["api".into()], &wider, None)
            .await,
    );
    assert!(m.contains("credence.scopes-within-identity"), "{m}");
}

#[tokio::test]
async fn an_erroring_forbid_denies() {
    let f = fixture().await;
    // an overflow is an evaluation error: the forbid cannot be evaluated,
    // so issuance is refused (Cedar alone would skip it and allow)
    activate(
        &f,
        r#"
@id("overflowing-forbid")
forbid (principal, action == Credence::Action::"issue_x509_svid", resource)
when { context.ttl_seconds * 4611686018427387904 > 0 };
"#,
    )
    .await;
    let root = Actor::admin();
    f.svc
        .create_identity(&root, new_identity("untagged", "team-a"))
        .await
        .unwrap();
    let m = forbidden(f.svc.mint_x509(&root, &sid("untagged"), None).await);
    assert!(m.contains("evaluation failed"), "{m}");
    assert!(m.contains("overflowing-forbid"), "{m}");
}

#[tokio::test]
async fn reserved_ids_and_redeclared_credence_types_are_refused() {
    let f = fixture().await;
    let bad: NewPolicySet = serde_json::from_value(json!({
        "schema": "",
        "policies": "@id(\"credence.mine\") permit(principal, action, resource);",
    }))
    .unwrap();
    match f.svc.create_policy_set(&Actor::admin(), bad).await {
        Err(ServerError::Invalid(_, _, details)) => {
            assert!(details[0].contains("reserved"), "{details:?}")
        }
        other => panic!("{other:?}"),
    }
    let clash: NewPolicySet = serde_json::from_value(json!({
        "schema": "namespace Credence { entity Identity; }",
        "policies": "",
    }))
    .unwrap();
    assert!(matches!(
        f.svc.create_policy_set(&Actor::admin(), clash).await,
        Err(ServerError::Invalid(..))
    ));
}

#[tokio::test]
async fn agents_fetching_for_workloads_are_decided_with_their_node() {
    let f = fixture().await;
    activate(
        &f,
        r#"
@id("agents-only-through-nodes")
forbid (principal, action == Credence::Action::"issue_x509_svid", resource)
when { principal.kind == "agent" && context.attestation.method != "node_agent" };
"#,
    )
    .await;
    let root = Actor::admin();
    let mut new = new_identity("agent/w", "team-a");
    new.selectors = Some(vec![
        credence_core::Selector::parse("unix:uid:1000").unwrap(),
    ]);
    f.svc.create_identity(&root, new).await.unwrap();
    let m = forbidden(f.svc.mint_x509(&root, &sid("agent/w"), None).await);
    assert!(m.contains("agents-only-through-nodes"), "{m}");
    let node = f.svc.local_node().unwrap();
    f.svc
        .node_x509(&node, &sid("agent/w"), crate::nodes::csr(None), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn admins_are_created_listed_and_deleted_with_tokens_shown_once() {
    let f = fixture().await;
    let root = Actor::admin();
    let new: credence_server::admins::NewAdmin = serde_json::from_value(json!({
        "name": "alice", "teams": ["payments", "payments", "search"], "ttl_seconds": 3600,
    }))
    .unwrap();
    let created = f.svc.create_admin(&root, new).await.unwrap();
    assert!(created.token.starts_with("cadm_"));
    assert_eq!(created.admin.teams.len(), 2);
    let TokenLookup::Admin(who) = f.svc.admin_by_token(&created.token).await.unwrap() else {
        panic!("alice's token is not found")
    };
    assert_eq!(who.name.as_str(), "alice");
    assert_eq!(who.teams, ["payments", "search"]);
    assert!(matches!(
        f.svc.admin_by_token("cadm_nope").await.unwrap(),
        TokenLookup::Unknown
    ));
    // expired tokens are refused
    f.clock.advance(Duration::hours(2));
    assert!(matches!(
        f.svc.admin_by_token(&created.token).await.unwrap(),
        TokenLookup::Expired
    ));
    // root is reserved
    let root_again: credence_server::admins::NewAdmin =
        serde_json::from_value(json!({"name": "root"})).unwrap();
    assert!(matches!(
        f.svc.create_admin(&root, root_again).await,
        Err(ServerError::BadRequest("reserved_name", _))
    ));
    assert_eq!(f.svc.list_admins().await.unwrap().len(), 1);
    f.svc
        .delete_admin(&root, &AdminName::parse("alice").unwrap())
        .await
        .unwrap();
    assert!(f.svc.list_admins().await.unwrap().is_empty());
}
