//! HTTP API: public endpoints and the bearer-authenticated admin API under `/v1/`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use time::Duration;

use credence_core::{IdentityKind, IdentityStatus, RevocationReason, Serial, SpiffeId};
use credence_store::IdentityFilter;

use crate::ServerError;
use crate::admins::TokenLookup;
use crate::authz::{AdminPrincipal, Principal, RouteRule, Target};
use crate::service::{Actor, IdentityKey, IdentityUpdate, NewIdentity, RevokeTarget, Service};

/// Largest request body accepted anywhere.
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub svc: Arc<Service>,
    pub admin_token_hash: [u8; 32],
    /// Public base URL (`http://127.0.0.1:8080`), for discovery documents.
    pub base_url: String,
    /// `spiffe_refresh_hint` of `/bundle`; `None`: half the default
    /// X509-SVID lifetime.
    pub bundle_refresh_hint: Option<std::time::Duration>,
}

impl axum::extract::FromRef<AppState> for Arc<Service> {
    fn from_ref(s: &AppState) -> Self {
        s.svc.clone()
    }
}

pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/identities", post(create_identity).get(list_identities))
        .route(
            "/identities/{id}",
            get(show_identity)
                .patch(update_identity)
                .delete(delete_identity),
        )
        .route("/identities/{id}/disable", post(disable_identity))
        .route("/identities/{id}/enable", post(enable_identity))
        .route("/x509/sign", post(x509_sign))
        .route("/x509/mint", post(x509_mint))
        .route("/jwt/mint", post(jwt_mint))
        .route("/revocations", post(revoke).get(list_revocations))
        .route("/credentials/{serial}", get(show_credential))
        .route("/nodes", get(list_nodes))
        .route("/nodes/tokens", post(create_join_token))
        .route("/nodes/{id}", get(show_node))
        .route("/nodes/{id}/evict", post(evict_node))
        .route("/admins", post(create_admin).get(list_admins))
        .route("/admins/{name}", get(show_admin).delete(delete_admin))
        .route("/ca", get(show_ca))
        .route("/ca/rotate", post(rotate_ca))
        .route("/ca/jwt/rotate", post(rotate_jwt_key))
        .route("/audit/checkpoint", get(audit_checkpoint))
        .route("/audit/key", get(audit_key))
        .route("/audit/entries", get(audit_entries))
        .route("/audit/leaves", get(audit_leaves))
        .route("/audit/proof/inclusion", get(audit_inclusion))
        .route("/audit/proof/consistency", get(audit_consistency))
        .route("/audit/search", get(audit_search))
        .route("/federation", post(add_federation).get(list_federations))
        .route(
            "/federation/{td}",
            get(show_federation).delete(remove_federation),
        )
        .route("/federation/{td}/refresh", post(refresh_federation))
        .merge(crate::authzen_api::admin_routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let pdp = crate::authzen_api::pdp_routes().route_layer(middleware::from_fn_with_state(
        state.clone(),
        require_pdp_caller,
    ));
    // administrators and agents (JWT-SVID); the service decides per grant
    let delegations = crate::delegation::routes().route_layer(middleware::from_fn_with_state(
        state.clone(),
        require_pdp_caller,
    ));

    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/.well-known/jwks.json", get(jwks))
        .route("/bundle", get(bundle))
        .route("/crl", get(crl))
        .route("/crl/{issuer}", get(crl_of))
        .route(
            "/.well-known/authzen-configuration",
            get(crate::authzen_api::configuration),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(crate::oauth::metadata),
        )
        .route("/oauth2/token", post(crate::oauth::token))
        .route("/oauth2/introspect", post(crate::oauth::introspect))
        .route("/oauth2/revoke", post(crate::oauth::revoke))
        .merge(pdp)
        .merge(delegations)
        .nest("/v1", admin)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn not_found() -> ServerError {
    ServerError::NotFound("no such endpoint".into())
}

async fn method_not_allowed() -> ServerError {
    ServerError::MethodNotAllowed
}

// ---- extractors that answer with the JSON error body ----

/// A JSON body: `application/json`, at most [`MAX_BODY`] bytes, unknown fields refused.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ServerError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Err(ServerError::UnsupportedMediaType(format!(
                "expected Content-Type application/json, got {:?}",
                if ct.is_empty() { "none" } else { ct }
            )));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ServerError::PayloadTooLarge(MAX_BODY)
                } else {
                    ServerError::bad("invalid_body", format!("cannot read body: {e}"))
                }
            })?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| ServerError::bad("invalid_json", format!("invalid JSON body: {e}")))?;
        Ok(Self(value))
    }
}

