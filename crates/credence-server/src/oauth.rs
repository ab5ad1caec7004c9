//! OAuth 2.0 token service: `/oauth2/token`, introspection (RFC 7662),
//! revocation (RFC 7009) and metadata (RFC 8414).
//!
//! - **Clients are identities.** A client authenticates with
//!   `private_key_jwt` (RFC 7523) whose assertion is a JWT-SVID of this
//!   trust domain with this server's token endpoint (or issuer) among its
//!   audiences; the client is the SVID's SPIFFE ID, which must be a
//!   registered, active identity. Client secrets do not exist.
//! - **Grants.** `client_credentials`: a token for the client itself.
//!   Token exchange (RFC 8693) with a `subject_token` that is a JWT-SVID or
//!   an access token of ours for the same identity: a token for another
//!   audience or with fewer scopes. (External issuers' tokens and
//!   `actor_token` delegation come with trust rules and delegation.)
//! - **Tokens** are RFC 9068 JWTs (`typ: at+jwt`, ES256 through the same
//!   key custody as JWT-SVIDs): `iss`, `sub` and `client_id` (SPIFFE IDs),
//!   `aud` (the `resource`/`audience` asked for; default: the issuer),
//!   `scope` (a subset of the identity's scopes), `jti`, `iat`, `exp`
//!   (default [`DEFAULT_TTL`], at most [`MAX_TTL`]). Every token is asked of
//!   the policy engine (`Credence::Action::"issue_access_token"`, with the
//!   grant type, audiences and scopes) and recorded with its audit event
//!   before it is returned; refusals are audited.
//! - **Revocation** is by `jti` in the same store as every credential, so
//!   introspection reports a revoked token inactive at once.
//!
//! Errors follow RFC 6749 §5.2: `{"error", "error_description"}` with 400
//! (401 and `WWW-Authenticate` for client authentication), `Cache-Control:
//! no-store` on every answer.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::Duration;

use credence_core::{Identity, Scope, SpiffeId};
use credence_store::{CredentialKind, IssuedCredential};

use crate::ServerError;
use crate::api::AppState;
use crate::authz::IssueRequest;
use crate::service::{Actor, Service, audit};

pub const DEFAULT_TTL: Duration = Duration::minutes(10);
pub const MAX_TTL: Duration = Duration::hours(1);
/// Largest form body.
const MAX_FORM: usize = 64 * 1024;
pub const CLIENT_CREDENTIALS: &str = "client_credentials";
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
pub const TT_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TT_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// An RFC 6749 error answer.
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status: if error == "invalid_client" {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::BAD_REQUEST
            },
            error,
            description: description.into(),
        }
    }

    fn request(d: impl Into<String>) -> Self {
        Self::new("invalid_request", d)
    }

    fn server(e: &ServerError) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "server_error",
            description: e.to_string(),
        }
    }
}

fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            axum::Json(json!({"error": self.error, "error_description": self.description})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"credence\""),
            );
        }
        no_store(r)
    }
}

/// Parameters that may be repeated: RFC 8707 `resource` and RFC 8693
/// `audience` name one target each.
const MULTI: [&str; 2] = ["resource", "audience"];

/// The parameters of a form body.
#[derive(Debug, Default)]
pub struct Form(HashMap<String, Vec<String>>);

impl Form {
    /// The value of a parameter (single-valued ones are never repeated).
    pub fn get(&self, name: &str) -> Option<&String> {
        self.0.get(name).and_then(|v| v.first())
    }

    /// Every value of a parameter.
    pub fn all(&self, name: &str) -> &[String] {
        self.0.get(name).map_or(&[], Vec::as_slice)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// A form of these pairs (tests).
    pub fn of(pairs: &[(&str, &str)]) -> Self {
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in pairs {
            m.entry((*k).to_owned()).or_default().push((*v).to_owned());
        }
        Self(m)
    }
}

/// Parameters of a form body: each name at most once (RFC 6749 §3.2) but
/// `resource` and `audience`; `application/x-www-form-urlencoded` only.
pub fn form(headers: &HeaderMap, body: &[u8]) -> Result<Form, OAuthError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(OAuthError::request(format!(
            "expected Content-Type application/x-www-form-urlencoded, got {:?}",
            if ct.is_empty() { "none" } else { ct }
        )));
    }
    if body.len() > MAX_FORM {
        return Err(OAuthError::request(format!(
            "the body is larger than {MAX_FORM} bytes"
        )));
    }
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in form_urlencoded::parse(body) {
        let values = out.entry(k.to_string()).or_default();
        if !values.is_empty() && !MULTI.contains(&k.as_ref()) {
            return Err(OAuthError::request(format!("parameter {k} is repeated")));
        }
        values.push(v.into_owned());
    }
    Ok(Form(out))
}

fn required<'a>(f: &'a Form, name: &str) -> Result<&'a str, OAuthError> {
    f.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| OAuthError::request(format!("missing parameter {name}")))
}

/// The server's URLs as clients see them.
pub struct Endpoints {
    pub issuer: String,
    pub token: String,
}

