//! The control plane's operations, independent of HTTP: identity registry,
//! issuance, revocation and the CRL. HTTP handlers and in-process callers
//! (the benchmark, the dev agent) go through the same code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use serde_json::json;
use time::{Duration, OffsetDateTime};

use credence_ca::x509::{CheckedCsr, CrlEntry, LeafKey, certs_to_pem};
use credence_ca::{Audience, JwtSvidClaims, KeyWrapper, SoftwareKey, sha256};
use credence_core::{
    Clock, Identity, IdentityId, IdentityStatus, NodeId, Random, RevocationReason, Scope, Serial,
    SpiffeId,
};
use credence_store::{
    AuditRecord, CredentialKind, IdentityFilter, IssuedCredential, Page, RevokedEntry, Store,
};

use crate::ServerError;
use crate::authority::{self, Authority, CaLifetimes};
use crate::authz::{AdminAction, IssueRequest, Target};

/// Lifetimes of issued credentials.
#[derive(Clone, Debug)]
pub struct IssuancePolicy {
    pub x509_default_ttl: Duration,
    pub x509_max_ttl: Duration,
    pub jwt_default_ttl: Duration,
    pub jwt_max_ttl: Duration,
    /// How far `notBefore` is backdated to tolerate clock skew.
    pub backdate: Duration,
    /// Lifetime of a CRL (`nextUpdate - thisUpdate`).
    pub crl_lifetime: Duration,
    /// Lifetime of a node agent's own X509-SVID (renewed at half-life).
    pub agent_svid_ttl: Duration,
}

impl Default for IssuancePolicy {
    fn default() -> Self {
        Self {
            x509_default_ttl: Duration::hours(1),
            x509_max_ttl: Duration::hours(24),
            jwt_default_ttl: Duration::minutes(5),
            jwt_max_ttl: Duration::hours(1),
            backdate: Duration::seconds(10),
            crl_lifetime: Duration::hours(1),
            agent_svid_ttl: Duration::hours(1),
        }
    }
}

/// Who is asking: recorded in every audit record.
#[derive(Clone, Debug)]
pub struct Actor {
    /// The authenticated principal (`admin`, a SPIFFE ID, `system`).
    pub name: String,
    /// How it authenticated (`admin_token`, `x509_svid`, `internal`).
    pub method: &'static str,
    /// The request's id (`x-request-id`, or generated).
    pub request_id: Option<String>,
    /// The peer address of the connection.
    pub client_addr: Option<String>,
    /// What it may do is decided for this principal.
    pub principal: crate::authz::Principal,
}

impl Actor {
    /// The root administrator (the configured admin token).
    pub fn admin() -> Self {
        Self {
            name: "admin".into(),
            method: "admin_token",
            request_id: None,
            client_addr: None,
            principal: crate::authz::Principal::Admin(std::sync::Arc::new(
                crate::authz::AdminPrincipal::root(),
            )),
        }
    }

    /// Credence itself, in process.
    pub fn internal(name: &str) -> Self {
        Self {
            name: name.into(),
            method: "internal",
            request_id: None,
            client_addr: None,
            principal: crate::authz::Principal::Internal,
        }
    }
}

/// An issued X509-SVID, ready to hand out.
#[derive(Clone, Debug, Serialize)]
pub struct X509Svid {
    pub spiffe_id: SpiffeId,
    pub serial: Serial,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Leaf first, then the intermediate.
    pub chain_pem: String,
    pub bundle_pem: String,
    #[serde(skip)]
    pub leaf_der: Vec<u8>,
}