/// Query parameters, unknown ones refused.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ServerError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Self(v))
            .map_err(|e| ServerError::bad("invalid_query", e.body_text()))
    }
}

/// One path parameter as a string.
pub struct ApiPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ApiPath {
    type Rejection = ServerError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| Self(v))
            .map_err(|e| ServerError::bad("invalid_path", e.body_text()))
    }
}

// ---- admin authentication ----

/// The request id: the client's `x-request-id` if it is sane, else a new one.
fn request_id(req: &Request, svc: &Service) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| svc.next_request_id())
}

fn client_addr(req: &Request) -> Option<String> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.to_string())
}

/// The authenticated caller of an admin endpoint, set by [`require_admin`].
pub struct Caller(pub Actor);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ServerError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Actor>()
            .cloned()
            .map(Caller)
            .ok_or(ServerError::Unauthorized)
    }
}

/// The token of an `Authorization: Bearer` header.
fn bearer(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
}

/// PDP callers: the admin token, or a JWT-SVID of this trust domain whose
/// audience is this PDP (`policy_decision_point`, the base URL) and that is
/// not revoked.
async fn require_pdp_caller(
    State(st): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ServerError> {
    let presented = bearer(&req).map(str::to_owned);
    if let Some(token) = presented.as_deref()
        && token.matches('.').count() == 2
        && !bool::from(Service::token_hash(token).ct_eq(&st.admin_token_hash))
    {
        let request_id = request_id(&req, &st.svc);
        let client_addr = client_addr(&req);
        let auth = st.svc.authority();
        let bundles = std::collections::HashMap::from([(
            auth.trust_domain.id_string(),
            auth.jwks().to_string().into_bytes(),
        )]);
        let audience = st.base_url.trim_end_matches('/');
        let checked = credence_ca::jwt_verify::validate_jwt_svid(token, audience, &bundles)
            .map_err(|e| e.to_string())
            .map(|(sub, claims)| {
                let jti = claims.get("jti").and_then(Value::as_str).map(str::to_owned);
                (sub, jti)
            });
        let revoked = match &checked {
            Ok((_, Some(jti))) => st.svc.is_revoked(jti).await.unwrap_or(true),
            Ok((_, None)) => false,
            Err(_) => false,
        };
        match checked {
            Ok((sub, _)) if !revoked => {
                req.extensions_mut().insert(Actor {
                    name: sub.to_string(),
                    method: "jwt_svid",
                    request_id: Some(request_id),
                    client_addr,
                    principal: Principal::Workload,
                });
                return Ok(next.run(req).await);
            }
            other => {
                let why = match other {
                    Err(e) => e,
                    Ok(_) => "the JWT-SVID has been revoked".to_owned(),
                };
                st.svc
                    .record_auth_failure(
                        req.method().as_str(),
                        req.uri().path(),
                        &why,
                        Some(request_id),
                        client_addr,
                    )
                    .await;
                return Err(ServerError::Unauthorized);
            }
        }
    }
    let actor = authenticate_admin(&st, &req).await?;
    req.extensions_mut().insert(actor);
    Ok(next.run(req).await)
}

/// The administrator a bearer token names: the root token, or a named
/// administrator's unexpired token.
/// `Err` only when the store cannot answer; a refused token is `Ok(Err(why))`.
async fn admin_for(
    st: &AppState,
    token: &str,
) -> Result<Result<AdminPrincipal, &'static str>, ServerError> {
    if bool::from(Service::token_hash(token).ct_eq(&st.admin_token_hash)) {
        return Ok(Ok(AdminPrincipal::root()));
    }
    if !token.starts_with(crate::admins::TOKEN_PREFIX) {
        return Ok(Err("wrong admin token"));
    }
    Ok(match st.svc.admin_by_token(token).await? {
        TokenLookup::Admin(a) => Ok(a),
        TokenLookup::Unknown => Err("wrong admin token"),
        TokenLookup::Expired => Err("expired admin token"),
    })
}