impl Endpoints {
    pub fn of(st: &AppState) -> Self {
        let base = st.base_url.trim_end_matches('/').to_owned();
        let issuer = st.svc.issuer_url.clone().unwrap_or_else(|| base.clone());
        Self {
            token: format!("{base}/oauth2/token"),
            issuer,
        }
    }
}

/// A client certificate the TLS handshake verified against our bundle
/// (RFC 8705 `tls_client_auth` on the agent listener).
pub struct ClientCert {
    pub leaf_der: Arc<Vec<u8>>,
}

impl ClientCert {
    /// `x5t#S256`: the base64url SHA-256 of the certificate (RFC 8705 §3.1).
    pub fn thumbprint(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(credence_ca::keys::sha256(&self.leaf_der))
    }
}

/// What a token is asked for.
struct Ask {
    audiences: Vec<String>,
    scopes: Vec<Scope>,
    grant: &'static str,
    /// For an external token: its issuer, subject and the rules that let
    /// it through (recorded with the token).
    external: Option<Value>,
}

impl Service {
    /// The claims of an access token this server issued (signature, typ
    /// and expiry checked; revocation not), whatever its `sub` names.
    pub(crate) fn own_access_token(&self, token: &str) -> Option<serde_json::Map<String, Value>> {
        let jwks = self.authority().jwks().to_string();
        credence_ca::jwt_verify::validate_own(token, "at+jwt", jwks.as_bytes()).ok()
    }

    /// Adds `scope` and (certificate-bound tokens, RFC 8705 §3) `cnf` to
    /// `claims`, signs them as an RFC 9068 access token with the current
    /// key, and returns the token, the key id and the credential row that
    /// records it for `holder` (serial: the claims' `jti`).
    fn sign_access_token(
        &self,
        claims: &mut Value,
        scope: Option<&str>,
        bound_to: Option<&ClientCert>,
        holder: &Identity,
        now: time::OffsetDateTime,
        exp: time::OffsetDateTime,
    ) -> Result<(String, String, IssuedCredential), OAuthError> {
        if let Some(s) = scope {
            claims["scope"] = json!(s);
        }
        if let Some(c) = bound_to {
            // a resource server accepts it only over mTLS with this certificate
            claims["cnf"] = json!({"x5t#S256": c.thumbprint()});
        }
        let auth = self.authority();
        let signer = auth.jwt_signer(now).map_err(|e| OAuthError::server(&e))?;
        let token = signer
            .sign_typed("at+jwt", claims)
            .map_err(|e| OAuthError::server(&e.into()))?;
        let kid = signer.kid().to_owned();
        let cred = IssuedCredential {
            kind: CredentialKind::Jwt,
            serial: claims["jti"].as_str().unwrap_or_default().to_owned(),
            identity_id: holder.id.clone(),
            spiffe_id: holder.spiffe_id.clone(),
            issuer: format!("jwt-{kid}"),
            not_before: now,
            not_after: exp,
            key_fingerprint: None,
            node_id: None,
        };
        Ok((token, kid, cred))
    }

    fn own_bundles(&self) -> HashMap<String, Vec<u8>> {
        let auth = self.authority();
        HashMap::from([(
            auth.trust_domain.id_string(),
            auth.jwks().to_string().into_bytes(),
        )])
    }

    /// The client of a request: a JWT-SVID assertion (RFC 7523) naming a
    /// registered, active identity.
    async fn oauth_client(
        &self,
        f: &Form,
        ep: &Endpoints,
        cert: Option<&ClientCert>,
    ) -> Result<Arc<Identity>, OAuthError> {
        let bad = |d: String| OAuthError::new("invalid_client", d);
        match (f.get("client_assertion_type").map(String::as_str), cert) {
            (Some(JWT_BEARER), None) => {}
            (Some(_), Some(_)) => {
                return Err(bad(
                    "one client authentication method per request: a client certificate or an assertion"
                        .into(),
                ));
            }
            (None, Some(c)) => return self.mtls_client(f, c).await,
            (Some(other), None) => {
                return Err(bad(format!("unsupported client_assertion_type {other:?}")));
            }
            (None, None) => {
                return Err(bad(
                    "client authentication required: client_assertion_type jwt-bearer with a JWT-SVID, or an X509-SVID over mutual TLS on the agent port"
                        .into(),
                ));
            }
        }
        let assertion = required(f, "client_assertion").map_err(|e| bad(e.description))?;
        let bundles = self.own_bundles();
        let checked = credence_ca::jwt_verify::validate_jwt_svid(assertion, &ep.token, &bundles)
            .or_else(|_| {
                credence_ca::jwt_verify::validate_jwt_svid(assertion, &ep.issuer, &bundles)
            })
            .map_err(|e| bad(format!("client assertion: {e}")))?;
        let (sub, claims) = checked;
        if let Some(jti) = claims.get("jti").and_then(Value::as_str)
            && self.is_revoked(jti).await.unwrap_or(true)
        {
            return Err(bad("client assertion: the JWT-SVID has been revoked".into()));
        }
        if let Some(id) = f.get("client_id")
            && id != sub.as_str()
        {
            return Err(bad(format!(
                "client_id {id} is not the assertion's subject {sub}"
            )));
        }
        let identity = self
            .issuable(&sub)
            .await
            .map_err(|e| bad(format!("client {sub}: {e}")))?;
        Ok(identity)
    }

