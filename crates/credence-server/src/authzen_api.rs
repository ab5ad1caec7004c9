//! The OpenID AuthZEN 1.0 PDP endpoints and the policy admin API.
//!
//! AuthZEN asks for conventions of its own, so its routes do not use the
//! admin API's strict JSON extractor: a wrong content type, malformed JSON
//! or a missing required field is a 400, unknown fields are ignored, and the
//! `X-Request-ID` of a request is echoed on its response. A deny is a 200
//! with `{"decision": false}`. Callers authenticate with an admin token or
//! a JWT-SVID whose audience is this PDP.
//!
//! A subject or resource of type `Credence::Identity` whose id is a
//! registered SPIFFE ID is described from the registry (kind, owner,
//! labels as tags, scopes, ...), whatever the request's properties say.
//!
//! Decisions are audited: every deny, and one allow in
//! [`ALLOW_SAMPLE`]; the record names the question, the deciding policies
//! and any errors. The audit append does not delay the answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRef, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use credence_policy::authzen::{self, Evaluated};
use credence_policy::{EntityData, EntityRef};

use crate::ServerError;
use crate::api::{ApiJson, ApiPath, AppState, Caller};
use crate::policies::NewPolicySet;
use crate::service::{Actor, Service, audit};

/// By default one allow in this many is audited (every deny is).
pub const ALLOW_SAMPLE: u64 = 100;
/// Largest AuthZEN request body.
pub const MAX_AUTHZEN_BODY: usize = 1024 * 1024;
/// Most items of one `evaluations` request.
pub const MAX_EVALUATIONS: usize = 1000;
/// Largest question recorded with a decision (JSON bytes).
pub const MAX_RECORDED_REQUEST: usize = 4096;
/// Largest policy set or entities upload.
pub const MAX_POLICY_BODY: usize = 16 * 1024 * 1024;

static ALLOWS: AtomicU64 = AtomicU64::new(0);

/// Whether this allow is one of the sampled (one in `one_in`; 0: none).
fn sampled(one_in: u64) -> bool {
    one_in != 0
        && ALLOWS
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(one_in)
}

/// Routes under `/v1/policies` (admin).
pub fn admin_routes() -> Router<AppState> {
    Router::new()
        .route("/policies", post(create_policy_set).get(list_policy_sets))
        .route("/policies/validate", post(validate_policy_set))
        .route("/policies/diff", post(diff_policy_sets))
        .route("/policies/entities", get(show_entities).put(put_entities))
        .route("/policies/{version}", get(show_policy_set))
        .route("/policies/{version}/activate", post(activate_policy_set))
        .layer(DefaultBodyLimit::max(MAX_POLICY_BODY))
}

/// `/access/v1/*`; the caller's middleware authenticates and puts the
/// [`Actor`] in the request's extensions.
pub fn pdp_routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Service>: FromRef<S>,
{
    Router::new()
        .route("/access/v1/evaluation", post(evaluation))
        .route("/access/v1/evaluations", post(evaluations))
        .layer(DefaultBodyLimit::max(MAX_AUTHZEN_BODY))
}

pub async fn configuration(State(st): State<AppState>) -> Json<Value> {
    let base = st.base_url.trim_end_matches('/');
    Json(json!({
        "policy_decision_point": base,
        "access_evaluation_endpoint": format!("{base}/access/v1/evaluation"),
        "access_evaluations_endpoint": format!("{base}/access/v1/evaluations"),
    }))
}

fn summary(p: &crate::policies::PolicySetSummary) -> Value {
    json!(p)
}

async fn create_policy_set(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiJson(req): ApiJson<NewPolicySet>,
) -> Result<(StatusCode, Json<Value>), ServerError> {
    let rec = st.svc.create_policy_set(&caller, req).await?;
    Ok((StatusCode::CREATED, Json(summary(&(&rec).into()))))
}

async fn list_policy_sets(State(st): State<AppState>) -> Result<Json<Value>, ServerError> {
    let items: Vec<Value> = st
        .svc
        .list_policy_sets()
        .await?
        .iter()
        .map(|r| summary(&r.into()))
        .collect();
    Ok(Json(json!({ "items": items })))
}