/// Authenticates an administrator (audited on failure).
fn authenticate_admin<'a>(
    st: &'a AppState,
    req: &Request,
) -> impl Future<Output = Result<Actor, ServerError>> + Send + 'a {
    // nothing borrowed from the request lives across an await (a body is not Sync)
    let request_id = request_id(req, &st.svc);
    let client_addr = client_addr(req);
    let token = bearer(req).map(str::to_owned);
    // nested routers see the path without its /v1 prefix
    let path = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map(|u| u.0.path().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    let method = req.method().as_str().to_owned();
    async move { authenticate(st, token, request_id, client_addr, &method, &path).await }
}

async fn authenticate(
    st: &AppState,
    token: Option<String>,
    request_id: String,
    client_addr: Option<String>,
    method: &str,
    path: &str,
) -> Result<Actor, ServerError> {
    let checked = match token.as_deref() {
        Some(t) => admin_for(st, t).await?,
        None => Err("no bearer token"),
    };
    match checked {
        Ok(admin) => Ok(Actor {
            name: if admin.name.is_root() {
                "admin".into()
            } else {
                admin.name.to_string()
            },
            method: "admin_token",
            request_id: Some(request_id),
            client_addr,
            principal: Principal::Admin(Arc::new(admin)),
        }),
        Err(why) => {
            tracing::warn!(%path, client = ?client_addr, "admin authentication failed");
            st.svc
                .record_auth_failure(method, path, why, Some(request_id), client_addr)
                .await;
            Err(ServerError::Unauthorized)
        }
    }
}

/// The admin API: authenticated, then authorized by [`crate::authz::route_rule`].
async fn require_admin(
    State(st): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ServerError> {
    let actor = authenticate_admin(&st, &req).await?;
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    match crate::authz::route_rule(req.method().as_str(), &route) {
        Some(RouteRule::PerIdentity) => {}
        Some(RouteRule::Server(action)) => {
            let checked = st.svc.authorize_admin(&actor, action, Target::Server).await;
            // break glass: the root token can always fix the policies
            // that lock it out
            let policies = route.trim_start_matches("/v1").starts_with("/policies");
            match checked {
                Err(_) if policies && is_root(&actor) => {
                    tracing::warn!(%route, "policies deny the root token; allowed to manage policies");
                }
                other => other?,
            }
        }
        None => {
            return Err(ServerError::Forbidden(
                "forbidden",
                format!("no authorization rule covers {} {route}", req.method()),
            ));
        }
    }
    req.extensions_mut().insert(actor);
    Ok(next.run(req).await)
}

fn is_root(actor: &Actor) -> bool {
    matches!(&actor.principal, Principal::Admin(a) if a.name.is_root())
}

// ---- public endpoints ----

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

fn issuer(st: &AppState) -> String {
    st.svc
        .issuer_url
        .clone()
        .unwrap_or_else(|| st.base_url.clone())
}

async fn openid_configuration(State(st): State<AppState>) -> Json<Value> {
    let iss = issuer(&st);
    Json(json!({
        "issuer": iss,
        "jwks_uri": format!("{}/.well-known/jwks.json", iss.trim_end_matches('/')),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti"],
    }))
}

async fn jwks(State(st): State<AppState>) -> Response {
    let body = st.svc.authority().jwks();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/jwk-set+json"),
        )],
        body.to_string(),
    )
        .into_response()
}

async fn bundle(State(st): State<AppState>) -> Response {
    let refresh = st.bundle_refresh_hint.map_or_else(
        || st.svc.policy.x509_default_ttl.whole_seconds().max(60) as u64 / 2,
        |d| d.as_secs().max(1),
    );
    let body = st.svc.authority().spiffe_bundle(refresh);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

async fn crl(State(st): State<AppState>) -> Result<Response, ServerError> {
    crl_response(st.svc.crl(None).await?)
}

async fn crl_of(
    State(st): State<AppState>,
    ApiPath(issuer): ApiPath,
) -> Result<Response, ServerError> {
    crl_response(st.svc.crl(Some(&issuer)).await?)
}

fn crl_response(der: Arc<Vec<u8>>) -> Result<Response, ServerError> {
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/pkix-crl"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        der.as_ref().clone(),
    )
        .into_response())
}

