//! The one storage contract of Credence, and its SQLite backend.
//!
//! # Contract
//!
//! [`Store`] is everything the server persists: registered identities, the
//! credentials issued to them (for revocation, inventory and the CRL), CA key
//! material (private keys arrive already wrapped by the caller), per-issuer
//! CRL numbers and the audit log. A later PostgreSQL backend implements the
//! same trait and runs the same conformance tests (`tests/it/conformance.rs`).
//!
//! - Every mutation that takes an [`AuditRecord`] writes it in the **same
//!   transaction** as the change: there is never a change without its audit
//!   row, nor an audit row for a change that failed.
//! - Timestamps are stored as INTEGER unix seconds: sub-second precision is
//!   dropped.
//! - Errors are [`StoreError`]: `NotFound`, `Conflict` (unique violation),
//!   `Invalid` (corrupt row), `BadArgument` (bad cursor), `Backend` (database error) and
//!   `Closed` (after [`Store::close`]).
//!
//! # SQLite backend and group commit
//!
//! [`SqliteStore`] runs in WAL mode with one write connection and a small
//! pool of read connections, so reads never wait for the writer. The write
//! connection is owned by a single writer task; every mutation is a message
//! to it, so no two writes ever interleave and a caller that goes away cannot
//! leave a transaction half done.
//!
//! [`Store::record_issued`], the issuance hot path, uses group commit: while
//! the writer is committing (and, with [`Durability::Full`], syncing), new
//! requests queue up. When it comes back, it takes every queued issuance
//! request (up to about [`GROUP_COMMIT_MAX`] credentials), writes them in one
//! transaction with multi-row `INSERT`s (chunked under the bound-parameter
//! limit) into `credentials` and `audit_events` plus one `UPDATE` of
//! `last_issued_at` per distinct identity, commits once and then answers each
//! waiting caller. There is no timer: under light load a batch is one request,
//! under heavy load one fsync covers thousands of credentials. If the batch
//! transaction fails, every caller of that batch gets the error, except that
//! a unique violation (a repeated serial) in a batch of several callers is
//! retried caller by caller so only the offending request fails.

mod error;
mod sqlite;

use credence_core::{
    Admin, AdminName, Delegation, DelegationId, FederatedBundle, Federation, Identity, IdentityId,
    IdentityKind, IdentityStatus, JoinToken, Node, RevocationReason, SpiffeId, TrustDomain,
};
use time::OffsetDateTime;

pub use error::StoreError;
pub use sqlite::{GROUP_COMMIT_MAX, SqliteStore};

/// How hard the database syncs on commit. The journal is always WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// `PRAGMA synchronous=NORMAL`: a commit survives a process crash; the
    /// last commits may be lost on power failure.
    #[default]
    Normal,
    /// `PRAGMA synchronous=FULL`: every commit is synced to disk before it
    /// returns (group commit amortizes the sync).
    Full,
}

/// One audit event, written in the SAME transaction as the change it
/// describes, as a leaf of the Merkle log (see `credence-audit`).
pub type AuditRecord = credence_audit::AuditEvent;
pub use credence_audit::NodeId;

/// Filters of an audit investigation; all given fields must match.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub outcome: Option<credence_audit::Outcome>,
    /// The identity concerned: events whose target or issuance is this SPIFFE ID.
    pub spiffe_id: Option<String>,
    pub target: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
}

pub mod proofs;
pub use credence_audit::{Actor as AuditActor, Hash, Issuance as AuditIssuance, Outcome};

/// What kind of credential a serial names. Stored as `x509` / `jwt`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    X509,
    Jwt,
}

impl CredentialKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::X509 => "x509",
            Self::Jwt => "jwt",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "x509" => Some(Self::X509),
            "jwt" => Some(Self::Jwt),
            _ => None,
        }
    }
}

