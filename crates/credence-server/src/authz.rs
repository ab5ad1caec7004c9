//! Credence's own authorization, decided by the policy engine.
//!
//! Every policy set is merged with Credence's schema
//! (`cedar/credence.cedarschema`) and built-in policies
//! (`cedar/builtin.cedar`): the root admin token may do everything, active
//! identities may receive credentials, and a token's scopes must be a
//! subset of its identity's. A set narrows this with `forbid`s (shorter
//! TTLs for agents, audiences per team, ...) and grants named
//! administrators what they need with `permit`s, typically confined to
//! their teams:
//!
//! ```cedar
//! permit (principal is Credence::Admin, action in Credence::Action::"manage_identity",
//!         resource is Credence::Identity)
//! when { principal.teams.contains(resource.owner) };
//! ```
//!
//! The admin API asks the engine once per request: server-wide routes by
//! the table in [`route_rule`], routes about one identity in the service
//! with the identity as the resource (an update is checked against the
//! identity before and after, so nobody moves an identity out of reach).
//! Issuance asks with the identity as the principal and the TTL, audiences,
//! scopes and attestation in the context. Every denial is an audit event
//! naming the deciding policies.

use std::sync::Arc;

use credence_core::{AdminName, Identity, TrustDomain};
use credence_policy::{Builtin, Decision, EntityData, EntityRef, Query};
use serde_json::{Map, Value, json};

use crate::ServerError;
use crate::service::{Actor, Service, audit};

/// Credence's schema fragment.
pub const CREDENCE_SCHEMA: &str = include_str!("../cedar/credence.cedarschema");
/// The policies every set includes.
pub const BUILTIN_POLICIES: &str = include_str!("../cedar/builtin.cedar");

/// What every policy set is compiled with.
pub fn builtin() -> Builtin<'static> {
    Builtin {
        schema: CREDENCE_SCHEMA,
        policies: BUILTIN_POLICIES,
        reserved_prefix: "credence.",
    }
}

/// Who is asking, as far as authorization is concerned.
#[derive(Clone, Debug)]
pub enum Principal {
    /// The root admin token or a named administrator.
    Admin(Arc<AdminPrincipal>),
    /// A node's agent, authenticated by its X509-SVID.
    Node,
    /// A workload authenticated by a JWT-SVID or X509-SVID.
    Workload,
    /// Credence itself, in process (the dev agent, background tasks).
    Internal,
    /// Not authenticated.
    Anonymous,
}

/// An authenticated administrator.
#[derive(Clone, Debug)]
pub struct AdminPrincipal {
    pub name: AdminName,
    pub teams: Vec<String>,
}

impl AdminPrincipal {
    pub fn root() -> Self {
        Self {
            name: AdminName::root(),
            teams: Vec::new(),
        }
    }
}

/// Actions of the admin API (see the schema for their groups).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminAction {
    ReadIdentity,
    CreateIdentity,
    UpdateIdentity,
    DeleteIdentity,
    DisableIdentity,
    EnableIdentity,
    MintCredential,
    RevokeCredential,
    ReadServer,
    ManageNodes,
    ManageCa,
    ManagePolicies,
    ManageAdmins,
    RevokeUnregistered,
    ManageFederation,
    CreateDelegation,
    RevokeDelegation,
}

impl AdminAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadIdentity => "read_identity",
            Self::CreateIdentity => "create_identity",
            Self::UpdateIdentity => "update_identity",
            Self::DeleteIdentity => "delete_identity",
            Self::DisableIdentity => "disable_identity",
            Self::EnableIdentity => "enable_identity",
            Self::MintCredential => "mint_credential",
            Self::RevokeCredential => "revoke_credential",
            Self::ReadServer => "read_server",
            Self::ManageNodes => "manage_nodes",
            Self::ManageCa => "manage_ca",
            Self::ManagePolicies => "manage_policies",
            Self::ManageAdmins => "manage_admins",
            Self::RevokeUnregistered => "revoke_unregistered",
            Self::ManageFederation => "manage_federation",
            Self::CreateDelegation => "create_delegation",
            Self::RevokeDelegation => "revoke_delegation",
        }
    }
}