fn version(s: &str) -> Result<u64, ServerError> {
    s.parse()
        .map_err(|_| ServerError::bad("invalid_version", format!("{s:?} is not a version number")))
}

async fn show_policy_set(
    State(st): State<AppState>,
    ApiPath(v): ApiPath,
) -> Result<Json<Value>, ServerError> {
    let rec = st.svc.get_policy_set(version(&v)?).await?;
    let mut out = summary(&(&rec).into());
    out["schema"] = json!(rec.schema);
    out["policies"] = json!(rec.policies);
    Ok(Json(out))
}

async fn activate_policy_set(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiPath(v): ApiPath,
) -> Result<Json<Value>, ServerError> {
    let rec = st.svc.activate_policy_set(&caller, version(&v)?).await?;
    Ok(Json(summary(&(&rec).into())))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidateRequest {
    schema: String,
    policies: String,
}

async fn validate_policy_set(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<ValidateRequest>,
) -> Result<Json<Value>, ServerError> {
    let ids = st.svc.validate_policy_set(&req.schema, &req.policies)?;
    Ok(Json(json!({"valid": true, "policies": ids})))
}

async fn show_entities(State(st): State<AppState>) -> Result<Json<Value>, ServerError> {
    Ok(Json(st.svc.policy_entities().await?))
}

async fn put_entities(
    State(st): State<AppState>,
    Caller(caller): Caller,
    ApiJson(entities): ApiJson<Value>,
) -> Result<Json<Value>, ServerError> {
    let n = st.svc.set_policy_entities(&caller, &entities).await?;
    Ok(Json(json!({ "entities": n })))
}

// ---- AuthZEN ----

/// An AuthZEN error: 400 with a JSON body, the request id echoed.
fn fail(status: StatusCode, message: String, rid: &Option<HeaderValue>) -> Response {
    let mut r = (
        status,
        Json(json!({"error": "invalid_request", "message": message})),
    )
        .into_response();
    if let Some(id) = rid {
        r.headers_mut().insert("x-request-id", id.clone());
    }
    r
}

fn parse(headers: &HeaderMap, body: &Bytes) -> Result<Value, String> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(format!(
            "expected Content-Type application/json, got {:?}",
            if ct.is_empty() { "none" } else { ct }
        ));
    }
    if body.is_empty() {
        return Err("the request body is empty".into());
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

fn record_decisions(svc: &Arc<Service>, actor: Actor, items: &[Evaluated]) {
    let svc = svc.clone();
    let one_in = svc.decision_audit_allows();
    let mut records = Vec::new();
    for ev in items {
        if ev.decision.allow && !sampled(one_in) {
            continue;
        }
        let (subject, action, resource) = match &ev.query {
            Some(q) => (
                q.principal
                    .as_ref()
                    .map(|e| format!("{}::{:?}", e.kind, e.id)),
                q.action.as_ref().map(|e| e.id.clone()),
                q.resource
                    .as_ref()
                    .map(|e| format!("{}::{:?}", e.kind, e.id)),
            ),
            None => (None, None, None),
        };
        let mut rec = audit(
            &actor,
            svc.clock.now(),
            "authz.decision",
            resource.as_deref().unwrap_or(""),
            json!({
                "decision": ev.decision.allow,
                "subject": subject,
                "action": action,
                "resource": resource,
                "errors": ev.decision.errors,
                "sampled": ev.decision.allow,
                "sample_one_in": if ev.decision.allow { Some(one_in) } else { None },
            }),
        );
        // the question itself, so `policy diff` can replay it (bounded: an
        // audit leaf stays small)
        if let Some(q) = &ev.query {
            let request = authzen::request_of(q);
            if request.to_string().len() <= MAX_RECORDED_REQUEST {
                rec.details.insert("request".into(), request);
            }
        }
        rec.policies = ev.decision.policies.clone();
        if !ev.decision.allow {
            rec.outcome = credence_store::Outcome::Failure;
        }
        records.push(rec);
    }
    for rec in records {
        svc.decision_log.push(rec);
    }
}

/// Most decision records waiting for the audit log; beyond this they are
/// counted, and the count is recorded instead.
const DECISION_QUEUE: usize = 65_536;
/// Most decision records appended in one transaction.
const DECISION_BATCH: usize = 1000;
/// How long the first record of a batch waits for more. A transaction's
/// cost is mostly per commit, not per record, so under load a short wait
/// turns many small commits into a few large ones; records are off the
/// request path, so nobody waits for them (a flush does not linger).
const DECISION_LINGER: std::time::Duration = std::time::Duration::from_millis(20);

/// Decision records on their way to the audit log: queued by requests,
/// appended in batches by one task, so a burst of denies costs a few
/// transactions rather than one each, and never delays an answer.
pub struct DecisionLog {
    tx: tokio::sync::mpsc::Sender<Queued>,
    dropped: Arc<AtomicU64>,
}

enum Queued {
    Record(Box<credence_store::AuditRecord>),
    /// Answered once everything queued before it is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl DecisionLog {
    pub(crate) fn start(
        store: Arc<dyn credence_store::Store>,
        clock: Arc<dyn credence_core::Clock>,
    ) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel(DECISION_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = Vec::new();
                let mut flushed = Vec::new();
                let until = tokio::time::Instant::now() + DECISION_LINGER;
                let mut next = Some(first);
                while let Some(q) = next.take() {
                    match q {
                        Queued::Record(r) => batch.push(*r),
                        Queued::Flush(done) => flushed.push(done),
                    }
                    if batch.len() >= DECISION_BATCH {
                        break;
                    }
                    next = match rx.try_recv() {
                        Ok(q) => Some(q),
                        Err(_) if !flushed.is_empty() => None,
                        Err(_) => tokio::time::timeout_at(until, rx.recv())
                            .await
                            .ok()
                            .flatten(),
                    };
                }
                let n = lost.swap(0, Ordering::Relaxed);
                if n > 0 {
                    let mut rec = audit(
                        &Actor::internal("pdp"),
                        clock.now(),
                        "authz.decision.dropped",
                        "pdp",
                        json!({"count": n}),
                    );
                    rec.outcome = credence_store::Outcome::Failure;
                    batch.push(rec);
                }
                if !batch.is_empty()
                    && let Err(e) = store.append_audit_batch(batch).await
                {
                    tracing::error!(error = %e, "cannot record authorization decisions");
                }
                for done in flushed {
                    let _ = done.send(());
                }
            }
        });
        Self { tx, dropped }
    }

    fn push(&self, rec: credence_store::AuditRecord) {
        if self.tx.try_send(Queued::Record(Box::new(rec))).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until every record queued so far is written (at shutdown).
    pub async fn flush(&self) {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.tx.send(Queued::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }
}

/// Subjects and resources of type `Credence::Identity` that are registered
/// identities, described from the registry (their properties in the
/// request are ignored: a caller cannot claim attributes for them).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffRequest {
    from: u64,
    to: u64,
    /// How many recently recorded questions to replay (default 1000).
    #[serde(default)]
    sample: Option<u32>,
    /// More questions to replay (AuthZEN evaluation requests).
    #[serde(default)]
    requests: Vec<Value>,
}