// ---- federation ----

fn federation_json(f: &credence_core::Federation) -> Value {
    let mut v = json!(f);
    // the stored document is the foreign domain's business; show its gist
    if let Some(b) = &f.bundle {
        let parsed = crate::federation::parse_bundle(b.document.as_bytes()).ok();
        v["bundle"] = json!({
            "sequence": b.sequence,
            "refresh_hint_seconds": b.refresh_hint_seconds,
            "fetched_at": b.fetched_at.format(&time::format_description::well_known::Rfc3339).ok(),
            "x509_authorities": parsed.as_ref().map(|p| p.x509_authorities.len()),
            "jwt_keys": parsed.as_ref().map(|p| p.jwt_keys.len()),
        });
    }
    v["next_refresh_at"] = json!(
        crate::federation::next_refresh(f)
            .format(&time::format_description::well_known::Rfc3339)
            .ok()
    );
    v
}

fn trust_domain_param(s: &str) -> Result<credence_core::TrustDomain, ServerError> {
    Ok(credence_core::TrustDomain::new(s)?)
}

async fn add_federation(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiJson(req): ApiJson<crate::federation::NewFederation>,
) -> Result<(StatusCode, Json<Value>), ServerError> {
    let f = st.svc.add_federation(&caller, req).await?;
    Ok((StatusCode::CREATED, Json(federation_json(&f))))
}

async fn list_federations(State(st): State<AppState>) -> Result<Json<Value>, ServerError> {
    let items: Vec<Value> = st
        .svc
        .list_federations()
        .await?
        .iter()
        .map(federation_json)
        .collect();
    Ok(Json(json!({ "items": items })))
}

async fn show_federation(
    State(st): State<AppState>,
    ApiPath(td): ApiPath,
) -> Result<Json<Value>, ServerError> {
    let f = st.svc.get_federation(&trust_domain_param(&td)?).await?;
    Ok(Json(federation_json(&f)))
}