/// How an admin route is authorized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteRule {
    /// One server-wide action, checked before the handler runs.
    Server(AdminAction),
    /// Checked by the service against the identity concerned.
    PerIdentity,
}

/// The admin API's authorization table, by method and route pattern (as
/// nested under `/v1`). A route missing here is refused: adding an
/// endpoint without deciding who may call it fails closed.
pub fn route_rule(method: &str, route: &str) -> Option<RouteRule> {
    use AdminAction::*;
    use RouteRule::*;
    let read = method == "GET" || method == "HEAD";
    let route = route.strip_prefix("/v1").unwrap_or(route);
    Some(match route {
        "/identities"
        | "/identities/{id}"
        | "/identities/{id}/disable"
        | "/identities/{id}/enable"
        | "/x509/sign"
        | "/x509/mint"
        | "/jwt/mint"
        | "/credentials/{serial}" => PerIdentity,
        "/revocations" if !read => PerIdentity,
        "/revocations" => Server(ReadServer),
        "/nodes" | "/nodes/{id}" if read => Server(ReadServer),
        "/nodes/tokens" | "/nodes/{id}/evict" => Server(ManageNodes),
        "/ca" if read => Server(ReadServer),
        "/ca/rotate" | "/ca/jwt/rotate" => Server(ManageCa),
        r if r.starts_with("/audit/") && read => Server(ReadServer),
        "/policies/diff" | "/policies/validate" => Server(ReadServer),
        r if r == "/policies" || r.starts_with("/policies/") => {
            if read {
                Server(ReadServer)
            } else {
                Server(ManagePolicies)
            }
        }
        r if r == "/admins" || r.starts_with("/admins/") => {
            if read {
                Server(ReadServer)
            } else {
                Server(ManageAdmins)
            }
        }
        r if r == "/federation" || r.starts_with("/federation/") => {
            if read {
                Server(ReadServer)
            } else {
                Server(ManageFederation)
            }
        }
        _ => return None,
    })
}

const NS: &str = "Credence";

fn kind(t: &str) -> String {
    format!("{NS}::{t}")
}

fn team(name: &str) -> EntityRef {
    EntityRef::new(kind("Team"), name)
}

/// An identity as a Cedar entity: id its SPIFFE ID, parent its owner's
/// team, tags its labels.
pub fn identity_entity(i: &Identity) -> EntityData {
    let mut attrs = Map::new();
    attrs.insert("spiffe_id".into(), json!(i.spiffe_id.as_str()));
    attrs.insert(
        "trust_domain".into(),
        json!(i.spiffe_id.trust_domain().as_str()),
    );
    attrs.insert("path".into(), json!(i.spiffe_id.path()));
    attrs.insert("kind".into(), json!(i.kind.as_str()));
    attrs.insert("owner".into(), json!(i.owner.as_str()));
    attrs.insert("status".into(), json!(i.status.as_str()));
    attrs.insert("scopes".into(), json!(i.scopes));
    attrs.insert("selectors".into(), json!(i.selectors));
    attrs.insert("risk_score".into(), json!(0));
    attrs.insert("delegation_depth".into(), json!(0));
    EntityData {
        uid: identity_ref(i),
        attrs,
        parents: vec![team(i.owner.as_str())],
        tags: i
            .labels
            .iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
            .collect(),
    }
}

pub fn identity_ref(i: &Identity) -> EntityRef {
    EntityRef::new(kind("Identity"), i.spiffe_id.as_str())
}

fn admin_entity(a: &AdminPrincipal) -> EntityData {
    let mut attrs = Map::new();
    attrs.insert("name".into(), json!(a.name.as_str()));
    attrs.insert("teams".into(), json!(a.teams));
    attrs.insert("root".into(), json!(a.name.is_root()));
    EntityData {
        uid: admin_ref(a),
        attrs,
        parents: admin_parents(a),
        tags: Map::new(),
    }
}