/// Most recorded questions `policy diff` replays.
const MAX_DIFF_SAMPLE: u32 = 10_000;
/// How far back in the audit log `policy diff` looks for recorded questions.
const DIFF_LOOKBACK: u64 = 200_000;

/// Replays questions against two versions and lists those whose outcome
/// differs: the recorded ones (the newest decisions in the audit log) and
/// any given.
async fn diff_policy_sets(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<DiffRequest>,
) -> Result<Json<Value>, ServerError> {
    let sample = req.sample.unwrap_or(1000).min(MAX_DIFF_SAMPLE) as usize;
    let (from, to) = (
        st.svc.pdp_of_version(req.from).await?,
        st.svc.pdp_of_version(req.to).await?,
    );
    // the newest recorded questions, newest first
    let head = st.svc.store.audit_count().await?;
    let filter = credence_store::AuditFilter {
        action: Some("authz.decision".into()),
        ..Default::default()
    };
    let mut after = head.checked_sub(DIFF_LOOKBACK).map(|a| a.saturating_sub(1));
    let mut recorded: std::collections::VecDeque<Value> = std::collections::VecDeque::new();
    loop {
        let page = st.svc.store.search_audit(&filter, after, 1000).await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        for (_, rec) in page {
            if let Some(r) = rec.details.get("request") {
                recorded.push_back(r.clone());
                if recorded.len() > sample {
                    recorded.pop_front();
                }
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    let questions: Vec<Value> = req
        .requests
        .into_iter()
        .chain(recorded.into_iter().rev())
        .filter(|q| seen.insert(q.to_string()))
        .collect();
    let mut changed = Vec::new();
    let mut invalid = 0usize;
    for q in &questions {
        let a = replay(&st.svc, &from, q).await;
        let b = replay(&st.svc, &to, q).await;
        match (a, b) {
            (Some(a), Some(b)) if a.allow != b.allow => changed.push(json!({
                "request": q,
                "from": {"decision": a.allow, "policies": a.policies, "errors": a.errors},
                "to": {"decision": b.allow, "policies": b.policies, "errors": b.errors},
            })),
            (Some(_), Some(_)) => {}
            _ => invalid += 1,
        }
    }
    Ok(Json(json!({
        "from": req.from,
        "to": req.to,
        "compared": questions.len() - invalid,
        "invalid": invalid,
        "changed": changed,
    })))
}

/// One question against one version (`None`: not a valid question).
async fn replay(
    svc: &Service,
    pdp: &crate::policies::Pdp,
    q: &Value,
) -> Option<credence_policy::Decision> {
    let registry = registry_entities(svc, &pdp.mapping, q).await;
    authzen::evaluation_with(&pdp.engine, &pdp.mapping, q, &registry)
        .ok()
        .and_then(|o| o.items.into_iter().next())
        .map(|e| e.decision)
}

async fn registry_entities(
    svc: &Service,
    map: &authzen::Mapping,
    body: &Value,
) -> HashMap<EntityRef, EntityData> {
    let mut out = HashMap::new();
    for r in authzen::referenced(map, body, "Credence::Delegation") {
        if let Some(d) = svc.delegation_entity(&r.id).await {
            out.insert(r, d);
        }
    }
    for r in authzen::referenced(map, body, "Credence::Identity") {
        let Ok(id) = credence_core::SpiffeId::parse(&r.id) else {
            continue;
        };
        if let Ok(identity) = svc.identity_for(&id).await {
            out.insert(r, crate::authz::identity_entity(&identity));
        }
    }
    out
}

async fn run(svc: Arc<Service>, mut req: Request, batch: bool) -> Response {
    let rid = req.headers().get("x-request-id").cloned();
    let Some(actor) = req.extensions_mut().remove::<Actor>() else {
        // a router without an authenticating middleware: fail closed
        return ServerError::Unauthorized.into_response();
    };
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let body = match axum::body::to_bytes(body, MAX_AUTHZEN_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {MAX_AUTHZEN_BODY} bytes"),
                &rid,
            );
        }
    };
    let value = match parse(&headers, &body) {
        Ok(v) => v,
        Err(m) => return fail(StatusCode::BAD_REQUEST, m, &rid),
    };
    // without an active policy set the PDP still checks requests, and
    // denies every well-formed question
    let pdp = svc.pdp_or_builtin();
    let registry = registry_entities(&svc, &pdp.mapping, &value).await;
    let outcome = if batch {
        authzen::evaluations_with(
            &pdp.engine,
            &pdp.mapping,
            &value,
            MAX_EVALUATIONS,
            &registry,
        )
    } else {
        authzen::evaluation_owned(&pdp.engine, &pdp.mapping, value, &registry)
    };
    match outcome {
        Ok(o) => {
            record_decisions(&svc, actor, &o.items);
            let mut r = Json(o.body).into_response();
            if let Some(id) = &rid {
                r.headers_mut().insert("x-request-id", id.clone());
            }
            r
        }
        Err(e) => fail(StatusCode::BAD_REQUEST, e.to_string(), &rid),
    }
}

async fn evaluation(State(svc): State<Arc<Service>>, req: Request) -> Response {
    run(svc, req, false).await
}

async fn evaluations(State(svc): State<Arc<Service>>, req: Request) -> Response {
    run(svc, req, true).await
}