impl std::fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A credential that was issued (recorded for revocation, inventory, CRL).
#[derive(Clone, Debug)]
pub struct IssuedCredential {
    pub kind: CredentialKind,
    /// X.509: lowercase hex serial (`Serial::to_hex()`); JWT: the `jti`.
    pub serial: String,
    pub identity_id: IdentityId,
    pub spiffe_id: SpiffeId,
    /// Id of the CA that signed it.
    pub issuer: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// sha256 hex of the SPKI, for X.509.
    pub key_fingerprint: Option<String>,
    /// The node whose agent asked for it; evicting the node revokes it.
    /// For an agent's own SVID this is that node (and `identity_id` holds
    /// the node id too).
    pub node_id: Option<credence_core::NodeId>,
}

/// A revoked credential.
#[derive(Clone, Debug)]
pub struct RevokedEntry {
    pub serial: String,
    pub kind: CredentialKind,
    pub spiffe_id: SpiffeId,
    pub revoked_at: OffsetDateTime,
    pub reason: RevocationReason,
    pub not_after: OffsetDateTime,
    pub issuer: String,
}

/// Stored CA material.
#[derive(Clone, Debug)]
pub struct CaRecord {
    /// e.g. `root-<hex>`, `int-<hex>`, `jwt-<kid>`
    pub id: String,
    /// `root`, `intermediate` or `jwt`
    pub role: String,
    /// None for JWT signing keys.
    pub cert_der: Option<Vec<u8>>,
    /// SPKI DER.
    pub public_key_der: Vec<u8>,
    /// The private key, already encrypted by the caller.
    pub wrapped_key: Vec<u8>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub active: bool,
    pub created_at: OffsetDateTime,
}

/// One version of the policy set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySetRecord {
    /// Assigned by the store on save (1, 2, ...).
    pub version: u64,
    /// Cedar namespace of AuthZEN names given without one.
    pub namespace: Option<String>,
    /// Cedar schema (Cedar syntax or JSON).
    pub schema: String,
    /// Cedar policies.
    pub policies: String,
    pub note: String,
    pub created_at: OffsetDateTime,
    pub created_by: String,
    pub active: bool,
}

/// Filter for [`Store::list_identities`]; every given condition must hold.
#[derive(Clone, Debug, Default)]
pub struct IdentityFilter {
    pub kind: Option<IdentityKind>,
    pub owner: Option<String>,
    pub status: Option<IdentityStatus>,
    /// All must match (key=value).
    pub labels: Vec<(String, String)>,
    /// Exact match.
    pub spiffe_id: Option<SpiffeId>,
}

/// Filter for [`Store::list_delegations`]; every given condition must hold.
#[derive(Clone, Debug, Default)]
pub struct DelegationFilter {
    /// Grants held by this identity.
    pub grantee: Option<SpiffeId>,
    /// This grant and its descendants.
    pub under: Option<DelegationId>,
    /// Revoked grants too.
    pub include_revoked: bool,
}