/// The group of every admin action.
pub(crate) fn admin_actions() -> EntityRef {
    EntityRef::new(kind("Action"), "admin")
}

pub(crate) fn admin_ref(a: &AdminPrincipal) -> EntityRef {
    EntityRef::new(kind("Admin"), a.name.as_str())
}

/// The teams an administrator is in, its every ancestor (teams are not
/// nested).
pub(crate) fn admin_parents(a: &AdminPrincipal) -> Vec<EntityRef> {
    a.teams.iter().map(|t| team(t)).collect()
}

fn server_entity(td: &TrustDomain) -> EntityData {
    let mut attrs = Map::new();
    attrs.insert("trust_domain".into(), json!(td.as_str()));
    EntityData {
        uid: EntityRef::new(kind("Server"), td.as_str()),
        attrs,
        parents: Vec::new(),
        tags: Map::new(),
    }
}

fn admin_context(actor: &Actor) -> Map<String, Value> {
    let mut c = Map::new();
    if let Some(ip) = actor
        .client_addr
        .as_deref()
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.ip().to_canonical())
    {
        c.insert(
            "client_ip".into(),
            json!({"__extn": {"fn": "ip", "arg": ip.to_string()}}),
        );
    }
    c
}

/// What an admin action is about.
pub enum Target<'a> {
    Identity(&'a Identity),
    Server,
}

/// What issuance is asked for.
pub struct IssueRequest<'a> {
    pub identity: &'a Identity,
    /// `None`: an X509-SVID.
    pub jwt: Option<(&'a [String], &'a [String])>,
    /// An OAuth access token by this grant type (with `jwt`'s audiences
    /// and scopes), not a JWT-SVID.
    pub access_grant: Option<&'a str>,
    /// An on-behalf-of token's grant (`DelegationChain` in the schema).
    pub delegation: Option<Value>,
    pub ttl_seconds: i64,
    /// The node whose agent asked, if any.
    pub node: Option<&'a str>,
}

impl Service {
    /// Asks the engine; allowed or an audited [`ServerError::Forbidden`].
    pub(crate) async fn enforce(
        &self,
        actor: &Actor,
        q: Query,
        audit_action: &str,
        target: &str,
        refused: impl FnOnce(&Decision) -> String,
    ) -> Result<Decision, ServerError> {
        let pdp = self.pdp_or_builtin();
        let decision = pdp.engine.decide(&q);
        if decision.allow {
            return Ok(decision);
        }
        let why = refused(&decision);
        let mut rec = audit(
            actor,
            self.clock.now(),
            audit_action,
            target,
            json!({
                "action": q.action.as_ref().map(|a| a.id.clone()),
                "policies": decision.policies,
                "errors": decision.errors,
                "policy_version": pdp.version,
            }),
        );
        rec.outcome = credence_store::Outcome::Failure;
        rec.reason = Some(why.clone());
        if let Err(e) = self.store.append_audit(rec).await {
            tracing::error!(error = %e, "cannot record a refused request");
        }
        Err(ServerError::Forbidden("forbidden", why))
    }

    /// Authorizes an admin action. In-process callers are trusted; callers
    /// other than administrators are refused.
    pub async fn authorize_admin(
        &self,
        actor: &Actor,
        action: AdminAction,
        target: Target<'_>,
    ) -> Result<(), ServerError> {
        let admin = match &actor.principal {
            Principal::Internal => return Ok(()),
            Principal::Admin(a) => a.clone(),
            _ => {
                return Err(ServerError::Forbidden(
                    "forbidden",
                    "only administrators may call the admin API".into(),
                ));
            }
        };
        let pdp = self.pdp_or_builtin();
        if admin.name.is_root() && pdp.root_unrestricted {
            return Ok(());
        }
        let principal = admin_entity(&admin);
        let (resource, label) = match target {
            Target::Identity(i) => (identity_entity(i), i.spiffe_id.to_string()),
            Target::Server => (server_entity(&self.trust_domain()), "server".to_owned()),
        };
        let q = Query {
            principal: Some(principal.uid.clone()),
            action: Some(EntityRef::new(kind("Action"), action.as_str())),
            resource: Some(resource.uid.clone()),
            context: admin_context(actor),
            entities: vec![principal, resource],
            ..Query::default()
        };
        let name = admin.name.clone();
        self.enforce(actor, q, "admin.authorize", &label, |d| {
            refusal(&format!("{name} may not {} {label}", action.as_str()), d)
        })
        .await
        .map(|_| ())
    }