    /// RFC 8705 `tls_client_auth`: the client is the X509-SVID's SPIFFE ID
    /// (its chain was verified in the handshake), unrevoked and registered.
    async fn mtls_client(&self, f: &Form, c: &ClientCert) -> Result<Arc<Identity>, OAuthError> {
        let bad = |d: String| OAuthError::new("invalid_client", d);
        let info = credence_ca::x509::svid_info(&c.leaf_der)
            .map_err(|e| bad(format!("client certificate is not an X509-SVID: {e}")))?;
        if !info.spiffe_id.is_member_of(&self.trust_domain()) {
            return Err(bad(
                "the client X509-SVID is not of this trust domain".into()
            ));
        }
        if self.is_revoked(&info.serial).await.unwrap_or(true) {
            return Err(bad("the client X509-SVID has been revoked".into()));
        }
        if let Some(id) = f.get("client_id")
            && id != info.spiffe_id.as_str()
        {
            return Err(bad(format!(
                "client_id {id} is not the certificate's SPIFFE ID {}",
                info.spiffe_id
            )));
        }
        self.issuable(&info.spiffe_id)
            .await
            .map_err(|e| bad(format!("client {}: {e}", info.spiffe_id)))
    }

    /// Signs, records and returns an access token for `subject`.
    async fn access_token(
        &self,
        client: &Identity,
        subject: &Identity,
        ask: Ask,
        ttl: Duration,
        ep: &Endpoints,
        bound_to: Option<&ClientCert>,
    ) -> Result<(String, Duration, Option<String>), OAuthError> {
        let external = ask.external.clone();
        let actor = Actor {
            name: match &external {
                Some(x) => format!(
                    "{}:{}",
                    x["issuer"].as_str().unwrap_or(""),
                    x["subject"].as_str().unwrap_or("")
                ),
                None => client.spiffe_id.to_string(),
            },
            method: if external.is_some() {
                "external_token"
            } else {
                "oauth_client"
            },
            request_id: None,
            client_addr: None,
            principal: crate::authz::Principal::Workload,
        };
        let scope_names: Vec<String> = ask.scopes.iter().map(|s| s.as_str().to_owned()).collect();
        self.authorize_issue(
            &actor,
            IssueRequest {
                identity: subject,
                jwt: Some((&ask.audiences, &scope_names)),
                access_grant: Some(ask.grant),
                delegation: None,
                ttl_seconds: ttl.whole_seconds(),
                node: None,
            },
        )
        .await
        .map_err(|e| match e {
            ServerError::Forbidden(_, why) => OAuthError::new("invalid_scope", why),
            other => OAuthError::server(&other),
        })?;
        let now = self.clock.now();
        let exp = now + ttl;
        let jti = self.new_serial(now).to_hex();
        let scope = (!scope_names.is_empty()).then(|| scope_names.join(" "));
        let aud: Value = match ask.audiences.as_slice() {
            [one] => json!(one),
            many => json!(many),
        };
        let mut claims = json!({
            "iss": ep.issuer,
            "sub": subject.spiffe_id,
            "client_id": client.spiffe_id,
            "aud": aud,
            "iat": now.unix_timestamp(),
            "exp": exp.unix_timestamp(),
            "jti": jti,
        });
        let (token, kid, cred) =
            self.sign_access_token(&mut claims, scope.as_deref(), bound_to, subject, now, exp)?;
        let mut rec = audit(
            &actor,
            now,
            "oauth.token",
            subject.spiffe_id.as_str(),
            json!({
                "jti": jti,
                "grant_type": ask.grant,
                "client_id": client.spiffe_id,
                "aud": ask.audiences,
                "scope": scope,
                "ttl_seconds": ttl.whole_seconds(),
                "kid": kid,
                "client_auth": if bound_to.is_some() { "tls_client_auth" } else { "private_key_jwt" },
                "cnf_x5t_s256": bound_to.map(ClientCert::thumbprint),
            }),
        );
        if let Some(x) = external {
            // who, by which issuer, under which trust rule
            rec.details.insert("external".into(), x);
        }
        self.store
            .record_issued(vec![(cred, rec)])
            .await
            .map_err(|e| OAuthError::server(&e.into()))?;
        Ok((token, ttl, scope))
    }