/// One page of a listing; pass `next_cursor` back to get the next page.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// The storage contract. See the crate docs.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    // identities

    /// Conflict on a duplicate `spiffe_id` or `id`.
    async fn create_identity(
        &self,
        identity: &Identity,
        audit: AuditRecord,
    ) -> Result<(), StoreError>;
    async fn get_identity(&self, id: &IdentityId) -> Result<Option<Identity>, StoreError>;
    async fn get_identity_by_spiffe_id(
        &self,
        spiffe_id: &SpiffeId,
    ) -> Result<Option<Identity>, StoreError>;
    /// Ordered by (created_at, id) ascending; `cursor` is the opaque
    /// `next_cursor` of the previous page; `limit` is clamped to 1..=1000.
    async fn list_identities(
        &self,
        filter: &IdentityFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Identity>, StoreError>;
    /// Replaces all mutable fields (spiffe_id, kind, owner, description,
    /// labels, selectors, max_ttl_seconds, status, updated_at). NotFound if
    /// absent, Conflict if the new SPIFFE ID belongs to another identity.
    async fn update_identity(
        &self,
        identity: &Identity,
        audit: AuditRecord,
    ) -> Result<(), StoreError>;
    /// Deletes the identity; its issued credential rows stay (for the CRL and
    /// inventory). NotFound if absent.
    async fn delete_identity(&self, id: &IdentityId, audit: AuditRecord) -> Result<(), StoreError>;

    // issuance hot path (group commit)

    /// Records issued credentials (+ one audit record each) and sets
    /// `last_issued_at` of their identities (to the latest `audit.at` among
    /// them), durably, before returning.
    async fn record_issued(
        &self,
        creds: Vec<(IssuedCredential, AuditRecord)>,
    ) -> Result<(), StoreError>;

    // revocation

    /// Revokes one credential by serial (x509 hex serial or jwt jti).
    /// NotFound if never issued. If already revoked, returns the existing
    /// entry unchanged (idempotent) without a second audit record.
    async fn revoke_serial(
        &self,
        serial: &str,
        reason: RevocationReason,
        at: OffsetDateTime,
        audit: AuditRecord,
    ) -> Result<RevokedEntry, StoreError>;
    /// Revokes every credential of the identity whose `not_after > at` and
    /// that is not already revoked; returns the newly revoked entries ordered
    /// by serial (may be empty; the audit record is still written).
    async fn revoke_identity_credentials(
        &self,
        spiffe_id: &SpiffeId,
        reason: RevocationReason,
        at: OffsetDateTime,
        audit: AuditRecord,
    ) -> Result<Vec<RevokedEntry>, StoreError>;
    /// Revoked credentials of `kind` with `not_after > now`, ordered by serial
    /// (for the CRL: expired serials drop out).
    async fn list_revoked(
        &self,
        kind: CredentialKind,
        now: OffsetDateTime,
    ) -> Result<Vec<RevokedEntry>, StoreError>;
    /// False for an unknown serial.
    async fn is_revoked(&self, serial: &str) -> Result<bool, StoreError>;
    /// The revoked ones among `serials` (unknown serials are not revoked).
    async fn revoked_among(&self, serials: &[String]) -> Result<Vec<String>, StoreError>;
    async fn get_credential(
        &self,
        serial: &str,
    ) -> Result<Option<(IssuedCredential, Option<RevokedEntry>)>, StoreError>;
    /// Deletes credential rows (revoked or not) whose `not_after < before`;
    /// returns how many. Housekeeping.
    async fn prune_expired(&self, before: OffsetDateTime) -> Result<u64, StoreError>;

    // nodes

    /// Stores a new join token (its hash). Conflict on a duplicate hash or id.
    async fn create_join_token(
        &self,
        token: &JoinToken,
        audit: AuditRecord,
    ) -> Result<(), StoreError>;
    /// Spends the join token with this hash and creates `node`, atomically.
    /// NotFound for an unknown hash, Conflict if already used, BadArgument
    /// if expired at `at`; nothing is written then.
    async fn redeem_join_token(
        &self,
        hash: &str,
        at: OffsetDateTime,
        node: &Node,
        audit: AuditRecord,
    ) -> Result<JoinToken, StoreError>;
    async fn get_join_token(&self, id: &str) -> Result<Option<JoinToken>, StoreError>;
    /// A node attested without a join token: inserted, or attested again
    /// when it exists and is active (its stored row is returned); an
    /// evicted node is a `Conflict`. With its audit record.
    async fn attest_node(&self, node: &Node, audit: AuditRecord) -> Result<Node, StoreError>;
    async fn get_node(&self, id: &credence_core::NodeId) -> Result<Option<Node>, StoreError>;
    /// Ordered by (created_at, id).
    async fn list_nodes(&self) -> Result<Vec<Node>, StoreError>;
    /// Records the agent's current SVID (after attestation or renewal).
    /// NotFound if absent.
    async fn set_node_svid(
        &self,
        id: &credence_core::NodeId,
        serial: &str,
        not_after: OffsetDateTime,
        at: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Marks the node evicted and revokes every unexpired credential issued
    /// through it (its agent's SVIDs included), in one transaction; returns
    /// the newly revoked entries. NotFound if absent.
    async fn evict_node(
        &self,
        id: &credence_core::NodeId,
        at: OffsetDateTime,
        audit: AuditRecord,
    ) -> Result<Vec<RevokedEntry>, StoreError>;

    // policies

    /// Stores a new version (its `version` and `active` are ignored) and
    /// returns its number; with `activate`, it becomes the only active one
    /// in the same transaction.
    async fn save_policy_set(
        &self,
        set: &PolicySetRecord,
        activate: bool,
        audit: AuditRecord,
    ) -> Result<u64, StoreError>;
    /// Makes `version` the only active one. NotFound if absent.
    async fn activate_policy_set(&self, version: u64, audit: AuditRecord)
    -> Result<(), StoreError>;
    async fn get_policy_set(&self, version: u64) -> Result<Option<PolicySetRecord>, StoreError>;
    async fn active_policy_set(&self) -> Result<Option<PolicySetRecord>, StoreError>;
    /// Whole records, newest first, at most `limit` (clamped to 1..=1000).
    async fn list_policy_sets(&self, limit: u32) -> Result<Vec<PolicySetRecord>, StoreError>;
    /// Replaces the PDP's entity store (Cedar entities JSON).
    async fn save_policy_entities(
        &self,
        json: &str,
        at: OffsetDateTime,
        audit: AuditRecord,
    ) -> Result<(), StoreError>;
    async fn policy_entities(&self) -> Result<Option<String>, StoreError>;

    // ---- SPIFFE federation ----

    /// Adds a relationship; `Conflict` when one with that trust domain exists.
    async fn create_federation(
        &self,
        federation: &Federation,
        audit: AuditRecord,
    ) -> Result<(), StoreError>;
    async fn get_federation(&self, td: &TrustDomain) -> Result<Option<Federation>, StoreError>;
    /// Every relationship, by trust domain.
    async fn list_federations(&self) -> Result<Vec<Federation>, StoreError>;
    async fn delete_federation(
        &self,
        td: &TrustDomain,
        audit: AuditRecord,
    ) -> Result<(), StoreError>;
    /// Records a refresh: the bundle fetched (with `audit` when it changed,
    /// in the same transaction) or why it failed (the old bundle stays).
    async fn record_federation_refresh(
        &self,
        td: &TrustDomain,
        at: OffsetDateTime,
        outcome: Result<FederatedBundle, String>,
        audit: Option<AuditRecord>,
    ) -> Result<(), StoreError>;

    // administrators

    /// Inserts with the SHA-256 (hex) of its token; Conflict on the same name.
    async fn create_admin(
        &self,
        admin: &Admin,
        token_hash: &str,
        audit: AuditRecord,
    ) -> Result<(), StoreError>;
    /// The administrator whose token has this SHA-256 (hex).
    async fn admin_by_token_hash(&self, token_hash: &str) -> Result<Option<Admin>, StoreError>;
    async fn get_admin(&self, name: &AdminName) -> Result<Option<Admin>, StoreError>;
    /// Ordered by name.
    async fn list_admins(&self) -> Result<Vec<Admin>, StoreError>;
    /// NotFound if absent.
    async fn delete_admin(&self, name: &AdminName, audit: AuditRecord) -> Result<(), StoreError>;

    // CA material

    /// Inserts; Conflict on the same id.
    async fn save_ca(&self, ca: &CaRecord, audit: AuditRecord) -> Result<(), StoreError>;
    /// NotFound if there is no CA with that id.
    async fn set_ca_active(
        &self,
        id: &str,
        active: bool,
        audit: AuditRecord,
    ) -> Result<(), StoreError>;
    /// Ordered by (created_at, id).
    async fn list_cas(&self) -> Result<Vec<CaRecord>, StoreError>;
    /// Monotonic per-issuer CRL number: atomically increments and returns the
    /// new value (starts at 1).
    async fn next_crl_number(&self, issuer: &str) -> Result<u64, StoreError>;

    // audit

    /// Appends an audit record that goes with no state change (for example a
    /// refused request, `outcome: "failure"`); returns its index in the log.
    async fn append_audit(&self, audit: AuditRecord) -> Result<u64, StoreError>;

    /// Appends several audit events in one transaction (bulk import, tests,
    /// benchmarks); returns their indices.
    async fn append_audit_batch(&self, events: Vec<AuditRecord>) -> Result<Vec<u64>, StoreError>;

    /// The log's current size and root, as the writer sees them (committed).
    async fn audit_head(&self) -> Result<(u64, Hash), StoreError>;
    /// The exact leaf bytes of entries `start..end` (at most 10,000), ascending.
    async fn audit_leaves(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// Stored hashes of complete subtree nodes `(level, index)`; `None` for
    /// nodes not stored.
    async fn audit_nodes(&self, ids: &[NodeId]) -> Result<Vec<Option<Hash>>, StoreError>;
    /// Stores a signed checkpoint for tree size `size` (idempotent per size).
    async fn save_checkpoint(
        &self,
        size: u64,
        note: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// The checkpoint of the largest size, if any.
    async fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError>;
    /// All stored checkpoints with size in `from..=to`, ascending (at most 1,000).
    async fn checkpoints(&self, from: u64, to: u64) -> Result<Vec<(u64, String)>, StoreError>;
    /// Entries matching `filter` with index > `after` (or from the start),
    /// ascending; `limit` clamped to 1..=1000.
    async fn search_audit(
        &self,
        filter: &AuditFilter,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<(u64, AuditRecord)>, StoreError>;
    async fn audit_count(&self) -> Result<u64, StoreError>;
    /// Decoded events with index >= `start`, ascending; `limit` clamped to 1..=1000.
    async fn list_audit(
        &self,
        start: u64,
        limit: u32,
    ) -> Result<Vec<(u64, AuditRecord)>, StoreError>;

    // delegation

    /// Stores a new grant. NotFound if its parent is absent, Conflict if
    /// the parent is revoked or the id exists, BadArgument if its chain
    /// does not extend its parent's.
    async fn create_delegation(&self, d: &Delegation, audit: AuditRecord)
    -> Result<(), StoreError>;
    async fn get_delegation(&self, id: &DelegationId) -> Result<Option<Delegation>, StoreError>;
    /// Every grant of the chain ending at `id`, root first (NotFound if
    /// `id` is absent).
    async fn delegation_chain(&self, id: &DelegationId) -> Result<Vec<Delegation>, StoreError>;
    /// Ordered by path (a chain's grants together, parents first).
    async fn list_delegations(
        &self,
        filter: &DelegationFilter,
    ) -> Result<Vec<Delegation>, StoreError>;
    /// Counts one use of the grant and records the credential minted under
    /// it (revoked with the grant) with its audit record, atomically.
    /// Conflict if the grant is revoked or used up, NotFound if absent.
    async fn record_delegated(
        &self,
        id: &DelegationId,
        cred: IssuedCredential,
        audit: AuditRecord,
    ) -> Result<(), StoreError>;
    /// Revokes the grant, every grant below it and every unexpired
    /// credential minted under any of them, in one transaction; returns
    /// the grants and credentials newly revoked. Revoking a revoked grant
    /// changes nothing and writes no audit record. NotFound if absent.
    async fn revoke_delegation(
        &self,
        id: &DelegationId,
        reason: &str,
        at: OffsetDateTime,
        audit: AuditRecord,
    ) -> Result<(Vec<DelegationId>, Vec<RevokedEntry>), StoreError>;

    /// Finishes queued writes, then closes the database. Every later call
    /// fails with [`StoreError::Closed`]. Idempotent.
    async fn close(&self);
}