async fn remove_federation(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiPath(td): ApiPath,
) -> Result<StatusCode, ServerError> {
    st.svc
        .remove_federation(&caller, &trust_domain_param(&td)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn refresh_federation(
    State(st): State<AppState>,
    ApiPath(td): ApiPath,
) -> Result<Json<Value>, ServerError> {
    let f = st.svc.refresh_federation(&trust_domain_param(&td)?).await?;
    Ok(Json(federation_json(&f)))
}

// ---- identities ----

async fn create_identity(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiJson(new): ApiJson<NewIdentity>,
) -> Result<(StatusCode, Json<Value>), ServerError> {
    let id = st.svc.create_identity(&caller, new).await?;
    Ok((StatusCode::CREATED, Json(json!(id))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    kind: Option<IdentityKind>,
    owner: Option<String>,
    status: Option<IdentityStatus>,
    /// `key=value`; several may be given comma-separated.
    label: Option<String>,
    spiffe_id: Option<SpiffeId>,
    cursor: Option<String>,
    limit: Option<u32>,
}

async fn list_identities(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Value>, ServerError> {
    let mut labels = Vec::new();
    if let Some(l) = &q.label {
        for pair in l.split(',').filter(|p| !p.is_empty()) {
            labels.push(credence_core::Labels::parse_pair(pair)?);
        }
    }
    let filter = IdentityFilter {
        kind: q.kind,
        owner: q.owner,
        status: q.status,
        labels,
        spiffe_id: q.spiffe_id,
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ServerError::bad("invalid_query", "limit must be 1 to 1000"));
    }
    let page = st
        .svc
        .list_identities_for(&caller, &filter, q.cursor.as_deref(), limit)
        .await?;
    Ok(Json(
        json!({"identities": page.items, "next_cursor": page.next_cursor}),
    ))
}

async fn show_identity(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath,
) -> Result<Json<Value>, ServerError> {
    let key = IdentityKey::parse(&id)?;
    Ok(Json(json!(st.svc.show_identity(&caller, &key).await?)))
}

async fn update_identity(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath,
    ApiJson(change): ApiJson<IdentityUpdate>,
) -> Result<Json<Value>, ServerError> {
    let key = IdentityKey::parse(&id)?;
    Ok(Json(json!(
        st.svc.update_identity(&caller, &key, change).await?
    )))
}

async fn set_status(
    st: &AppState,
    caller: &Actor,
    id: &str,
    status: IdentityStatus,
) -> Result<Json<Value>, ServerError> {
    let key = IdentityKey::parse(id)?;
    let change = IdentityUpdate {
        status: Some(status),
        ..Default::default()
    };
    Ok(Json(json!(
        st.svc.update_identity(caller, &key, change).await?
    )))
}

async fn disable_identity(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath,
) -> Result<Json<Value>, ServerError> {
    set_status(&st, &caller, &id, IdentityStatus::Disabled).await
}

async fn enable_identity(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath,
) -> Result<Json<Value>, ServerError> {
    set_status(&st, &caller, &id, IdentityStatus::Active).await
}

async fn delete_identity(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath,
) -> Result<StatusCode, ServerError> {
    let key = IdentityKey::parse(&id)?;
    st.svc.delete_identity(&caller, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- issuance ----

/// A TTL as seconds (`3600`) or a duration string (`"1h"`, `"90s"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Ttl {
    Seconds(i64),
    Text(String),
}

fn parse_ttl(t: Option<Ttl>) -> Result<Option<Duration>, ServerError> {
    match t {
        None => Ok(None),
        Some(Ttl::Seconds(s)) if s > 0 => Ok(Some(Duration::seconds(s))),
        Some(Ttl::Seconds(_)) => Err(ServerError::bad("invalid_ttl", "ttl must be positive")),
        Some(Ttl::Text(s)) => {
            let d = humantime::parse_duration(&s)
                .map_err(|e| ServerError::bad("invalid_ttl", format!("ttl {s:?}: {e}")))?;
            let d = Duration::try_from(d)
                .map_err(|_| ServerError::bad("invalid_ttl", "ttl is too large"))?;
            if d <= Duration::ZERO {
                return Err(ServerError::bad("invalid_ttl", "ttl must be positive"));
            }
            Ok(Some(d))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignRequest {
    spiffe_id: SpiffeId,
    /// PEM (or base64 DER) PKCS#10 request.
    csr: String,
    ttl: Option<Ttl>,
}

async fn x509_sign(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiJson(req): ApiJson<SignRequest>,
) -> Result<Json<crate::service::X509Svid>, ServerError> {
    let ttl = parse_ttl(req.ttl)?;
    let der = csr_bytes(&req.csr)?;
    let checked = credence_ca::check_csr(&der)?;
    let svid = st
        .svc
        .issue_x509_from_csr(&caller, &req.spiffe_id, checked, ttl)
        .await?;
    Ok(Json(svid))
}

pub(crate) fn csr_bytes(s: &str) -> Result<Vec<u8>, ServerError> {
    let t = s.trim();
    if t.starts_with("-----BEGIN") {
        Ok(credence_ca::x509::csr_der_from_bytes(t.as_bytes())?)
    } else {
        use base64::Engine;
        let der = base64::engine::general_purpose::STANDARD
            .decode(t)
            .map_err(|_| {
                ServerError::bad("invalid_csr", "invalid CSR: expected PEM or base64 DER")
            })?;
        Ok(credence_ca::x509::csr_der_from_bytes(&der)?)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    spiffe_id: SpiffeId,
    ttl: Option<Ttl>,
}

async fn x509_mint(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiJson(req): ApiJson<MintRequest>,
) -> Result<Json<Value>, ServerError> {
    let ttl = parse_ttl(req.ttl)?;
    let (svid, key) = st.svc.mint_x509(&caller, &req.spiffe_id, ttl).await?;
    let mut v = json!(svid);
    v["key_pem"] = json!(key.as_str());
    Ok(Json(v))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtRequest {
    spiffe_id: SpiffeId,
    audience: OneOrMany,
    /// Space-separated (as in OAuth) or an array.
    scope: Option<OneOrMany>,
    ttl: Option<Ttl>,
}

async fn jwt_mint(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiJson(req): ApiJson<JwtRequest>,
) -> Result<Json<crate::service::JwtSvid>, ServerError> {
    let ttl = parse_ttl(req.ttl)?;
    let aud = match req.audience {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(v) => v,
    };
    let scopes = match &req.scope {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => {
            credence_core::Scope::parse_list(s.split(' ').filter(|s| !s.is_empty()))?
        }
        Some(OneOrMany::Many(v)) => credence_core::Scope::parse_list(v.iter().map(String::as_str))?,
    };
    let svid = st
        .svc
        .mint_jwt(&caller, &req.spiffe_id, &aud, &scopes, ttl)
        .await?;
    Ok(Json(svid))
}

// ---- revocation ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    serial: Option<String>,
    jti: Option<String>,
    spiffe_id: Option<SpiffeId>,
    reason: Option<String>,
}

async fn revoke(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiJson(req): ApiJson<RevokeRequest>,
) -> Result<Json<Value>, ServerError> {
    let reason = match &req.reason {
        Some(r) => r.parse::<RevocationReason>()?,
        None => RevocationReason::Unspecified,
    };
    let target = match (req.serial, req.jti, req.spiffe_id) {
        (Some(s), None, None) => RevokeTarget::Serial(Serial::parse_hex(&s)?.to_hex()),
        (None, Some(j), None) => {
            if j.is_empty() || j.len() > 128 {
                return Err(ServerError::bad(
                    "invalid_request",
                    "jti must be 1 to 128 bytes",
                ));
            }
            RevokeTarget::Serial(j)
        }
        (None, None, Some(id)) => RevokeTarget::SpiffeId(id),
        _ => {
            return Err(ServerError::bad(
                "invalid_request",
                "give exactly one of serial, jti or spiffe_id",
            ));
        }
    };
    let revoked = st.svc.revoke(&caller, target, reason).await?;
    Ok(Json(
        json!({"revoked": revoked.iter().map(revoked_json).collect::<Vec<_>>()}),
    ))
}

fn revoked_json(r: &credence_store::RevokedEntry) -> Value {
    json!({
        "serial": r.serial,
        "kind": match r.kind { credence_store::CredentialKind::X509 => "x509", credence_store::CredentialKind::Jwt => "jwt" },
        "spiffe_id": r.spiffe_id,
        "revoked_at": r.revoked_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "reason": r.reason,
        "not_after": r.not_after.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "issuer": r.issuer,
    })
}

async fn list_revocations(State(st): State<AppState>) -> Result<Json<Value>, ServerError> {
    let now = st.svc.clock.now();
    let mut all = st
        .svc
        .store
        .list_revoked(credence_store::CredentialKind::X509, now)
        .await?;
    all.extend(
        st.svc
            .store
            .list_revoked(credence_store::CredentialKind::Jwt, now)
            .await?,
    );
    Ok(Json(
        json!({"revoked": all.iter().map(revoked_json).collect::<Vec<_>>()}),
    ))
}

async fn show_credential(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiPath(serial): ApiPath,
) -> Result<Json<Value>, ServerError> {
    let key = match Serial::parse_hex(&serial) {
        Ok(s) if serial.len() > 20 => s.to_hex(),
        _ => serial.clone(),
    };
    let (cred, rev) = st
        .svc
        .store
        .get_credential(&key)
        .await?
        .ok_or_else(|| ServerError::NotFound(format!("no credential {serial}")))?;
    st.svc
        .authorize_about(
            &caller,
            crate::authz::AdminAction::ReadIdentity,
            crate::authz::AdminAction::ReadServer,
            &cred.spiffe_id,
        )
        .await?;
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    Ok(Json(json!({
        "serial": cred.serial,
        "kind": match cred.kind { credence_store::CredentialKind::X509 => "x509", credence_store::CredentialKind::Jwt => "jwt" },
        "spiffe_id": cred.spiffe_id,
        "identity_id": cred.identity_id,
        "issuer": cred.issuer,
        "not_before": fmt(cred.not_before),
        "not_after": fmt(cred.not_after),
        "key_sha256": cred.key_fingerprint,
        "revocation": rev.as_ref().map(revoked_json),
    })))
}

// ---- administrators ----

async fn create_admin(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiJson(new): ApiJson<crate::admins::NewAdmin>,
) -> Result<(StatusCode, Json<crate::admins::CreatedAdmin>), ServerError> {
    Ok((
        StatusCode::CREATED,
        Json(st.svc.create_admin(&caller, new).await?),
    ))
}

async fn list_admins(State(st): State<AppState>) -> Result<Json<Value>, ServerError> {
    Ok(Json(json!({"admins": st.svc.list_admins().await?})))
}

async fn show_admin(
    State(st): State<AppState>,
    ApiPath(name): ApiPath,
) -> Result<Json<credence_core::Admin>, ServerError> {
    let name = credence_core::AdminName::parse(&name)?;
    Ok(Json(st.svc.get_admin(&name).await?))
}

async fn delete_admin(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiPath(name): ApiPath,
) -> Result<StatusCode, ServerError> {
    let name = credence_core::AdminName::parse(&name)?;
    st.svc.delete_admin(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- nodes ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    ttl: Option<Ttl>,
}

async fn create_join_token(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<Json<crate::nodes::NewJoinToken>, ServerError> {
    let ttl = parse_ttl(req.ttl)?.unwrap_or(Duration::minutes(10));
    Ok(Json(st.svc.create_join_token(&caller, ttl).await?))
}

fn node_id(s: &str) -> Result<credence_core::NodeId, ServerError> {
    Ok(credence_core::NodeId::parse(s)?)
}

async fn list_nodes(State(st): State<AppState>) -> Result<Json<Value>, ServerError> {
    Ok(Json(json!({"items": st.svc.list_nodes().await?})))
}

async fn show_node(
    State(st): State<AppState>,
    ApiPath(id): ApiPath,
) -> Result<Json<credence_core::Node>, ServerError> {
    Ok(Json(st.svc.get_node(&node_id(&id)?).await?))
}

async fn evict_node(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath,
) -> Result<Json<Value>, ServerError> {
    let id = node_id(&id)?;
    let revoked = st.svc.evict_node(&caller, &id).await?;
    Ok(Json(json!({
        "node": st.svc.get_node(&id).await?,
        "revoked": revoked.iter().map(|r| &r.serial).collect::<Vec<_>>(),
    })))
}

async fn show_ca(State(st): State<AppState>) -> Json<Value> {
    let a = st.svc.authority();
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    Json(json!({
        "trust_domain": a.trust_domain,
        "root": {"id": a.root_id, "not_after": fmt(a.root.not_after)},
        "intermediate": {"id": a.intermediate_id, "not_before": fmt(a.intermediate.not_before), "not_after": fmt(a.intermediate.not_after)},
        "retired_intermediates": a.retired.keys().collect::<Vec<_>>(),
        "jwt_kid": a.jwt_signer(st.svc.clock.now()).map(|s| s.kid().to_owned()).ok(),
        "jwt_keys": a.jwt_keys.iter().map(|k| json!({
            "kid": k.signer.kid(),
            "signs_from": fmt(k.not_before),
            "signs_until": fmt(k.not_after),
        })).collect::<Vec<_>>(),
        "bundle_pem": a.bundle_pem(),
    }))
}

async fn rotate_ca(
    State(st): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<Value>, ServerError> {
    let id = st.svc.rotate_intermediate(&caller).await?;
    Ok(Json(json!({"intermediate": id})))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtRotateRequest {
    #[serde(default)]
    overlap_seconds: Option<u32>,
}

async fn rotate_jwt_key(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiJson(req): ApiJson<JwtRotateRequest>,
) -> Result<Json<Value>, ServerError> {
    let overlap = time::Duration::seconds(i64::from(req.overlap_seconds.unwrap_or(600)));
    let kid = st.svc.rotate_jwt_key(&caller, overlap).await?;
    let starts = st.svc.clock.now() + overlap;
    Ok(Json(json!({
        "kid": kid,
        "signs_from": starts.format(&time::format_description::well_known::Rfc3339).ok(),
    })))
}

// ---- audit log ----

fn b64(h: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(h)
}

fn text(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

async fn audit_checkpoint(State(st): State<AppState>) -> Result<Response, ServerError> {
    if let Some((_, note)) = st.svc.store.latest_checkpoint().await? {
        return Ok(text(note));
    }
    st.svc.checkpoint().await?;
    let (_, note) = st
        .svc
        .store
        .latest_checkpoint()
        .await?
        .ok_or_else(|| ServerError::Internal("no checkpoint after signing one".into()))?;
    Ok(text(note))
}

async fn audit_key(State(st): State<AppState>) -> Response {
    text(st.svc.audit_log.vkey())
}

/// Most entries one `/v1/audit/entries` call returns.
const MAX_ENTRIES: u64 = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntriesQuery {
    start: u64,
    end: u64,
}

async fn audit_entries(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<EntriesQuery>,
) -> Result<Json<Value>, ServerError> {
    if q.end < q.start {
        return Err(ServerError::bad(
            "invalid_query",
            "end must not be below start",
        ));
    }
    let end = q.end.min(q.start.saturating_add(MAX_ENTRIES));
    let leaves = st.svc.store.audit_leaves(q.start, end).await?;
    let mut entries = Vec::with_capacity(leaves.len());
    for (index, leaf) in leaves {
        let event = credence_store::AuditRecord::from_leaf_bytes(&leaf)
            .map(|e| json!(e))
            .unwrap_or(Value::Null);
        entries.push(json!({"index": index, "leaf": b64(&leaf), "event": event}));
    }
    Ok(Json(json!({"entries": entries})))
}

/// The exact leaf bytes of entries `start..end` (at most 10,000 per call) as
/// a binary stream for bulk verification: for each entry in index order, its
/// length as a 4-byte big-endian integer, then its bytes
/// (`application/octet-stream`). A short answer means the log ends there.
async fn audit_leaves(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<EntriesQuery>,
) -> Result<Response, ServerError> {
    if q.end < q.start {
        return Err(ServerError::bad(
            "invalid_query",
            "end must not be below start",
        ));
    }
    let leaves = st.svc.store.audit_leaves(q.start, q.end).await?;
    let total: usize = leaves.iter().map(|(_, l)| l.len() + 4).sum();
    let mut body = Vec::with_capacity(total);
    for (expected, (index, leaf)) in (q.start..).zip(leaves) {
        if index != expected {
            // a gap in the stored indices: stop, the verifier reports it
            break;
        }
        let len = u32::try_from(leaf.len())
            .map_err(|_| ServerError::Internal(format!("entry {index} is too large")))?;
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(&leaf);
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        body,
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InclusionQuery {
    index: u64,
    tree_size: u64,
}

async fn audit_inclusion(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<InclusionQuery>,
) -> Result<Json<Value>, ServerError> {
    let hashes =
        credence_store::proofs::inclusion_proof(st.svc.store.as_ref(), q.index, q.tree_size)
            .await?;
    Ok(Json(json!({
        "leaf_index": q.index,
        "tree_size": q.tree_size,
        "hashes": hashes.iter().map(|h| b64(h)).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyQuery {
    from: u64,
    to: u64,
}

async fn audit_consistency(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<ConsistencyQuery>,
) -> Result<Json<Value>, ServerError> {
    let hashes =
        credence_store::proofs::consistency_proof(st.svc.store.as_ref(), q.from, q.to).await?;
    Ok(Json(json!({
        "from": q.from,
        "to": q.to,
        "hashes": hashes.iter().map(|h| b64(h)).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    action: Option<String>,
    outcome: Option<credence_store::Outcome>,
    spiffe_id: Option<SpiffeId>,
    target: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    since: Option<time::OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    until: Option<time::OffsetDateTime>,
    after: Option<u64>,
    limit: Option<u32>,
}

async fn audit_search(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> Result<Json<Value>, ServerError> {
    let filter = credence_store::AuditFilter {
        action: q.action,
        outcome: q.outcome,
        spiffe_id: q.spiffe_id.map(|s| s.to_string()),
        target: q.target,
        since: q.since,
        until: q.until,
    };
    let limit = q.limit.unwrap_or(100);
    let found = st.svc.store.search_audit(&filter, q.after, limit).await?;
    let next = (found.len() as u32 >= limit.clamp(1, 1000))
        .then(|| found.last().map(|(i, _)| *i))
        .flatten();
    Ok(Json(json!({
        "entries": found.iter().map(|(i, e)| json!({"index": i, "event": e})).collect::<Vec<_>>(),
        "next_after": next,
    })))
}