    /// The identity a `subject_token` speaks for: a JWT-SVID (any audience
    /// naming this server) or an access token of ours, unexpired and not
    /// revoked; with the scopes it carried.
    async fn subject_of(
        &self,
        token: &str,
        token_type: &str,
        ep: &Endpoints,
    ) -> Result<(SpiffeId, Option<Vec<String>>), OAuthError> {
        let bad = |d: String| OAuthError::new("invalid_grant", d);
        let bundles = self.own_bundles();
        let (sub, claims) = match token_type {
            TT_ACCESS_TOKEN => credence_ca::jwt_verify::validate_access_token(token, &bundles)
                .map_err(|e| bad(format!("subject_token: {e}")))?,
            TT_JWT => credence_ca::jwt_verify::validate_jwt_svid(token, &ep.token, &bundles)
                .or_else(|_| {
                    credence_ca::jwt_verify::validate_jwt_svid(token, &ep.issuer, &bundles)
                })
                .map_err(|e| bad(format!("subject_token: {e}")))?,
            other => {
                return Err(OAuthError::request(format!(
                    "unsupported subject_token_type {other:?} (expected {TT_JWT} or {TT_ACCESS_TOKEN})"
                )));
            }
        };
        match claims.get("jti").and_then(Value::as_str) {
            Some(jti) if !self.is_revoked(jti).await.unwrap_or(true) => {}
            Some(_) => return Err(bad("subject_token has been revoked".into())),
            None => return Err(bad("subject_token has no jti".into())),
        }
        let scopes = claims
            .get("scope")
            .and_then(Value::as_str)
            .map(|s| s.split_whitespace().map(str::to_owned).collect());
        Ok((sub, scopes))
    }
}

fn audiences(f: &Form, ep: &Endpoints) -> Result<Vec<String>, OAuthError> {
    let bad = |d: String| OAuthError::new("invalid_target", d);
    // RFC 8707 §2: a resource is an absolute URI without a fragment
    for r in f.all("resource") {
        let scheme_ok = r.split_once(':').is_some_and(|(s, rest)| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                && !rest.is_empty()
        });
        if !scheme_ok || r.contains('#') || r.chars().any(char::is_whitespace) {
            return Err(bad(format!(
                "resource {r:?} is not an absolute URI without a fragment"
            )));
        }
    }
    let mut out: Vec<String> = f
        .all("resource")
        .iter()
        .chain(f.all("audience"))
        .filter(|a| !a.is_empty())
        .cloned()
        .collect();
    if out.iter().any(|a| a.len() > 512) || out.len() > 16 {
        return Err(bad("at most 16 audiences of at most 512 bytes".into()));
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        out.push(ep.issuer.clone());
    }
    Ok(out)
}

fn scopes(f: &Form) -> Result<Option<Vec<Scope>>, OAuthError> {
    match f.get("scope") {
        None => Ok(None),
        Some(s) => Scope::parse_list(s.split_whitespace())
            .map(Some)
            .map_err(|e| OAuthError::new("invalid_scope", e.to_string())),
    }
}

fn ttl(f: &Form) -> Result<Duration, OAuthError> {
    // not an RFC parameter; lets a client ask for less than the default
    match f.get("expires_in") {
        None => Ok(DEFAULT_TTL),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|s| *s > 0)
            .map(|s| Duration::seconds(s).min(MAX_TTL))
            .ok_or_else(|| OAuthError::request("expires_in must be a positive number of seconds")),
    }
}

async fn token_inner(
    svc: &Service,
    ep: &Endpoints,
    cert: Option<&ClientCert>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, OAuthError> {
    let f = form(headers, body)?;
    let grant = required(&f, "grant_type")?;
    if grant == TOKEN_EXCHANGE && f.contains_key("requested_subject") {
        return external_exchange(svc, ep, cert, &f).await;
    }
    if grant == TOKEN_EXCHANGE && f.contains_key("actor_token") {
        return delegated_exchange(svc, ep, cert, &f).await;
    }
    let client = svc.oauth_client(&f, ep, cert).await?;
    let ttl = ttl(&f)?;
    let audiences = audiences(&f, ep)?;
    let (subject, asked, grant, issued_type) = match grant {
        CLIENT_CREDENTIALS => {
            // default: every scope the identity may carry
            let asked = scopes(&f)?.unwrap_or_else(|| client.scopes.clone());
            (client.clone(), asked, CLIENT_CREDENTIALS, None)
        }
        TOKEN_EXCHANGE => {
            if let Some(t) = f.get("requested_token_type")
                && t != TT_ACCESS_TOKEN
            {
                return Err(OAuthError::request(format!(
                    "requested_token_type {t:?} is not supported (only {TT_ACCESS_TOKEN})"
                )));
            }
            let (sub, carried) = svc
                .subject_of(
                    required(&f, "subject_token")?,
                    required(&f, "subject_token_type")?,
                    ep,
                )
                .await?;
            if sub != client.spiffe_id {
                return Err(OAuthError::new(
                    "invalid_grant",
                    format!(
                        "subject_token is for {sub}, not the client {}; exchanging another identity's token needs delegation",
                        client.spiffe_id
                    ),
                ));
            }
            let asked = match (scopes(&f)?, carried) {
                (Some(s), Some(c)) => {
                    if let Some(extra) = s.iter().find(|x| !c.iter().any(|y| y == x.as_str())) {
                        return Err(OAuthError::new(
                            "invalid_scope",
                            format!("scope {extra} is not in the subject_token"),
                        ));
                    }
                    s
                }
                (Some(s), None) => s,
                (None, Some(c)) => Scope::parse_list(c.iter().map(String::as_str))
                    .map_err(|e| OAuthError::new("invalid_scope", e.to_string()))?,
                (None, None) => Vec::new(),
            };
            (client.clone(), asked, TOKEN_EXCHANGE, Some(TT_ACCESS_TOKEN))
        }
        other => {
            return Err(OAuthError::new(
                "unsupported_grant_type",
                format!("grant_type {other:?} is not supported"),
            ));
        }
    };
    let (token, ttl, scope) = svc
        .access_token(
            &client,
            &subject,
            Ask {
                audiences,
                scopes: asked,
                grant,
                external: None,
            },
            ttl,
            ep,
            cert,
        )
        .await?;
    let mut out = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ttl.whole_seconds(),
    });
    if let Some(s) = scope {
        out["scope"] = json!(s);
    }
    if let Some(t) = issued_type {
        out["issued_token_type"] = json!(t);
    }
    Ok(out)
}