    /// Authorizes an action about the identity of `spiffe_id`; when it is
    /// no longer registered, `otherwise` on the server.
    pub async fn authorize_about(
        &self,
        actor: &Actor,
        action: AdminAction,
        otherwise: AdminAction,
        spiffe_id: &credence_core::SpiffeId,
    ) -> Result<(), ServerError> {
        match self.identity_for(spiffe_id).await {
            Ok(i) => {
                self.authorize_admin(actor, action, Target::Identity(&i))
                    .await
            }
            Err(ServerError::NotFound(_)) => {
                self.authorize_admin(actor, otherwise, Target::Server).await
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `req.identity` may receive the credential asked for.
    pub(crate) async fn authorize_issue(
        &self,
        actor: &Actor,
        req: IssueRequest<'_>,
    ) -> Result<(), ServerError> {
        let principal = identity_entity(req.identity);
        let server = server_entity(&self.trust_domain());
        let mut attestation = Map::new();
        match req.node {
            Some(n) => {
                attestation.insert("method".into(), json!("node_agent"));
                attestation.insert("strength".into(), json!(2));
                attestation.insert("node".into(), json!(n));
            }
            None => {
                attestation.insert("method".into(), json!("admin_api"));
                attestation.insert("strength".into(), json!(1));
            }
        }
        let mut context = Map::new();
        context.insert("ttl_seconds".into(), json!(req.ttl_seconds));
        context.insert("requested_by".into(), json!(actor.name));
        context.insert("attestation".into(), Value::Object(attestation));
        let (action, what) = match (req.jwt, req.access_grant) {
            (Some((aud, scopes)), grant) => {
                context.insert("audiences".into(), json!(aud));
                context.insert("scopes".into(), json!(scopes));
                match grant {
                    Some(g) => {
                        context.insert("grant_type".into(), json!(g));
                        if let Some(d) = req.delegation {
                            context.insert("delegation".into(), d);
                        }
                        ("issue_access_token", "oauth.token")
                    }
                    None => ("issue_jwt_svid", "jwt.issue"),
                }
            }
            (None, _) => ("issue_x509_svid", "x509.issue"),
        };
        let q = Query {
            principal: Some(principal.uid.clone()),
            action: Some(EntityRef::new(kind("Action"), action)),
            resource: Some(server.uid.clone()),
            context,
            entities: vec![principal, server],
            ..Query::default()
        };
        let id = req.identity.spiffe_id.to_string();
        self.enforce(actor, q, what, &id, |d| {
            refusal(&format!("policy refuses {action} for {id}"), d)
        })
        .await
        .map(|_| ())
    }

    /// Whether a trust rule lets a verified external token become
    /// `identity` (ADR 0007). Nothing built in permits it.
    pub(crate) fn trust_rule(
        &self,
        token: &crate::oidc::VerifiedToken,
        identity: &Identity,
        audiences: &[String],
        scopes: &[String],
    ) -> Decision {
        let mut context = Map::new();
        context.insert("audiences".into(), json!(audiences));
        context.insert("scopes".into(), json!(scopes));
        self.external_decision(
            token,
            "exchange_external_token",
            identity_entity(identity),
            context,
        )
    }

    /// Whether a trust rule lets a verified external token attest a node.
    pub(crate) fn node_trust_rule(&self, token: &crate::oidc::VerifiedToken) -> Decision {
        let server = server_entity(&self.trust_domain());
        self.external_decision(token, "attest_node", server, Map::new())
    }

    fn external_decision(
        &self,
        token: &crate::oidc::VerifiedToken,
        action: &str,
        resource: EntityData,
        context: Map<String, Value>,
    ) -> Decision {
        let mut attrs = Map::new();
        attrs.insert("issuer".into(), json!(token.issuer_name));
        attrs.insert("subject".into(), json!(token.subject));
        // string claims as tags; others (numbers, lists) are not rule inputs
        let tags: Map<String, Value> = token
            .claims
            .iter()
            .filter(|(_, v)| v.is_string())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let principal = EntityData {
            uid: EntityRef::new(
                kind("ExternalToken"),
                format!("{}:{}", token.issuer_name, token.subject),
            ),
            attrs,
            parents: Vec::new(),
            tags,
        };
        let q = Query {
            principal: Some(principal.uid.clone()),
            action: Some(EntityRef::new(kind("Action"), action)),
            resource: Some(resource.uid.clone()),
            context,
            entities: vec![principal, resource],
            ..Query::default()
        };
        self.pdp_or_builtin().engine.decide(&q)
    }

    /// Whether an administrator may read this identity (for filtering
    /// listings; denials are not audited one by one).
    pub(crate) fn may_read(&self, actor: &Actor, i: &Identity) -> bool {
        let admin = match &actor.principal {
            Principal::Internal => return true,
            Principal::Admin(a) => a.clone(),
            _ => return false,
        };
        let pdp = self.pdp_or_builtin();
        if admin.name.is_root() && pdp.root_unrestricted {
            return true;
        }
        let principal = admin_entity(&admin);
        let resource = identity_entity(i);
        let q = Query {
            principal: Some(principal.uid.clone()),
            action: Some(EntityRef::new(
                kind("Action"),
                AdminAction::ReadIdentity.as_str(),
            )),
            resource: Some(resource.uid.clone()),
            context: admin_context(actor),
            entities: vec![principal, resource],
            ..Query::default()
        };
        pdp.engine.decide(&q).allow
    }
}

/// The refusal message: what was refused, and by which policies or errors.
pub(crate) fn refusal(what: &str, d: &Decision) -> String {
    if !d.errors.is_empty() {
        format!("{what} (evaluation failed: {})", d.errors.join("; "))
    } else if !d.policies.is_empty() {
        format!("{what} (forbidden by {})", d.policies.join(", "))
    } else {
        format!("{what} (no policy permits it)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_ADMIN_ACTIONS: [AdminAction; 17] = [
        AdminAction::ReadIdentity,
        AdminAction::CreateIdentity,
        AdminAction::UpdateIdentity,
        AdminAction::DeleteIdentity,
        AdminAction::DisableIdentity,
        AdminAction::EnableIdentity,
        AdminAction::MintCredential,
        AdminAction::RevokeCredential,
        AdminAction::ReadServer,
        AdminAction::ManageNodes,
        AdminAction::ManageCa,
        AdminAction::ManagePolicies,
        AdminAction::ManageAdmins,
        AdminAction::RevokeUnregistered,
        AdminAction::ManageFederation,
        AdminAction::CreateDelegation,
        AdminAction::RevokeDelegation,
    ];

    /// The shortcut for the root administrator (no Cedar call when no
    /// `forbid` can reach it) gives Cedar's answer: `credence.root`
    /// permits every admin action on every target.
    #[test]
    fn root_shortcut_agrees_with_cedar() {
        let pdp = crate::policies::Pdp::new(
            credence_policy::Engine::compile_with(builtin(), "", "").unwrap(),
            0,
            None,
        );
        assert!(pdp.root_unrestricted);
        let root = AdminPrincipal::root();
        let i: Identity = serde_json::from_value(json!({
            "id": "0123456789abcdef0123456789abcdef", "spiffe_id": "spiffe://t.example/a/b",
            "kind": "workload", "owner": "team-a", "description": "", "labels": {"env": "prod"},
            "selectors": [], "status": "disabled", "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z", "last_issued_at": null, "max_ttl_seconds": null}))
        .unwrap();
        let td = TrustDomain::new("t.example").unwrap();
        for action in ALL_ADMIN_ACTIONS {
            for resource in [identity_entity(&i), server_entity(&td)] {
                let q = Query {
                    principal: Some(admin_ref(&root)),
                    action: Some(EntityRef::new(kind("Action"), action.as_str())),
                    resource: Some(resource.uid.clone()),
                    entities: vec![admin_entity(&root), resource],
                    ..Query::default()
                };
                let d = pdp.engine.decide(&q);
                assert!(d.allow, "{action:?}: {d:?}");
                assert_eq!(d.policies, ["credence.root"]);
            }
        }
    }

    /// Which sets keep the shortcut: only a `forbid` whose principal scope
    /// can reach `Admin::"root"` turns it off.
    #[test]
    fn root_shortcut_off_when_a_forbid_can_reach_root() {
        let schema = "namespace App { entity User; action go appliesTo { principal: User, resource: User }; }";
        for (policy, reaches) in [
            (
                "permit (principal, action, resource) when { false };",
                false,
            ),
            ("forbid (principal is App::User, action, resource);", false),
            (
                r#"forbid (principal, action == App::Action::"go", resource);"#,
                false,
            ),
            (
                r#"forbid (principal, action == Credence::Action::"issue_x509_svid", resource);"#,
                false,
            ),
            (
                r#"forbid (principal, action == Credence::Action::"mint_credential", resource);"#,
                true,
            ),
            (
                r#"forbid (principal, action in Credence::Action::"read", resource);"#,
                true,
            ),
            (
                r#"forbid (principal, action in [Credence::Action::"issue_jwt_svid", Credence::Action::"admin"], resource);"#,
                true,
            ),
            (
                r#"forbid (principal in Credence::Team::"x", action, resource);"#,
                false,
            ),
            (
                r#"forbid (principal == Credence::Admin::"alice", action, resource);"#,
                false,
            ),
            (
                "forbid (principal, action, resource) when { context has nope };",
                true,
            ),
            (
                "forbid (principal is Credence::Admin, action, resource);",
                true,
            ),
            (
                r#"forbid (principal == Credence::Admin::"root", action, resource);"#,
                true,
            ),
            (
                r#"forbid (principal is Credence::Admin in Credence::Admin::"root", action, resource);"#,
                true,
            ),
        ] {
            let engine = credence_policy::Engine::compile_with(builtin(), schema, policy)
                .unwrap_or_else(|e| panic!("{policy}: {e}"));
            let pdp = crate::policies::Pdp::new(engine, 1, None);
            assert_eq!(pdp.root_unrestricted, !reaches, "{policy}");
        }
    }

    #[test]
    fn builtin_compiles_alone() {
        credence_policy::Engine::compile_with(builtin(), "", "").unwrap();
    }

    #[test]
    fn every_admin_route_has_a_rule() {
        for (m, r) in [
            ("GET", "/identities"),
            ("POST", "/identities"),
            ("DELETE", "/identities/{id}"),
            ("POST", "/revocations"),
            ("GET", "/revocations"),
            ("GET", "/nodes"),
            ("POST", "/nodes/tokens"),
            ("POST", "/ca/rotate"),
            ("GET", "/audit/entries"),
            ("PUT", "/policies/entities"),
            ("POST", "/admins"),
            ("GET", "/federation"),
            ("POST", "/federation/{td}/refresh"),
            ("DELETE", "/federation/{td}"),
        ] {
            assert!(route_rule(m, r).is_some(), "{m} {r}");
        }
        assert_eq!(route_rule("POST", "/audit/entries"), None);
        assert_eq!(route_rule("GET", "/nope"), None);
    }
}
