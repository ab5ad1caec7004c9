//! Delegation grants: an agent's bounded mandate to act for a principal
//! (docs/delegation.md).
//!
//! - An administrator grants an identity a mandate (a *root grant*; the
//!   principal is the administrator). The grant's scopes must be among the
//!   identity's own.
//! - The grantee, authenticated by its JWT-SVID, may hand part of it to
//!   another identity (a *child grant*): every excess over the parent is
//!   refused and named ([`credence_core::Mandate::narrows`]), and the
//!   policy engine is asked (`Credence::Action::"delegate"`).
//! - Each grant comes with a *grant token* (`typ: dlg+jwt`, RFC 8693
//!   `may_act` naming the grantee): the grantee exchanges it, with its own
//!   JWT-SVID as `actor_token`, for on-behalf-of access tokens
//!   ([`crate::oauth`]). A grant token alone is useless to anyone else.
//! - Revoking a grant revokes its subtree and every token minted under it,
//!   in one transaction, and agents hear of it at once.

use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use credence_core::{
    Delegation, DelegationId, Grantor, Hop, MAX_DELEGATION_DEPTH, Mandate, Scope, SpiffeId,
};
use credence_policy::{EntityData, EntityRef, Query};
use credence_store::DelegationFilter;

use crate::ServerError;
use crate::authz::{AdminAction, Principal, Target};
use crate::service::{Actor, Service, audit};

/// Header `typ` of grant tokens.
pub const GRANT_TOKEN_TYP: &str = "dlg+jwt";
/// A grant's lifetime when none is asked (a child: at most its parent's).
pub const DEFAULT_GRANT_TTL: Duration = Duration::hours(1);
/// Longest lifetime of a grant.
pub const MAX_GRANT_TTL: Duration = Duration::days(90);
/// Longest token lifetime under a grant when none is asked.
pub const DEFAULT_TOKEN_TTL: u32 = 600;
/// Longest note.
const MAX_NOTE: usize = 1024;

/// A request for a grant (`POST /v1/delegations`).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDelegation {
    /// SPIFFE ID of the identity receiving the mandate.
    pub grantee: String,
    /// The grant this one is carved from (a sub-agent's).
    #[serde(default)]
    pub parent: Option<String>,
    /// Default: none for a root grant, the parent's for a child.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Default for a child: the parent's; a root grant must name them.
    #[serde(default)]
    pub audiences: Option<Vec<String>>,
    #[serde(default)]
    pub max_token_ttl_seconds: Option<u32>,
    /// Default 0: the grantee may not delegate further.
    #[serde(default)]
    pub max_depth: Option<u32>,
    /// Lifetime of the grant from now (or from `not_before`).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// Unix seconds; default now.
    #[serde(default)]
    pub not_before: Option<i64>,
    #[serde(default)]
    pub max_uses: Option<u64>,
    #[serde(default)]
    pub note: Option<String>,
}

fn bad(msg: impl Into<String>) -> ServerError {
    ServerError::bad("invalid_delegation", msg.into())
}

fn exceeded(msg: impl Into<String>) -> ServerError {
    ServerError::Forbidden("delegation_exceeds_parent", msg.into())
}

/// A grant as the API shows it.
pub fn delegation_json(d: &Delegation, now: OffsetDateTime) -> Value {
    json!({
        "id": d.id.as_str(),
        "parent": d.parent.as_ref().map(DelegationId::as_str),
        "principal": d.principal.principal(),
        "grantor": d.grantor,
        "grantee": d.grantee.as_str(),
        "depth": d.depth(),
        "chain": d.chain,
        "scopes": d.mandate.scopes,
        "audiences": d.mandate.audiences,
        "max_token_ttl_seconds": d.mandate.max_token_ttl_seconds,
        "max_depth": d.mandate.max_depth,
        "not_before": d.mandate.not_before.unix_timestamp(),
        "expires_at": d.mandate.expires_at.unix_timestamp(),
        "max_uses": d.mandate.max_uses,
        "uses": d.uses,
        "note": d.note,
        "created_at": d.created_at.unix_timestamp(),
        "revoked_at": d.revoked_at.map(OffsetDateTime::unix_timestamp),
        "revocation_reason": d.revocation_reason,
        "status": match d.unusable(now) {
            None => "active".to_owned(),
            Some(u) => u.to_string(),
        },
    })
}

fn parse_id(s: &str) -> Result<DelegationId, ServerError> {
    DelegationId::parse(s).map_err(|e| bad(e.to_string()))
}