pub const TT_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";

/// RFC 8693 exchange of an external issuer's token for the identity named
/// by `requested_subject`, permitted only by a trust rule (ADR 0007). The
/// external token is the credential: no client authentication.
async fn external_exchange(
    svc: &Service,
    ep: &Endpoints,
    cert: Option<&ClientCert>,
    f: &Form,
) -> Result<Value, OAuthError> {
    let grant_err = |d: String| OAuthError::new("invalid_grant", d);
    if cert.is_some() || f.contains_key("client_assertion") || f.contains_key("actor_token") {
        return Err(OAuthError::request(
            "an external token exchange takes no client authentication and no actor_token",
        ));
    }
    match required(f, "subject_token_type")? {
        TT_JWT | TT_ID_TOKEN => {}
        other => {
            return Err(OAuthError::request(format!(
                "subject_token_type {other:?}: an external token is {TT_JWT} or {TT_ID_TOKEN}"
            )));
        }
    }
    let token = required(f, "subject_token")?;
    let verifier = svc.external_issuers().for_token(token).ok_or_else(|| {
        grant_err("subject_token's issuer is not a configured external issuer".into())
    })?;
    let verified = verifier
        .verify(token, svc.clock.now())
        .await
        .map_err(|e| grant_err(format!("subject_token: {e}")))?;
    let wanted = SpiffeId::parse(required(f, "requested_subject")?)
        .map_err(|e| OAuthError::new("invalid_target", format!("requested_subject: {e}")))?;
    let identity = svc
        .issuable(&wanted)
        .await
        .map_err(|e| OAuthError::new("invalid_target", format!("requested_subject: {e}")))?;
    let ttl = ttl(f)?;
    let audiences = audiences(f, ep)?;
    let asked = scopes(f)?.unwrap_or_else(|| identity.scopes.clone());
    let names: Vec<String> = asked.iter().map(|s| s.as_str().to_owned()).collect();
    let decision = svc.trust_rule(&verified, &identity, &audiences, &names);
    let who = format!("{}:{}", verified.issuer_name, verified.subject);
    if !decision.allow {
        let why = if decision.errors.is_empty() {
            format!("no trust rule lets {who} become {wanted}")
        } else {
            format!(
                "no trust rule lets {who} become {wanted} (evaluation failed: {})",
                decision.errors.join("; ")
            )
        };
        return Err(grant_err(why));
    }
    let external = json!({
        "issuer": verified.issuer_name,
        "subject": verified.subject,
        "rules": decision.policies,
    });
    let (token, ttl, scope) = svc
        .access_token(
            &identity,
            &identity,
            Ask {
                audiences,
                scopes: asked,
                grant: TOKEN_EXCHANGE,
                external: Some(external),
            },
            ttl,
            ep,
            None,
        )
        .await?;
    let mut out = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ttl.whole_seconds(),
        "issued_token_type": TT_ACCESS_TOKEN,
    });
    if let Some(s) = scope {
        out["scope"] = json!(s);
    }
    Ok(out)
}

/// `POST /oauth2/token`.
pub async fn token(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    token_response(&st.svc, &Endpoints::of(&st), None, &headers, &body).await
}

/// The token endpoint's answer; `cert`: the client certificate of a
/// mutual-TLS connection (the agent listener).
pub async fn token_response(
    svc: &Service,
    ep: &Endpoints,
    cert: Option<&ClientCert>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    match token_inner(svc, ep, cert, headers, body).await {
        Ok(v) => no_store(axum::Json(v).into_response()),
        Err(e) => {
            record_refusal(svc, "oauth.token", &e).await;
            e.into_response()
        }
    }
}

async fn record_refusal(svc: &Service, action: &str, e: &OAuthError) {
    if e.status == StatusCode::INTERNAL_SERVER_ERROR {
        return;
    }
    let mut rec = audit(
        &Actor::internal("oauth"),
        svc.clock.now(),
        action,
        "oauth",
        json!({"error": e.error}),
    );
    rec.outcome = credence_store::Outcome::Failure;
    rec.reason = Some(e.description.chars().take(512).collect());
    if let Err(err) = svc.store.append_audit(rec).await {
        tracing::error!(error = %err, "cannot record a refused token request");
    }
}