#[derive(Clone, Debug, Serialize)]
pub struct JwtSvid {
    pub spiffe_id: SpiffeId,
    pub token: String,
    pub jti: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

struct CachedCrl {
    issuer: String,
    der: Arc<Vec<u8>>,
    this_update: OffsetDateTime,
    next_update: OffsetDateTime,
}

/// Everything the control plane needs, shared across requests.
pub struct Service {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub rng: Arc<dyn Random>,
    pub policy: IssuancePolicy,
    pub lifetimes: CaLifetimes,
    /// Issuer URL written into JWT `iss` and OIDC discovery.
    pub issuer_url: Option<String>,
    wrapper: KeyWrapper,
    authority: RwLock<Arc<Authority>>,
    /// The audit log's key and checkpoint signer.
    pub audit_log: crate::audit_log::AuditLog,
    /// Write-through cache of identities by SPIFFE ID, for the issuance hot path.
    identities: RwLock<HashMap<SpiffeId, Arc<Identity>>>,
    crl: Mutex<Option<CachedCrl>>,
    /// Bumped after every committed identity change, revocation and CA
    /// rotation, so agents can refresh at once instead of polling.
    changes: tokio::sync::watch::Sender<u64>,
    /// The active policy set, compiled, with the entity store; `None`
    /// until one is activated (every PDP question is then denied).
    pub(crate) pdp: RwLock<Option<Arc<crate::policies::Pdp>>>,
    /// One PDP allow in this many is audited (0: none); denies always are.
    decision_audit_allows: std::sync::atomic::AtomicU64,
    /// Decision records on their way to the audit log, written in batches
    /// off the request path.
    pub(crate) decision_log: crate::authzen_api::DecisionLog,
    /// Foreign bundles of federation relationships, checked.
    pub(crate) federated: crate::federation::Cache,
    /// External OIDC issuers whose tokens trust rules may exchange.
    pub(crate) external_issuers: RwLock<Arc<crate::oidc::Issuers>>,
    /// Ids for requests that bring none (see [`Service::next_request_id`]).
    request_ids: RequestIds,
}

/// Request ids: a random prefix drawn once, then a counter. They correlate
/// log lines and audit records, so they need to be unique, not secret; a
/// fresh random id per request cost more than the rest of authenticating it.
struct RequestIds {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

/// Who an X509-SVID or JWT-SVID is for, once it may be issued.
pub(crate) struct Subject<'a> {
    /// The registered identity (`None` for Credence's own components,
    /// which the issuance policy does not govern).
    pub identity: Option<&'a Identity>,
    pub identity_id: &'a IdentityId,
    pub spiffe_id: &'a SpiffeId,
    pub max_ttl_seconds: Option<u32>,
    /// The node whose agent asked (evicting it revokes the credential).
    pub node: Option<&'a NodeId>,
}

impl<'a> Subject<'a> {
    pub(crate) fn of(identity: &'a Identity, node: Option<&'a NodeId>) -> Self {
        Self {
            identity: Some(identity),
            identity_id: &identity.id,
            spiffe_id: &identity.spiffe_id,
            max_ttl_seconds: identity.max_ttl_seconds,
            node,
        }
    }
}

pub(crate) fn audit(
    actor: &Actor,
    now: OffsetDateTime,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> AuditRecord {
    let mut ev = AuditRecord::new(
        now,
        credence_store::AuditActor {
            id: actor.name.clone(),
            auth: actor.method.to_owned(),
        },
        action,
        target,
        credence_store::Outcome::Success,
    );
    ev.request_id = actor.request_id.clone();
    ev.client_addr = actor.client_addr.clone();
    if let serde_json::Value::Object(m) = detail {
        ev.details = m;
    }
    ev
}

impl Service {
    /// Loads or creates the CA and returns a ready service.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        store: Arc<dyn Store>,
        kek: &[u8],
        trust_domain: &credence_core::TrustDomain,
        lifetimes: CaLifetimes,
        policy: IssuancePolicy,
        issuer_url: Option<String>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Random>,
    ) -> Result<Self, ServerError> {
        let wrapper = KeyWrapper::new(kek)?;
        let auth = authority::load_or_create(
            store.as_ref(),
            &wrapper,
            trust_domain,
            &lifetimes,
            clock.as_ref(),
            rng.as_ref(),
        )
        .await?;
        let audit_log = crate::audit_log::AuditLog::load_or_create(
            store.as_ref(),
            &wrapper,
            trust_domain,
            clock.as_ref(),
        )
        .await?;
        let (store_for_log, clock_for_log) = (store.clone(), clock.clone());
        let request_prefix = hex::encode(&rng.bytes16()[..6]);
        Ok(Self {
            audit_log,
            store,
            clock,
            rng,
            policy,
            lifetimes,
            issuer_url,
            wrapper,
            authority: RwLock::new(Arc::new(auth)),
            identities: RwLock::new(HashMap::new()),
            crl: Mutex::new(None),
            changes: tokio::sync::watch::channel(0).0,
            pdp: RwLock::new(None),
            decision_audit_allows: std::sync::atomic::AtomicU64::new(
                crate::authzen_api::ALLOW_SAMPLE,
            ),
            decision_log: crate::authzen_api::DecisionLog::start(store_for_log, clock_for_log),
            federated: crate::federation::Cache::default(),
            external_issuers: RwLock::new(Arc::new(crate::oidc::Issuers::default())),
            request_ids: RequestIds {
                prefix: request_prefix,
                next: std::sync::atomic::AtomicU64::new(0),
            },
        })
    }

    /// A new request id: 12 hex digits fixed for this process, then a
    /// counter (unique across restarts with overwhelming probability).
    pub(crate) fn next_request_id(&self) -> String {
        let n = self
            .request_ids
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}{n:08x}", self.request_ids.prefix)
    }

    /// Audits one PDP allow in `one_in` (0: none, 1: all); every deny is
    /// audited regardless.
    pub fn set_decision_audit_allows(&self, one_in: u64) {
        self.decision_audit_allows
            .store(one_in, std::sync::atomic::Ordering::Relaxed);
    }