/// The identity behind a workload caller (its JWT-SVID's SPIFFE ID).
fn workload_id(actor: &Actor) -> Option<SpiffeId> {
    match actor.principal {
        Principal::Workload => SpiffeId::parse(&actor.name).ok(),
        _ => None,
    }
}

impl Service {
    /// Creates a grant; returns it and its grant token.
    pub async fn create_delegation(
        &self,
        actor: &Actor,
        req: NewDelegation,
        issuer: &str,
    ) -> Result<(Delegation, String), ServerError> {
        let now = self.clock.now();
        let grantee_id = SpiffeId::parse(&req.grantee).map_err(|e| bad(format!("grantee: {e}")))?;
        let grantee = self
            .issuable(&grantee_id)
            .await
            .map_err(|e| bad(format!("grantee {grantee_id}: {e}")))?;
        let note = req.note.clone().unwrap_or_default();
        if note.len() > MAX_NOTE {
            return Err(bad(format!("the note is longer than {MAX_NOTE} bytes")));
        }
        let scopes = |v: &[String]| {
            Scope::parse_list(v.iter().map(String::as_str)).map_err(|e| bad(e.to_string()))
        };
        let parent = match &req.parent {
            Some(p) => {
                let pid = parse_id(p)?;
                Some(self.store.delegation_chain(&pid).await?)
            }
            None => None,
        };
        let start = match req.not_before {
            Some(s) => OffsetDateTime::from_unix_timestamp(s)
                .map_err(|e| bad(format!("not_before: {e}")))?,
            None => now,
        };
        let ttl = match req.ttl_seconds {
            Some(s) => Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX)),
            None => DEFAULT_GRANT_TTL,
        };
        if ttl > MAX_GRANT_TTL {
            return Err(bad(format!(
                "a grant lives at most {} days",
                MAX_GRANT_TTL.whole_days()
            )));
        }
        let until = |d: Duration| {
            start
                .checked_add(d)
                .ok_or_else(|| bad("not_before is too far in the future"))
        };
        let id = DelegationId::from_random(self.rng.bytes16());
        let (delegation, rule_target) = match (&actor.principal, parent) {
            (Principal::Admin(_) | Principal::Internal, None) => {
                self.authorize_admin(
                    actor,
                    AdminAction::CreateDelegation,
                    Target::Identity(&grantee),
                )
                .await?;
                let mandate = Mandate {
                    scopes: scopes(req.scopes.as_deref().unwrap_or(&[]))?,
                    audiences: req.audiences.clone().unwrap_or_default(),
                    max_token_ttl_seconds: req.max_token_ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL),
                    max_depth: req.max_depth.unwrap_or(0),
                    not_before: start,
                    expires_at: until(ttl)?,
                    max_uses: req.max_uses,
                };
                mandate.check().map_err(|e| bad(e.to_string()))?;
                if let Some(s) = mandate.scopes.iter().find(|s| !grantee.scopes.contains(s)) {
                    return Err(exceeded(format!(
                        "scope {s} is not among the scopes of {grantee_id}"
                    )));
                }
                let principal = Grantor::Admin {
                    name: match &actor.principal {
                        Principal::Admin(a) => a.name.to_string(),
                        _ => actor.name.clone(),
                    },
                };
                let d = Delegation {
                    chain: vec![Hop {
                        delegation: id.as_str().to_owned(),
                        grantee: grantee_id.as_str().to_owned(),
                    }],
                    id,
                    parent: None,
                    grantor: principal.clone(),
                    principal,
                    grantee: grantee_id.clone(),
                    mandate,
                    uses: 0,
                    note,
                    created_at: now,
                    revoked_at: None,
                    revocation_reason: None,
                };
                (d, None)
            }
            (Principal::Admin(_) | Principal::Internal, Some(_)) => {
                return Err(bad(
                    "a child grant is created by its parent's grantee, with its JWT-SVID",
                ));
            }
            (Principal::Workload, Some(chain)) => {
                let caller = workload_id(actor).ok_or(ServerError::Unauthorized)?;
                let Some(p) = chain.last() else {
                    return Err(ServerError::Internal("empty delegation chain".into()));
                };
                if p.grantee != caller {
                    return Err(ServerError::Forbidden(
                        "forbidden",
                        format!("delegation {} is not held by {caller}", p.id),
                    ));
                }
                if let Some((g, why)) = chain.iter().find_map(|g| g.unusable(now).map(|u| (g, u))) {
                    return Err(ServerError::Conflict(format!(
                        "delegation {} is {why}",
                        g.id
                    )));
                }
                if chain.len() >= MAX_DELEGATION_DEPTH as usize {
                    return Err(exceeded(format!(
                        "a chain has at most {MAX_DELEGATION_DEPTH} links"
                    )));
                }
                let pm = &p.mandate;
                let mandate = Mandate {
                    scopes: match &req.scopes {
                        Some(s) => scopes(s)?,
                        None => pm.scopes.clone(),
                    },
                    audiences: req
                        .audiences
                        .clone()
                        .unwrap_or_else(|| pm.audiences.clone()),
                    max_token_ttl_seconds: req
                        .max_token_ttl_seconds
                        .unwrap_or(pm.max_token_ttl_seconds),
                    max_depth: req.max_depth.unwrap_or(0),
                    not_before: req.not_before.map_or(pm.not_before.max(now), |_| start),
                    expires_at: match req.ttl_seconds {
                        Some(_) => until(ttl)?,
                        None => until(DEFAULT_GRANT_TTL)?.min(pm.expires_at),
                    },
                    max_uses: match req.max_uses {
                        Some(u) => Some(u),
                        None => pm.max_uses,
                    },
                };
                mandate.check().map_err(|e| bad(e.to_string()))?;
                pm.narrows(&mandate).map_err(|e| exceeded(e.to_string()))?;
                if let Some(s) = mandate.scopes.iter().find(|s| !grantee.scopes.contains(s)) {
                    return Err(exceeded(format!(
                        "scope {s} is not among the scopes of {grantee_id}"
                    )));
                }
                let mut hops = p.chain.clone();
                hops.push(Hop {
                    delegation: id.as_str().to_owned(),
                    grantee: grantee_id.as_str().to_owned(),
                });
                let d = Delegation {
                    id,
                    parent: Some(p.id.clone()),
                    chain: hops,
                    principal: p.principal.clone(),
                    grantor: Grantor::Identity {
                        spiffe_id: caller.as_str().to_owned(),
                    },
                    grantee: grantee_id.clone(),
                    mandate,
                    uses: 0,
                    note,
                    created_at: now,
                    revoked_at: None,
                    revocation_reason: None,
                };
                (d, Some(caller))
            }
            (Principal::Workload, None) => {
                return Err(bad(
                    "an agent delegates only from a grant it holds: name the parent",
                ));
            }
            _ => {
                return Err(ServerError::Forbidden(
                    "forbidden",
                    "only administrators and agents holding a grant may delegate".into(),
                ));
            }
        };
        if let Some(caller) = rule_target {
            self.authorize_delegate(actor, &caller, &grantee, &delegation)
                .await?;
        }
        let rec = audit(
            actor,
            now,
            "delegation.create",
            delegation.id.as_str(),
            json!({
                "grantee": delegation.grantee.as_str(),
                "principal": delegation.principal.principal(),
                "grantor": delegation.grantor,
                "parent": delegation.parent.as_ref().map(DelegationId::as_str),
                "depth": delegation.depth(),
                "chain": delegation.chain,
                "scopes": delegation.mandate.scopes,
                "audiences": delegation.mandate.audiences,
                "max_token_ttl_seconds": delegation.mandate.max_token_ttl_seconds,
                "max_depth": delegation.mandate.max_depth,
                "not_before": delegation.mandate.not_before.unix_timestamp(),
                "expires_at": delegation.mandate.expires_at.unix_timestamp(),
                "max_uses": delegation.mandate.max_uses,
            }),
        );
        self.store.create_delegation(&delegation, rec).await?;
        let token = self.grant_token(&delegation, issuer)?;
        Ok((delegation, token))
    }

    /// Asks the policy engine whether `caller` may hand `d` to `grantee`.
    async fn authorize_delegate(
        &self,
        actor: &Actor,
        caller: &SpiffeId,
        grantee: &credence_core::Identity,
        d: &Delegation,
    ) -> Result<(), ServerError> {
        let holder = self.identity_for(caller).await?;
        let principal = crate::authz::identity_entity(&holder);
        let resource = crate::authz::identity_entity(grantee);
        let mut context = serde_json::Map::new();
        context.insert("scopes".into(), json!(d.mandate.scopes));
        context.insert("audiences".into(), json!(d.mandate.audiences));
        context.insert("depth".into(), json!(d.depth()));
        context.insert("max_depth".into(), json!(d.mandate.max_depth));
        context.insert("principal".into(), json!(d.principal.principal()));
        let q = Query {
            principal: Some(principal.uid.clone()),
            action: Some(EntityRef::new("Credence::Action", "delegate")),
            resource: Some(resource.uid.clone()),
            context,
            entities: vec![principal, resource],
            ..Query::default()
        };
        let target = d.grantee.to_string();
        self.enforce(actor, q, "delegation.create", &target, |dec| {
            crate::authz::refusal(
                &format!("policy refuses {caller} delegating to {target}"),
                dec,
            )
        })
        .await
        .map(|_| ())
    }

    /// A grant token: the principal's mandate, which only the grantee can
    /// use (RFC 8693 `may_act`).
    pub(crate) fn grant_token(&self, d: &Delegation, issuer: &str) -> Result<String, ServerError> {
        let now = self.clock.now();
        let auth = self.authority();
        let signer = auth.jwt_signer(now)?;
        let claims = json!({
            "iss": issuer,
            "sub": d.principal.principal(),
            "aud": issuer,
            "jti": d.id.as_str(),
            "iat": now.unix_timestamp(),
            "nbf": d.mandate.not_before.unix_timestamp(),
            "exp": d.mandate.expires_at.unix_timestamp(),
            "may_act": {"sub": d.grantee.as_str()},
            "delegation": {"id": d.id.as_str(), "depth": d.depth(), "actors": d.actors()},
        });
        signer
            .sign_typed(GRANT_TOKEN_TYP, &claims)
            .map_err(|e| ServerError::Internal(e.to_string()))
    }

    /// The grant a grant token names (signature and expiry checked).
    pub(crate) fn grant_of_token(&self, token: &str) -> Result<DelegationId, String> {
        let jwks = self.authority().jwks().to_string();
        let claims = credence_ca::jwt_verify::validate_own(token, GRANT_TOKEN_TYP, jwks.as_bytes())
            .map_err(|e| e.to_string())?;
        claims
            .get("jti")
            .and_then(Value::as_str)
            .and_then(|j| DelegationId::parse(j).ok())
            .ok_or_else(|| "the grant token names no delegation".to_owned())
    }

    /// One grant, if the caller may see it: administrators who may read
    /// its grantee, and every identity of its chain.
    pub async fn get_delegation(&self, actor: &Actor, id: &str) -> Result<Delegation, ServerError> {
        let id = parse_id(id)?;
        let d = self
            .store
            .get_delegation(&id)
            .await?
            .ok_or_else(|| ServerError::NotFound(format!("no delegation {id}")))?;
        if self.may_see_delegation(actor, &d).await {
            Ok(d)
        } else {
            // not found rather than forbidden: ids are not to be probed
            Err(ServerError::NotFound(format!("no delegation {id}")))
        }
    }

    async fn may_see_delegation(&self, actor: &Actor, d: &Delegation) -> bool {
        match &actor.principal {
            Principal::Internal => true,
            Principal::Admin(_) => match self.identity_for(&d.grantee).await {
                Ok(i) => self.may_read(actor, &i),
                Err(_) => self
                    .authorize_admin(actor, AdminAction::ReadServer, Target::Server)
                    .await
                    .is_ok(),
            },
            Principal::Workload => d.actors().contains(&actor.name.as_str()),
            _ => false,
        }
    }

    /// The grants the caller may see (see [`Service::get_delegation`]).
    pub async fn list_delegations(
        &self,
        actor: &Actor,
        filter: &DelegationFilter,
    ) -> Result<Vec<Delegation>, ServerError> {
        let all = self.store.list_delegations(filter).await?;
        let mut out = Vec::with_capacity(all.len());
        for d in all {
            if self.may_see_delegation(actor, &d).await {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Revokes a grant and its subtree; returns the grants and the number
    /// of credentials newly revoked. Administrators who may revoke for the
    /// grantee may; so may an identity of the chain above it (an agent
    /// takes back what it handed on) and the grantee itself (it renounces).
    pub async fn revoke_delegation(
        &self,
        actor: &Actor,
        id: &str,
        reason: Option<&str>,
    ) -> Result<(Vec<DelegationId>, usize), ServerError> {
        let d = self.get_delegation(actor, id).await?;
        match &actor.principal {
            Principal::Workload => {} // it is in the chain (get_delegation)
            _ => {
                self.authorize_about(
                    actor,
                    AdminAction::RevokeDelegation,
                    AdminAction::RevokeUnregistered,
                    &d.grantee,
                )
                .await?;
            }
        }
        let reason = reason
            .unwrap_or("revoked")
            .chars()
            .take(256)
            .collect::<String>();
        let now = self.clock.now();
        let rec = audit(
            actor,
            now,
            "delegation.revoke",
            d.id.as_str(),
            json!({"reason": reason, "grantee": d.grantee.as_str(), "chain": d.chain}),
        );
        let (grants, creds) = self
            .store
            .revoke_delegation(&d.id, &reason, now, rec)
            .await?;
        if !grants.is_empty() {
            self.changed();
        }
        Ok((grants, creds.len()))
    }

    /// A grant as a PDP entity (`Credence::Delegation`): inactive when it,
    /// or any grant above it, is revoked, expired or not yet valid.
    pub(crate) async fn delegation_entity(&self, id: &str) -> Option<EntityData> {
        let id = DelegationId::parse(id).ok()?;
        let chain = self.store.delegation_chain(&id).await.ok()?;
        let now = self.clock.now();
        let d = chain.last()?;
        let active = chain.iter().all(|g| {
            matches!(
                g.unusable(now),
                None | Some(credence_core::Unusable::UsedUp)
            )
        });
        let mut attrs = serde_json::Map::new();
        attrs.insert("active".into(), json!(active));
        attrs.insert("depth".into(), json!(d.depth()));
        attrs.insert("principal".into(), json!(d.principal.principal()));
        attrs.insert("grantee".into(), json!(d.grantee.as_str()));
        attrs.insert("actors".into(), json!(d.actors()));
        attrs.insert("scopes".into(), json!(d.mandate.scopes));
        attrs.insert("audiences".into(), json!(d.mandate.audiences));
        Some(EntityData {
            uid: EntityRef::new("Credence::Delegation", d.id.as_str()),
            attrs,
            parents: Vec::new(),
            tags: serde_json::Map::new(),
        })
    }
}

// ---- HTTP: /v1/delegations (administrators and agents by JWT-SVID) ----

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::api::{ApiJson, ApiPath, ApiQuery, AppState, Caller};

/// Routes under `/v1/delegations`; the caller's middleware authenticates.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/delegations", post(create).get(list))
        .route("/v1/delegations/{id}", get(show))
        .route("/v1/delegations/{id}/revoke", post(revoke))
}

async fn create(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiJson(req): ApiJson<NewDelegation>,
) -> Result<(StatusCode, Json<Value>), ServerError> {
    let issuer = crate::oauth::Endpoints::of(&st).issuer;
    let (d, token) = st.svc.create_delegation(&caller, req, &issuer).await?;
    let mut out = delegation_json(&d, st.svc.clock.now());
    out["grant_token"] = json!(token);
    Ok((StatusCode::CREATED, Json(out)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    grantee: Option<String>,
    under: Option<String>,
    #[serde(default)]
    include_revoked: bool,
}

async fn list(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<Value>, ServerError> {
    let filter = DelegationFilter {
        grantee: p
            .grantee
            .as_deref()
            .map(SpiffeId::parse)
            .transpose()
            .map_err(|e| bad(format!("grantee: {e}")))?,
        under: p.under.as_deref().map(parse_id).transpose()?,
        include_revoked: p.include_revoked,
    };
    let now = st.svc.clock.now();
    let items: Vec<Value> = st
        .svc
        .list_delegations(&caller, &filter)
        .await?
        .iter()
        .map(|d| delegation_json(d, now))
        .collect();
    Ok(Json(json!({ "items": items })))
}

async fn show(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath,
) -> Result<Json<Value>, ServerError> {
    let d = st.svc.get_delegation(&caller, &id).await?;
    Ok(Json(delegation_json(&d, st.svc.clock.now())))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    reason: Option<String>,
}

async fn revoke(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ServerError> {
    // the body is optional: `{"reason": "..."}`
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<RevokeBody>(&body)
            .map_err(|e| ServerError::bad("invalid_json", format!("invalid JSON body: {e}")))?
            .reason
    };
    let (grants, creds) = st
        .svc
        .revoke_delegation(&caller, &id, reason.as_deref())
        .await?;
    Ok(Json(json!({
        "revoked": grants.iter().map(DelegationId::as_str).collect::<Vec<_>>(),
        "credentials_revoked": creds,
    })))
}