/// Who may introspect or revoke: an OAuth client (JWT-SVID assertion) or
/// the admin token. `Ok(None)`: an administrator.
async fn caller(
    st: &AppState,
    headers: &HeaderMap,
    f: &Form,
) -> Result<Option<Arc<Identity>>, OAuthError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    if let Some(t) = bearer
        && bool::from(subtle::ConstantTimeEq::ct_eq(
            &Service::token_hash(t)[..],
            &st.admin_token_hash[..],
        ))
    {
        return Ok(None);
    }
    st.svc
        .oauth_client(f, &Endpoints::of(st), None)
        .await
        .map(Some)
}

async fn introspect_inner(
    st: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, OAuthError> {
    let f = form(headers, body)?;
    let who = caller(st, headers, &f).await?;
    let token = required(&f, "token")?;
    let inactive = json!({"active": false});
    let Some(claims) = st.svc.own_access_token(token) else {
        return Ok(inactive);
    };
    let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
    // a client learns only about its own tokens (RFC 7662 §4)
    if let Some(c) = &who
        && c.spiffe_id.as_str() != sub
        && claims.get("client_id").and_then(Value::as_str) != Some(c.spiffe_id.as_str())
    {
        return Ok(inactive);
    }
    match claims.get("jti").and_then(Value::as_str) {
        Some(jti)
            if !st
                .svc
                .is_revoked(jti)
                .await
                .map_err(|e| OAuthError::server(&e))? => {}
        _ => return Ok(inactive),
    }
    let mut out = json!({"active": true, "token_type": "Bearer"});
    for k in [
        "iss",
        "sub",
        "aud",
        "client_id",
        "scope",
        "exp",
        "iat",
        "jti",
        "act",
    ] {
        if let Some(v) = claims.get(k) {
            out[k] = v.clone();
        }
    }
    Ok(out)
}

/// `POST /oauth2/introspect` (RFC 7662).
pub async fn introspect(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    match introspect_inner(&st, &headers, &body).await {
        Ok(v) => no_store(axum::Json(v).into_response()),
        Err(e) => e.into_response(),
    }
}

async fn revoke_inner(st: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<(), OAuthError> {
    let f = form(headers, body)?;
    let who = caller(st, headers, &f).await?;
    let token = required(&f, "token")?;
    // RFC 7009 §2.2: an invalid or unknown token is not an error
    let Some(claims) = st.svc.own_access_token(token) else {
        return Ok(());
    };
    let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
    if let Some(c) = &who
        && c.spiffe_id.as_str() != sub
        && claims.get("client_id").and_then(Value::as_str) != Some(c.spiffe_id.as_str())
    {
        return Err(OAuthError::new(
            "unauthorized_client",
            "a client may revoke only its own tokens",
        ));
    }
    let Some(jti) = claims.get("jti").and_then(Value::as_str) else {
        return Ok(());
    };
    let actor = match &who {
        Some(c) => Actor {
            name: c.spiffe_id.to_string(),
            method: "oauth_client",
            request_id: None,
            client_addr: None,
            principal: crate::authz::Principal::Workload,
        },
        None => Actor::admin(),
    };
    let now = st.svc.clock.now();
    let rec = audit(
        &actor,
        now,
        "oauth.revoke",
        jti,
        json!({"sub": sub, "client_id": claims.get("client_id")}),
    );
    match st
        .svc
        .store
        .revoke_serial(
            jti,
            credence_core::RevocationReason::CessationOfOperation,
            now,
            rec,
        )
        .await
    {
        Ok(_) => {
            st.svc.revocations_changed();
            Ok(())
        }
        Err(credence_store::StoreError::NotFound(_)) => Ok(()),
        Err(e) => Err(OAuthError::server(&e.into())),
    }
}

/// `POST /oauth2/revoke` (RFC 7009).
pub async fn revoke(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    match revoke_inner(&st, &headers, &body).await {
        Ok(()) => no_store(StatusCode::OK.into_response()),
        Err(e) => e.into_response(),
    }
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414).
pub async fn metadata(State(st): State<AppState>) -> axum::Json<Value> {
    let ep = Endpoints::of(&st);
    let base = st.base_url.trim_end_matches('/');
    axum::Json(json!({
        "issuer": ep.issuer,
        "token_endpoint": ep.token,
        "introspection_endpoint": format!("{base}/oauth2/introspect"),
        "revocation_endpoint": format!("{base}/oauth2/revoke"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "grant_types_supported": [CLIENT_CREDENTIALS, TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "tls_client_auth"],
        "tls_client_certificate_bound_access_tokens": true,
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "ES384", "RS256", "PS256"],
        "introspection_endpoint_auth_methods_supported": ["private_key_jwt"],
        "revocation_endpoint_auth_methods_supported": ["private_key_jwt"],
        "response_types_supported": [],
        "scopes_supported": [],
        "access_token_signing_alg_values_supported": ["ES256"],
    }))
}

/// RFC 8693 delegation: `subject_token` is a grant token (who delegates
/// what), `actor_token` the grantee's JWT-SVID (who acts). The token is for
/// the grant's principal (`sub`) with the chain of actors in nested `act`
/// claims (the current actor outermost), its scopes and audiences within
/// the grant's, its lifetime within every grant of the chain; it counts
/// as one use of the grant and is revoked with it.
async fn delegated_exchange(
    svc: &Service,
    ep: &Endpoints,
    cert: Option<&ClientCert>,
    f: &Form,
) -> Result<Value, OAuthError> {
    let grant_err = |d: String| OAuthError::new("invalid_grant", d);
    for (param, what) in [
        ("subject_token_type", "a grant token"),
        ("actor_token_type", "a JWT-SVID"),
    ] {
        let t = required(f, param)?;
        if t != TT_JWT {
            return Err(OAuthError::request(format!(
                "{param} {t:?}: expected {TT_JWT} ({what})"
            )));
        }
    }
    if let Some(t) = f.get("requested_token_type")
        && t != TT_ACCESS_TOKEN
    {
        return Err(OAuthError::request(format!(
            "requested_token_type {t:?} is not supported (only {TT_ACCESS_TOKEN})"
        )));
    }
    // the actor: its own JWT-SVID for this server
    let bundles = svc.own_bundles();
    let actor_token = required(f, "actor_token")?;
    let (actor_id, claims) =
        credence_ca::jwt_verify::validate_jwt_svid(actor_token, &ep.token, &bundles)
            .or_else(|_| {
                credence_ca::jwt_verify::validate_jwt_svid(actor_token, &ep.issuer, &bundles)
            })
            .map_err(|e| grant_err(format!("actor_token: {e}")))?;
    match claims.get("jti").and_then(Value::as_str) {
        Some(jti) if !svc.is_revoked(jti).await.unwrap_or(true) => {}
        Some(_) => return Err(grant_err("actor_token has been revoked".into())),
        None => return Err(grant_err("actor_token has no jti".into())),
    }
    let actor = svc
        .issuable(&actor_id)
        .await
        .map_err(|e| grant_err(format!("actor {actor_id}: {e}")))?;
    // client authentication is optional here; when present it is the actor
    if cert.is_some() || f.contains_key("client_assertion") {
        let client = svc.oauth_client(f, ep, cert).await?;
        if client.spiffe_id != actor_id {
            return Err(OAuthError::new(
                "invalid_client",
                format!(
                    "the client {} is not the actor {actor_id}",
                    client.spiffe_id
                ),
            ));
        }
    }
    // the grant
    let grant_id = svc
        .grant_of_token(required(f, "subject_token")?)
        .map_err(|e| grant_err(format!("subject_token: {e}")))?;
    let chain = svc
        .store
        .delegation_chain(&grant_id)
        .await
        .map_err(|e| match e {
            credence_store::StoreError::NotFound(m) => grant_err(m),
            other => OAuthError::server(&other.into()),
        })?;
    let Some(g) = chain.last() else {
        return Err(grant_err(format!("no delegation {grant_id}")));
    };
    if g.grantee != actor_id {
        return Err(grant_err(format!(
            "delegation {} is held by {}, not the actor {actor_id}",
            g.id, g.grantee
        )));
    }
    let now = svc.clock.now();
    for link in &chain {
        match link.unusable(now) {
            None => {}
            Some(credence_core::Unusable::UsedUp) if link.id != g.id => {}
            Some(why) => return Err(grant_err(format!("delegation {} is {why}", link.id))),
        }
    }
    let asked = match scopes(f)? {
        Some(s) => {
            if let Some(x) = s.iter().find(|x| !g.mandate.scopes.contains(x)) {
                return Err(OAuthError::new(
                    "invalid_scope",
                    format!("scope {x} is not in delegation {}", g.id),
                ));
            }
            s
        }
        None => g.mandate.scopes.clone(),
    };
    let audiences = if f.all("resource").is_empty() && f.all("audience").is_empty() {
        g.mandate.audiences.clone()
    } else {
        let a = audiences(f, ep)?;
        if let Some(x) = a.iter().find(|x| !g.mandate.audiences.contains(x)) {
            return Err(OAuthError::new(
                "invalid_target",
                format!("audience {x} is not in delegation {}", g.id),
            ));
        }
        a
    };
    // no longer than asked, than the grant allows, than any link lives
    let mut ttl = ttl(f)?.min(Duration::seconds(i64::from(
        g.mandate.max_token_ttl_seconds,
    )));
    for link in &chain {
        ttl = ttl.min(link.mandate.expires_at - now);
    }
    if ttl < Duration::seconds(1) {
        return Err(grant_err(format!("delegation {} expires now", g.id)));
    }
    let ttl = Duration::seconds(ttl.whole_seconds());
    let actors = g.actors();
    let principal = g.principal.principal();
    let scope_names: Vec<String> = asked.iter().map(|s| s.as_str().to_owned()).collect();
    let who = Actor {
        name: actor_id.to_string(),
        method: "actor_token",
        request_id: None,
        client_addr: None,
        principal: crate::authz::Principal::Workload,
    };
    svc.authorize_issue(
        &who,
        IssueRequest {
            identity: &actor,
            jwt: Some((&audiences, &scope_names)),
            access_grant: Some(TOKEN_EXCHANGE),
            ttl_seconds: ttl.whole_seconds(),
            node: None,
            delegation: Some(json!({
                "id": g.id.as_str(),
                "depth": g.depth(),
                "principal": principal,
                "actors": actors,
            })),
        },
    )
    .await
    .map_err(|e| match e {
        ServerError::Forbidden(_, why) => OAuthError::new("invalid_scope", why),
        other => OAuthError::server(&other),
    })?;
    // act: the current actor outermost, the one before it nested, ...
    let mut act: Option<Value> = None;
    for a in &actors {
        let mut hop = json!({ "sub": a });
        if let Some(inner) = act.take() {
            hop["act"] = inner;
        }
        act = Some(hop);
    }
    let exp = now + ttl;
    let jti = svc.new_serial(now).to_hex();
    let scope = (!scope_names.is_empty()).then(|| scope_names.join(" "));
    let mut claims = json!({
        "iss": ep.issuer,
        "sub": principal,
        "client_id": actor_id,
        "aud": match audiences.as_slice() { [one] => json!(one), many => json!(many) },
        "iat": now.unix_timestamp(),
        "exp": exp.unix_timestamp(),
        "jti": jti,
        "act": act,
        "delegation": {"id": g.id.as_str(), "depth": g.depth()},
    });
    let (token, kid, cred) =
        svc.sign_access_token(&mut claims, scope.as_deref(), cert, &actor, now, exp)?;
    let rec = audit(
        &who,
        now,
        "oauth.token",
        actor.spiffe_id.as_str(),
        json!({
            "jti": jti,
            "grant_type": TOKEN_EXCHANGE,
            "client_id": actor_id,
            "on_behalf_of": principal,
            "delegation": g.id.as_str(),
            "actors": actors,
            "aud": audiences,
            "scope": scope,
            "ttl_seconds": ttl.whole_seconds(),
            "kid": kid,
        }),
    );
    svc.store
        .record_delegated(&g.id, cred, rec)
        .await
        .map_err(|e| match e {
            credence_store::StoreError::Conflict(m) => grant_err(m),
            other => OAuthError::server(&other.into()),
        })?;
    let mut out = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ttl.whole_seconds(),
        "issued_token_type": TT_ACCESS_TOKEN,
    });
    if let Some(s) = scope {
        out["scope"] = json!(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn form_bodies() {
        let h = ct("application/x-www-form-urlencoded; charset=utf-8");
        let f = form(&h, b"grant_type=client_credentials&scope=a%3Aread+b").unwrap();
        assert_eq!(f.get("grant_type").unwrap(), "client_credentials");
        assert_eq!(f.get("scope").unwrap(), "a:read b");
        let e = form(&h, b"scope=a&scope=b").unwrap_err();
        assert!(e.description.contains("repeated"), "{e:?}");
        let f = form(&h, b"resource=https%3A%2F%2Fa&resource=https%3A%2F%2Fb").unwrap();
        assert_eq!(f.all("resource"), ["https://a", "https://b"]);
        let e = form(&ct("application/json"), b"{}").unwrap_err();
        assert!(e.description.contains("x-www-form-urlencoded"), "{e:?}");
        let e = form(&h, &vec![b'a'; MAX_FORM + 1]).unwrap_err();
        assert!(e.description.contains("larger than"), "{e:?}");
        assert_eq!(
            required(&f, "nope").unwrap_err().description,
            "missing parameter nope"
        );
    }

    #[test]
    fn audiences_scopes_and_lifetimes() {
        let ep = Endpoints {
            issuer: "https://c.example".into(),
            token: "https://c.example/oauth2/token".into(),
        };
        assert_eq!(
            audiences(&Form::default(), &ep).unwrap(),
            ["https://c.example"]
        );
        // RFC 8707 and RFC 8693: several targets, each its own parameter
        let f = Form::of(&[
            ("resource", "https://api.example"),
            ("resource", "spiffe://example.org/db"),
            ("audience", "b"),
            ("audience", "a"),
        ]);
        assert_eq!(
            audiences(&f, &ep).unwrap(),
            ["a", "b", "https://api.example", "spiffe://example.org/db"]
        );
        for bad in ["api", "https://api.example/#x", "https://a b"] {
            let e = audiences(&Form::of(&[("resource", bad)]), &ep).unwrap_err();
            assert_eq!(e.error, "invalid_target", "{bad}");
        }
        assert_eq!(ttl(&Form::default()).unwrap(), DEFAULT_TTL);
        let f = Form::of(&[("expires_in", "999999")]);
        assert_eq!(ttl(&f).unwrap(), MAX_TTL);
        let f = Form::of(&[("expires_in", "-1")]);
        assert!(ttl(&f).is_err());
        let f = Form::of(&[("scope", "ok bad\\scope")]);
        assert_eq!(scopes(&f).unwrap_err().error, "invalid_scope");
    }
}