    /// The external OIDC issuers whose tokens may be exchanged (each
    /// checked; a bad one refuses the whole list).
    pub fn set_external_issuers(
        &self,
        list: Vec<crate::oidc::ExternalIssuer>,
    ) -> Result<(), ServerError> {
        let issuers = crate::oidc::Issuers::new(list)
            .map_err(|e| ServerError::bad("invalid_config", e.to_string()))?;
        if let Ok(mut i) = self.external_issuers.write() {
            *i = Arc::new(issuers);
        }
        Ok(())
    }

    pub(crate) fn external_issuers(&self) -> Arc<crate::oidc::Issuers> {
        match self.external_issuers.read() {
            Ok(i) => i.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn decision_audit_allows(&self) -> u64 {
        self.decision_audit_allows
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A receiver that changes after every identity change, revocation and
    /// CA rotation.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(crate) fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn authority(&self) -> Arc<Authority> {
        match self.authority.read() {
            Ok(a) => a.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn trust_domain(&self) -> credence_core::TrustDomain {
        self.authority().trust_domain.clone()
    }

    /// Replaces the active intermediate with a new one.
    pub async fn rotate_intermediate(&self, actor: &Actor) -> Result<String, ServerError> {
        let now = self.clock.now();
        let cur = self.authority();
        let (id, _) = authority::new_intermediate(
            self.store.as_ref(),
            &self.wrapper,
            &cur.trust_domain,
            &cur.root,
            &self.lifetimes,
            now,
            self.rng.as_ref(),
        )
        .await?;
        self.store
            .set_ca_active(
                &cur.intermediate_id,
                false,
                audit(
                    actor,
                    now,
                    "ca.rotate",
                    &cur.intermediate_id,
                    json!({"replaced_by": id}),
                ),
            )
            .await?;
        // Rebuild from storage so the old intermediate lands among the retired.
        self.reload_authority().await?;
        if let Ok(mut c) = self.crl.lock() {
            *c = None;
        }
        self.changed();
        Ok(id)
    }

    /// Loads the CA material again from storage and serves it from now on.
    async fn reload_authority(&self) -> Result<(), ServerError> {
        let fresh = authority::load_or_create(
            self.store.as_ref(),
            &self.wrapper,
            &self.trust_domain(),
            &self.lifetimes,
            self.clock.as_ref(),
            self.rng.as_ref(),
        )
        .await?;
        if let Ok(mut a) = self.authority.write() {
            *a = Arc::new(fresh);
        }
        Ok(())
    }

    /// Rotates the JWT signing key without a validation failure anywhere:
    /// the new key is published at once (JWKS, bundle, agents) and signs
    /// only after `overlap`, so relying parties that cache the JWKS have
    /// fetched it before meeting a token it signed; the old key stays
    /// published until its last tokens have expired.
    pub async fn rotate_jwt_key(
        &self,
        actor: &Actor,
        overlap: Duration,
    ) -> Result<String, ServerError> {
        if overlap < Duration::ZERO || overlap > Duration::days(7) {
            return Err(ServerError::bad(
                "invalid_overlap",
                "overlap must be between 0 and 7 days",
            ));
        }
        let now = self.clock.now();
        let cur = self.authority();
        let previous = cur.jwt_signer(now)?.kid().to_owned();
        let key = authority::new_jwt_key(
            self.store.as_ref(),
            &self.wrapper,
            &self.lifetimes,
            now,
            now + overlap,
            |id, mut detail| {
                detail["replaces"] = json!(previous);
                audit(actor, now, "ca.rotate", id, detail)
            },
        )
        .await?;
        let kid = key.signer.kid().to_owned();
        self.reload_authority().await?;
        self.changed();
        Ok(kid)
    }

    // ---- identity registry ----

    fn cache_put(&self, id: &Identity) {
        if let Ok(mut m) = self.identities.write() {
            m.insert(id.spiffe_id.clone(), Arc::new(id.clone()));
        }
    }

    fn cache_drop(&self, spiffe_id: &SpiffeId) {
        if let Ok(mut m) = self.identities.write() {
            m.remove(spiffe_id);
        }
    }

    /// Looks up an identity by SPIFFE ID through the cache.
    pub async fn identity_for(&self, spiffe_id: &SpiffeId) -> Result<Arc<Identity>, ServerError> {
        if let Some(hit) = self
            .identities
            .read()
            .ok()
            .and_then(|m| m.get(spiffe_id).cloned())
        {
            return Ok(hit);
        }
        let found = self
            .store
            .get_identity_by_spiffe_id(spiffe_id)
            .await?
            .ok_or_else(|| {
                ServerError::NotFound(format!("no identity registered for {spiffe_id}"))
            })?;
        let found = Arc::new(found);
        if let Ok(mut m) = self.identities.write() {
            m.insert(spiffe_id.clone(), found.clone());
        }
        Ok(found)
    }

    pub async fn create_identity(
        &self,
        actor: &Actor,
        new: NewIdentity,
    ) -> Result<Identity, ServerError> {
        let td = self.trust_domain();
        if !new.spiffe_id.is_member_of(&td) {
            return Err(ServerError::bad(
                "wrong_trust_domain",
                format!(
                    "{} is not in this server's trust domain {td}",
                    new.spiffe_id
                ),
            ));
        }
        if new.spiffe_id.path().is_empty() {
            return Err(ServerError::bad(
                "invalid_spiffe_id",
                "an identity's SPIFFE ID needs a path (the bare trust domain ID names the domain itself)",
            ));
        }
        if new.spiffe_id.path().starts_with("/credence/") {
            return Err(ServerError::bad(
                "reserved_spiffe_id",
                "SPIFFE ID paths under /credence/ are reserved for Credence's own components",
            ));
        }
        check_ttl(new.max_ttl_seconds)?;
        let now = self.clock.now();
        let identity = Identity {
            id: IdentityId::from_random(self.rng.bytes16()),
            spiffe_id: new.spiffe_id,
            kind: new.kind,
            owner: new.owner,
            description: new.description.unwrap_or_default(),
            labels: new.labels.unwrap_or_default(),
            selectors: new.selectors.unwrap_or_default(),
            nodes: new.nodes.unwrap_or_default(),
            scopes: check_scopes(new.scopes.unwrap_or_default())?,
            federates_with: self.check_federates_with(new.federates_with.unwrap_or_default())?,
            max_ttl_seconds: new.max_ttl_seconds,
            status: IdentityStatus::Active,
            created_at: now,
            updated_at: now,
            last_issued_at: None,
        };
        check_description(&identity.description)?;
        self.authorize_admin(
            actor,
            AdminAction::CreateIdentity,
            Target::Identity(&identity),
        )
        .await?;
        self.store
            .create_identity(
                &identity,
                audit(
                    actor,
                    now,
                    "identity.create",
                    identity.spiffe_id.as_str(),
                    json!({"id": identity.id, "kind": identity.kind, "owner": identity.owner}),
                ),
            )
            .await?;
        self.cache_put(&identity);
        self.changed();
        Ok(identity)
    }

    pub async fn get_identity(&self, key: &IdentityKey) -> Result<Identity, ServerError> {
        let found = match key {
            IdentityKey::Id(id) => self.store.get_identity(id).await?,
            IdentityKey::SpiffeId(s) => self.store.get_identity_by_spiffe_id(s).await?,
        };
        found.ok_or_else(|| ServerError::NotFound(format!("identity {key} not found")))
    }

    pub async fn list_identities(
        &self,
        filter: &IdentityFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Identity>, ServerError> {
        Ok(self.store.list_identities(filter, cursor, limit).await?)
    }

    /// An identity, if `actor` may read it.
    pub async fn show_identity(
        &self,
        actor: &Actor,
        key: &IdentityKey,
    ) -> Result<Identity, ServerError> {
        let identity = self.get_identity(key).await?;
        self.authorize_admin(
            actor,
            AdminAction::ReadIdentity,
            Target::Identity(&identity),
        )
        .await?;
        Ok(identity)
    }

    /// A page of identities without those `actor` may not read (a page
    /// can come back shorter than `limit`; follow `next_cursor`).
    pub async fn list_identities_for(
        &self,
        actor: &Actor,
        filter: &IdentityFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Identity>, ServerError> {
        let mut page = self.store.list_identities(filter, cursor, limit).await?;
        page.items.retain(|i| self.may_read(actor, i));
        Ok(page)
    }

    pub async fn update_identity(
        &self,
        actor: &Actor,
        key: &IdentityKey,
        change: IdentityUpdate,
    ) -> Result<Identity, ServerError> {
        let mut identity = self.get_identity(key).await?;
        let before = identity.clone();
        let what = match change.status {
            Some(IdentityStatus::Disabled) if before.status != IdentityStatus::Disabled => {
                AdminAction::DisableIdentity
            }
            Some(IdentityStatus::Active) if before.status != IdentityStatus::Active => {
                AdminAction::EnableIdentity
            }
            _ => AdminAction::UpdateIdentity,
        };
        self.authorize_admin(actor, what, Target::Identity(&before))
            .await?;
        let mut changed = Vec::new();
        if let Some(k) = change.kind {
            identity.kind = k;
            changed.push("kind");
        }
        if let Some(o) = change.owner {
            identity.owner = o;
            changed.push("owner");
        }
        if let Some(d) = change.description {
            check_description(&d)?;
            identity.description = d;
            changed.push("description");
        }
        if let Some(l) = change.labels {
            identity.labels = l;
            changed.push("labels");
        }
        if let Some(s) = change.selectors {
            identity.selectors = s;
            changed.push("selectors");
        }
        if let Some(n) = change.nodes {
            identity.nodes = n;
            changed.push("nodes");
        }
        if let Some(sc) = change.scopes {
            identity.scopes = check_scopes(sc)?;
            changed.push("scopes");
        }
        if let Some(f) = change.federates_with {
            identity.federates_with = self.check_federates_with(f)?;
            changed.push("federates_with");
        }
        if let Some(t) = change.max_ttl_seconds {
            check_ttl(t)?;
            identity.max_ttl_seconds = t;
            changed.push("max_ttl_seconds");
        }
        if let Some(st) = change.status {
            identity.status = st;
            changed.push("status");
        }
        let action = match change.status {
            Some(IdentityStatus::Disabled) if before.status != IdentityStatus::Disabled => {
                "identity.disable"
            }
            Some(IdentityStatus::Active) if before.status != IdentityStatus::Active => {
                "identity.enable"
            }
            _ => "identity.update",
        };
        // and after: nobody moves an identity out of their own reach
        if identity != before {
            self.authorize_admin(actor, what, Target::Identity(&identity))
                .await?;
        }
        let now = self.clock.now();
        identity.updated_at = now;
        self.store
            .update_identity(
                &identity,
                audit(
                    actor,
                    now,
                    action,
                    identity.spiffe_id.as_str(),
                    json!({"id": identity.id, "changed": changed}),
                ),
            )
            .await?;
        self.cache_put(&identity);
        self.changed();
        Ok(identity)
    }

    pub async fn delete_identity(
        &self,
        actor: &Actor,
        key: &IdentityKey,
    ) -> Result<(), ServerError> {
        let identity = self.get_identity(key).await?;
        self.authorize_admin(
            actor,
            AdminAction::DeleteIdentity,
            Target::Identity(&identity),
        )
        .await?;
        let now = self.clock.now();
        // Drop from the cache first: a concurrent issuance must not see it.
        self.cache_drop(&identity.spiffe_id);
        self.store
            .delete_identity(
                &identity.id,
                audit(
                    actor,
                    now,
                    "identity.delete",
                    identity.spiffe_id.as_str(),
                    json!({"id": identity.id}),
                ),
            )
            .await?;
        self.cache_drop(&identity.spiffe_id);
        self.changed();
        Ok(())
    }

    // ---- issuance ----

    /// A credential serial (also used as JWT `jti`): time prefix + 80 random bits.
    pub(crate) fn new_serial(&self, now: OffsetDateTime) -> Serial {
        let mut r = [0u8; 10];
        self.rng.fill(&mut r);
        let ms = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        Serial::from_time_and_random(ms, r)
    }

    /// The identity must exist and be active.
    pub(crate) async fn issuable(
        &self,
        spiffe_id: &SpiffeId,
    ) -> Result<Arc<Identity>, ServerError> {
        let identity = self.identity_for(spiffe_id).await?;
        if identity.status != IdentityStatus::Active {
            return Err(ServerError::Forbidden(
                "identity_disabled",
                format!("identity {spiffe_id} is disabled and gets no new credentials"),
            ));
        }
        Ok(identity)
    }

    fn effective_ttl(
        &self,
        requested: Option<Duration>,
        default: Duration,
        max: Duration,
        cap_seconds: Option<u32>,
    ) -> Result<Duration, ServerError> {
        if let Some(r) = requested
            && r <= Duration::ZERO
        {
            return Err(ServerError::bad("invalid_ttl", "ttl must be positive"));
        }
        let mut ttl = requested.unwrap_or(default).min(max);
        if let Some(cap) = cap_seconds {
            ttl = ttl.min(Duration::seconds(i64::from(cap)));
        }
        Ok(ttl)
    }

    /// Issues an X509-SVID from a checked CSR.
    pub async fn issue_x509_from_csr(
        &self,
        actor: &Actor,
        spiffe_id: &SpiffeId,
        csr: CheckedCsr,
        ttl: Option<Duration>,
    ) -> Result<X509Svid, ServerError> {
        if let Some(asked) = &csr.requested_id
            && asked != spiffe_id
        {
            return Err(ServerError::bad(
                "spiffe_id_mismatch",
                format!("the CSR asks for {asked} but the request is for {spiffe_id}"),
            ));
        }
        self.issue_x509(actor, spiffe_id, &csr.key, ttl).await
    }

    /// Issues an X509-SVID over `key` and records it durably before returning.
    pub async fn issue_x509(
        &self,
        actor: &Actor,
        spiffe_id: &SpiffeId,
        key: &LeafKey,
        ttl: Option<Duration>,
    ) -> Result<X509Svid, ServerError> {
        let identity = self.issuable(spiffe_id).await?;
        self.authorize_admin(
            actor,
            AdminAction::MintCredential,
            Target::Identity(&identity),
        )
        .await?;
        self.sign_x509(actor, Subject::of(&identity, None), key, ttl)
            .await
    }

    /// Signs and records an X509-SVID for `subject` (already found issuable).
    pub(crate) async fn sign_x509(
        &self,
        actor: &Actor,
        subject: Subject<'_>,
        key: &LeafKey,
        ttl: Option<Duration>,
    ) -> Result<X509Svid, ServerError> {
        let spiffe_id = subject.spiffe_id;
        let ttl = self.effective_ttl(
            ttl,
            self.policy.x509_default_ttl,
            self.policy.x509_max_ttl,
            subject.max_ttl_seconds,
        )?;
        if let Some(identity) = subject.identity {
            self.authorize_issue(
                actor,
                IssueRequest {
                    identity,
                    jwt: None,
                    access_grant: None,
                    delegation: None,
                    ttl_seconds: ttl.whole_seconds(),
                    node: subject.node.map(NodeId::as_str),
                },
            )
            .await?;
        }
        let auth = self.authority();
        let now = self.clock.now();
        let not_after = (now + ttl).min(auth.intermediate.not_after);
        let not_before = now - self.policy.backdate;
        let serial = self.new_serial(now);
        let der = auth
            .intermediate
            .issue_svid(spiffe_id, key, &serial, not_before, not_after)?;
        let fingerprint = key.fingerprint();
        let cred = IssuedCredential {
            kind: CredentialKind::X509,
            serial: serial.to_hex(),
            identity_id: subject.identity_id.clone(),
            spiffe_id: spiffe_id.clone(),
            issuer: auth.intermediate_id.clone(),
            not_before: not_before.max(auth.intermediate.not_before),
            not_after,
            key_fingerprint: Some(fingerprint.clone()),
            node_id: subject.node.cloned(),
        };
        let detail = match subject.node {
            Some(n) => json!({"issuer": auth.intermediate_id, "node": n}),
            None => json!({"issuer": auth.intermediate_id}),
        };
        let mut rec = audit(actor, now, "x509.issue", spiffe_id.as_str(), detail);
        rec.issuance = Some(credence_store::AuditIssuance {
            serial: cred.serial.clone(),
            spiffe_id: spiffe_id.to_string(),
            ttl_seconds: u64::try_from((not_after - now).whole_seconds()).unwrap_or(0),
            key_sha256: fingerprint,
        });
        let not_before = cred.not_before;
        self.store.record_issued(vec![(cred, rec)]).await?;
        let mut chain_pem = certs_to_pem([der.as_slice()]);
        chain_pem.push_str(auth.chain_pem());
        Ok(X509Svid {
            spiffe_id: spiffe_id.clone(),
            serial,
            not_before,
            not_after,
            chain_pem,
            bundle_pem: auth.bundle_pem().to_owned(),
            leaf_der: der,
        })
    }

    /// Generates a key on the server and issues an X509-SVID for it (admin use).
    pub async fn mint_x509(
        &self,
        actor: &Actor,
        spiffe_id: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<(X509Svid, zeroize::Zeroizing<String>), ServerError> {
        let key = SoftwareKey::generate()?;
        let spki = credence_ca::Signer::public_key_spki(&key);
        let leaf = LeafKey::from_spki_der(&spki)?;
        let svid = self.issue_x509(actor, spiffe_id, &leaf, ttl).await?;
        Ok((svid, key.pkcs8_pem()))
    }

    /// Mints a JWT-SVID.
    pub async fn mint_jwt(
        &self,
        actor: &Actor,
        spiffe_id: &SpiffeId,
        audience: &[String],
        scopes: &[Scope],
        ttl: Option<Duration>,
    ) -> Result<JwtSvid, ServerError> {
        let identity = self.issuable(spiffe_id).await?;
        self.authorize_admin(
            actor,
            AdminAction::MintCredential,
            Target::Identity(&identity),
        )
        .await?;
        self.sign_jwt(actor, Subject::of(&identity, None), audience, scopes, ttl)
            .await
    }

    /// Signs and records a JWT-SVID for `subject` (already found issuable).
    pub(crate) async fn sign_jwt(
        &self,
        actor: &Actor,
        subject: Subject<'_>,
        audience: &[String],
        scopes: &[Scope],
        ttl: Option<Duration>,
    ) -> Result<JwtSvid, ServerError> {
        let spiffe_id = subject.spiffe_id;
        if audience.is_empty() {
            return Err(ServerError::bad(
                "missing_audience",
                "a JWT-SVID needs at least one audience",
            ));
        }
        if audience.len() > 32 || audience.iter().any(|a| a.is_empty() || a.len() > 512) {
            return Err(ServerError::bad(
                "invalid_audience",
                "audiences must be 1 to 32 non-empty strings of at most 512 bytes",
            ));
        }
        let ttl = self.effective_ttl(
            ttl,
            self.policy.jwt_default_ttl,
            self.policy.jwt_max_ttl,
            subject.max_ttl_seconds,
        )?;
        if scopes.len() > Scope::MAX {
            return Err(ServerError::bad(
                "invalid_scope",
                format!("at most {} scopes", Scope::MAX),
            ));
        }
        let scope_names: Vec<String> = scopes.iter().map(|s| s.as_str().to_owned()).collect();
        if let Some(identity) = subject.identity {
            self.authorize_issue(
                actor,
                IssueRequest {
                    identity,
                    jwt: Some((audience, &scope_names)),
                    access_grant: None,
                    delegation: None,
                    ttl_seconds: ttl.whole_seconds(),
                    node: subject.node.map(NodeId::as_str),
                },
            )
            .await?;
        }
        let scope = (!scope_names.is_empty()).then(|| scope_names.join(" "));
        let auth = self.authority();
        let now = self.clock.now();
        let exp = now + ttl;
        let jti = self.new_serial(now).to_hex();
        let signer = auth.jwt_signer(now)?;
        let token = signer.sign(&JwtSvidClaims {
            iss: self.issuer_url.as_deref(),
            sub: spiffe_id,
            aud: Audience(audience),
            exp: exp.unix_timestamp(),
            iat: now.unix_timestamp(),
            jti: &jti,
            scope: scope.as_deref(),
        })?;
        let cred = IssuedCredential {
            kind: CredentialKind::Jwt,
            serial: jti.clone(),
            identity_id: subject.identity_id.clone(),
            spiffe_id: spiffe_id.clone(),
            issuer: format!("jwt-{}", signer.kid()),
            not_before: now,
            not_after: exp,
            key_fingerprint: None,
            node_id: subject.node.cloned(),
        };
        let rec = audit(
            actor,
            now,
            "jwt.issue",
            spiffe_id.as_str(),
            json!({"jti": jti, "aud": audience, "scope": scope, "ttl_seconds": ttl.whole_seconds(), "kid": signer.kid()}),
        );
        self.store.record_issued(vec![(cred, rec)]).await?;
        Ok(JwtSvid {
            spiffe_id: spiffe_id.clone(),
            token,
            jti,
            expires_at: exp,
        })
    }

    // ---- revocation ----

    pub async fn revoke(
        &self,
        actor: &Actor,
        target: RevokeTarget,
        reason: RevocationReason,
    ) -> Result<Vec<RevokedEntry>, ServerError> {
        let whose = match &target {
            RevokeTarget::Serial(s) => self
                .store
                .get_credential(s)
                .await?
                .map(|(c, _)| c.spiffe_id),
            RevokeTarget::SpiffeId(id) => Some(id.clone()),
        };
        if let Some(id) = &whose {
            self.authorize_about(
                actor,
                AdminAction::RevokeCredential,
                AdminAction::RevokeUnregistered,
                id,
            )
            .await?;
        }
        let now = self.clock.now();
        let out = match &target {
            RevokeTarget::Serial(s) => {
                let key = s.clone();
                vec![
                    self.store
                        .revoke_serial(
                            &key,
                            reason,
                            now,
                            with_reason(
                                audit(actor, now, "revoke.credential", &key, json!({})),
                                reason,
                            ),
                        )
                        .await?,
                ]
            }
            RevokeTarget::SpiffeId(id) => {
                self.store
                    .revoke_identity_credentials(
                        id,
                        reason,
                        now,
                        with_reason(
                            audit(actor, now, "revoke.identity", id.as_str(), json!({})),
                            reason,
                        ),
                    )
                    .await?
            }
        };
        self.revocations_changed();
        Ok(out)
    }

    /// After a revocation: the next /crl call re-signs, agents refresh.
    pub(crate) fn revocations_changed(&self) {
        if let Ok(mut c) = self.crl.lock() {
            *c = None;
        }
        self.changed();
    }

    pub async fn is_revoked(&self, serial: &str) -> Result<bool, ServerError> {
        Ok(self.store.is_revoked(serial).await?)
    }

    /// The current CRL of `issuer` (default: the active intermediate), DER.
    /// Cached until a revocation or half its lifetime has passed.
    pub async fn crl(&self, issuer: Option<&str>) -> Result<Arc<Vec<u8>>, ServerError> {
        let auth = self.authority();
        let issuer_id = issuer.unwrap_or(&auth.intermediate_id).to_owned();
        let now = self.clock.now();
        if let Ok(c) = self.crl.lock()
            && let Some(c) = c.as_ref()
            && c.issuer == issuer_id
            && now < c.this_update + (c.next_update - c.this_update) / 2
        {
            return Ok(c.der.clone());
        }
        let signer = auth
            .issuer_by_id(&issuer_id)
            .ok_or_else(|| ServerError::NotFound(format!("no CA {issuer_id}")))?;
        let revoked = self.store.list_revoked(CredentialKind::X509, now).await?;
        let mut entries = Vec::with_capacity(revoked.len());
        for r in revoked.iter().filter(|r| r.issuer == issuer_id) {
            entries.push(CrlEntry {
                serial: Serial::parse_hex(&r.serial).map_err(|e| {
                    ServerError::Internal(format!("stored serial {:?}: {e}", r.serial))
                })?,
                revoked_at: r.revoked_at,
                reason: r.reason,
            });
        }
        let number = self.store.next_crl_number(&issuer_id).await?;
        let this_update = now;
        let next_update = (now + self.policy.crl_lifetime).min(signer.not_after);
        let der = Arc::new(signer.sign_crl(&entries, number, this_update, next_update)?);
        if issuer_id == auth.intermediate_id
            && let Ok(mut c) = self.crl.lock()
        {
            *c = Some(CachedCrl {
                issuer: issuer_id,
                der: der.clone(),
                this_update,
                next_update,
            });
        }
        Ok(der)
    }

    /// Signs a checkpoint if the audit log grew since the last one.
    pub async fn checkpoint(&self) -> Result<Option<u64>, ServerError> {
        self.audit_log
            .checkpoint(self.store.as_ref(), self.clock.now())
            .await
    }

    /// Records a failed admin authentication. Failures to record are logged,
    /// not returned: the caller is refused either way.
    pub async fn record_auth_failure(
        &self,
        method: &str,
        path: &str,
        why: &str,
        request_id: Option<String>,
        client_addr: Option<String>,
    ) {
        let actor = Actor {
            name: "anonymous".into(),
            method: "none",
            request_id,
            client_addr,
            principal: crate::authz::Principal::Anonymous,
        };
        let mut rec = audit(
            &actor,
            self.clock.now(),
            "admin.authenticate",
            path,
            json!({"method": method}),
        );
        rec.outcome = credence_store::Outcome::Failure;
        rec.reason = Some(why.to_owned());
        if let Err(e) = self.store.append_audit(rec).await {
            tracing::error!(error = %e, "cannot record failed authentication");
        }
    }

    /// Hash used to compare admin tokens in constant time.
    pub fn token_hash(token: &str) -> [u8; 32] {
        sha256(token.as_bytes())
    }
}

fn with_reason(mut ev: AuditRecord, reason: RevocationReason) -> AuditRecord {
    ev.reason = Some(reason.as_str().to_owned());
    ev
}

/// How an identity is named in a request.
#[derive(Clone, Debug)]
pub enum IdentityKey {
    Id(IdentityId),
    SpiffeId(SpiffeId),
}

impl IdentityKey {
    pub fn parse(s: &str) -> Result<Self, ServerError> {
        if s.starts_with("spiffe://") {
            Ok(Self::SpiffeId(SpiffeId::parse(s)?))
        } else {
            Ok(Self::Id(IdentityId::parse(s)?))
        }
    }
}

impl std::fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(i) => i.fmt(f),
            Self::SpiffeId(s) => s.fmt(f),
        }
    }
}

/// Fields of a new identity.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewIdentity {
    pub spiffe_id: SpiffeId,
    pub kind: credence_core::IdentityKind,
    pub owner: credence_core::Owner,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub labels: Option<credence_core::Labels>,
    #[serde(default)]
    pub selectors: Option<Vec<credence_core::Selector>>,
    /// Nodes whose agents may serve it (default: every node).
    #[serde(default)]
    pub nodes: Option<Vec<NodeId>>,
    /// Scopes its tokens may ever carry (default: none).
    #[serde(default)]
    pub scopes: Option<Vec<credence_core::Scope>>,
    /// Foreign trust domains whose bundles its workloads receive.
    #[serde(default)]
    pub federates_with: Option<Vec<credence_core::TrustDomain>>,
    #[serde(default)]
    pub max_ttl_seconds: Option<u32>,
}

/// A partial update; absent fields stay as they are. `max_ttl_seconds: null`
/// removes the cap.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityUpdate {
    #[serde(default)]
    pub kind: Option<credence_core::IdentityKind>,
    #[serde(default)]
    pub owner: Option<credence_core::Owner>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub labels: Option<credence_core::Labels>,
    #[serde(default)]
    pub selectors: Option<Vec<credence_core::Selector>>,
    #[serde(default)]
    pub nodes: Option<Vec<NodeId>>,
    #[serde(default)]
    pub scopes: Option<Vec<credence_core::Scope>>,
    #[serde(default)]
    pub federates_with: Option<Vec<credence_core::TrustDomain>>,
    #[serde(default, with = "double_option")]
    pub max_ttl_seconds: Option<Option<u32>>,
    #[serde(default)]
    pub status: Option<IdentityStatus>,
}

mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
        Option::<u32>::deserialize(d).map(Some)
    }
}

#[derive(Clone, Debug)]
pub enum RevokeTarget {
    Serial(String),
    SpiffeId(SpiffeId),
}

fn check_ttl(t: Option<u32>) -> Result<(), ServerError> {
    if t == Some(0) {
        return Err(ServerError::bad(
            "invalid_ttl",
            "max_ttl_seconds must be positive",
        ));
    }
    Ok(())
}

/// Scopes as a set: duplicates dropped, at most [`credence_core::Scope::MAX`].
fn check_scopes(s: Vec<credence_core::Scope>) -> Result<Vec<credence_core::Scope>, ServerError> {
    Ok(credence_core::Scope::parse_list(
        s.iter().map(credence_core::Scope::as_str),
    )?)
}

fn check_description(d: &str) -> Result<(), ServerError> {
    if d.len() > 4096 {
        return Err(ServerError::bad(
            "invalid_request",
            "description is longer than 4096 bytes",
        ));
    }
    Ok(())
}
