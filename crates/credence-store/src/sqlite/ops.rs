//! The mutations other than issuance, each one transaction on the write
//! connection (run by the writer task), audit record included.

use credence_core::{
    Admin, BundleProfile, Delegation, DelegationId, FederatedBundle, Federation, Identity,
    IdentityId, JoinToken, Node, NodeId, RevocationReason, SpiffeId,
};
use sqlx::sqlite::{Sqlite, SqliteConnection};
use sqlx::{Connection, QueryBuilder, Transaction};
use time::OffsetDateTime;

use super::log::{Ctx, Staged};
use super::rows::{
    self, CREDENTIAL_COLS, DELEGATION_COLS, grantor_json, labels_json, nodes_json, scopes_json,
    selectors_json, truncate_ts, trust_domains_json, ts,
};
use crate::{AuditRecord, CaRecord, IssuedCredential, PolicySetRecord, RevokedEntry, StoreError};

async fn begin(conn: &mut SqliteConnection) -> Result<Transaction<'_, Sqlite>, StoreError> {
    // IMMEDIATE: take the write lock up front, so a read-then-write
    // transaction cannot fail half way on a busy snapshot
    Ok(conn.begin_with("BEGIN IMMEDIATE").await?)
}

/// Appends `audit` to the log inside `tx` and commits; the in-memory
/// frontier moves only once the commit succeeded.
async fn commit_with(
    mut tx: Transaction<'_, Sqlite>,
    log: &mut credence_audit::CompactRange,
    audit: &AuditRecord,
) -> Result<u64, StoreError> {
    let mut staged = Staged::new(log);
    let idx = staged.push(audit)?;
    staged.write(&mut tx).await?;
    tx.commit().await?;
    *log = staged.log;
    Ok(idx)
}

async fn exists(
    conn: &mut SqliteConnection,
    sql: &'static str,
    key: &str,
) -> Result<bool, StoreError> {
    let found: Option<i64> = sqlx::query_scalar(sql)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(found.is_some())
}

async fn insert_labels(conn: &mut SqliteConnection, identity: &Identity) -> Result<(), StoreError> {
    if identity.labels.is_empty() {
        return Ok(());
    }
    // at most 64 labels x 3 parameters
    let mut qb =
        QueryBuilder::<Sqlite>::new("INSERT INTO identity_labels (identity_id, key, value) ");
    qb.push_values(identity.labels.iter(), |mut b, (k, v)| {
        b.push_bind(identity.id.as_str()).push_bind(k).push_bind(v);
    });
    qb.build().execute(&mut *conn).await?;
    Ok(())
}

fn spiffe_conflict(spiffe_id: &SpiffeId) -> StoreError {
    StoreError::Conflict(format!(
        "identity with SPIFFE ID {spiffe_id} already exists"
    ))
}

pub(crate) async fn create_identity(
    ctx: &mut Ctx,
    identity: Identity,
    audit: AuditRecord,
) -> Result<(), StoreError> {
    let labels = labels_json(&identity.labels)?;
    let selectors = selectors_json(&identity.selectors)?;
    let nodes = nodes_json(&identity.nodes)?;
    let scopes = scopes_json(&identity.scopes)?;
    let federates = trust_domains_json(&identity.federates_with)?;
    let mut tx = begin(&mut ctx.conn).await?;
    if exists(
        &mut tx,
        "SELECT 1 FROM identities WHERE id = ?",
        identity.id.as_str(),
    )
    .await?
    {
        return Err(StoreError::Conflict(format!(
            "identity with id {} already exists",
            identity.id
        )));
    }
    if exists(
        &mut tx,
        "SELECT 1 FROM identities WHERE spiffe_id = ?",
        identity.spiffe_id.as_str(),
    )
    .await?
    {
        return Err(spiffe_conflict(&identity.spiffe_id));
    }
    sqlx::query(
        "INSERT INTO identities (id, spiffe_id, kind, owner, description, labels_json, \
         selectors_json, nodes_json, scopes_json, federates_with_json, max_ttl_seconds, status, \
         created_at, updated_at, last_issued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(identity.id.as_str())
    .bind(identity.spiffe_id.as_str())
    .bind(identity.kind.as_str())
    .bind(identity.owner.as_str())
    .bind(identity.description.as_str())
    .bind(labels)
    .bind(selectors)
    .bind(nodes)
    .bind(scopes)
    .bind(federates)
    .bind(identity.max_ttl_seconds.map(i64::from))
    .bind(identity.status.as_str())
    .bind(ts(identity.created_at))
    .bind(ts(identity.updated_at))
    .bind(identity.last_issued_at.map(ts))
    .execute(&mut *tx)
    .await?;
    insert_labels(&mut tx, &identity).await?;
    commit_with(tx, &mut ctx.log, &audit).await?;
    Ok(())
}

pub(crate) async fn update_identity(
    ctx: &mut Ctx,
    identity: Identity,
    audit: AuditRecord,
) -> Result<(), StoreError> {
    let labels = labels_json(&identity.labels)?;
    let selectors = selectors_json(&identity.selectors)?;
    let nodes = nodes_json(&identity.nodes)?;
    let scopes = scopes_json(&identity.scopes)?;
    let federates = trust_domains_json(&identity.federates_with)?;
    let mut tx = begin(&mut ctx.conn).await?;
    let holder: Option<String> =
        sqlx::query_scalar("SELECT id FROM identities WHERE spiffe_id = ?")
            .bind(identity.spiffe_id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    if holder.is_some_and(|h| h != identity.id.as_str()) {
        return Err(spiffe_conflict(&identity.spiffe_id));
    }
    let done = sqlx::query(
        "UPDATE identities SET spiffe_id = ?, kind = ?, owner = ?, description = ?, \
         labels_json = ?, selectors_json = ?, nodes_json = ?, scopes_json = ?, \
         federates_with_json = ?, max_ttl_seconds = ?, status = ?, updated_at = ? WHERE id = ?",
    )
    .bind(identity.spiffe_id.as_str())
    .bind(identity.kind.as_str())
    .bind(identity.owner.as_str())
    .bind(identity.description.as_str())
    .bind(labels)
    .bind(selectors)
    .bind(nodes)
    .bind(scopes)
    .bind(federates)
    .bind(identity.max_ttl_seconds.map(i64::from))
    .bind(identity.status.as_str())
    .bind(ts(identity.updated_at))
    .bind(identity.id.as_str())
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(identity_not_found(&identity.id));
    }
    sqlx::query("DELETE FROM identity_labels WHERE identity_id = ?")
        .bind(identity.id.as_str())
        .execute(&mut *tx)
        .await?;
    insert_labels(&mut tx, &identity).await?;
    commit_with(tx, &mut ctx.log, &audit).await?;
    Ok(())
}

fn identity_not_found(id: &IdentityId) -> StoreError {
    StoreError::NotFound(format!("identity {id} not found"))
}

pub(crate) async fn delete_identity(
    ctx: &mut Ctx,
    id: IdentityId,
    audit: AuditRecord,
) -> Result<(), StoreError> {
    let mut tx = begin(&mut ctx.conn).await?;
    sqlx::query("DELETE FROM identity_labels WHERE identity_id = ?")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    let done = sqlx::query("DELETE FROM identities WHERE id = ?")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(identity_not_found(&id));
    }
    commit_with(tx, &mut ctx.log, &audit).await?;
    Ok(())
}

pub(crate) async fn revoke_serial(
    ctx: &mut Ctx,
    serial: String,
    reason: RevocationReason,
    at: OffsetDateTime,
    audit: AuditRecord,
) -> Result<RevokedEntry, StoreError> {
    let mut tx = begin(&mut ctx.conn).await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CREDENTIAL_COLS} FROM credentials WHERE serial = ?"
    )))
    .bind(serial.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(StoreError::NotFound(format!(
            "no credential with serial {serial} was issued"
        )));
    };
    let (cred, revoked) = rows::credential(&row)?;
    if let Some(existing) = revoked {
        // idempotent: no change, no audit record
        tx.rollback().await?;
        return Ok(existing);
    }
    let at = truncate_ts(at);
    sqlx::query(
        "UPDATE credentials SET revoked_at = ?, revocation_reason = ? \
         WHERE serial = ? AND revoked_at IS NULL",
    )
    .bind(ts(at))
    .bind(reason.as_str())
    .bind(serial.as_str())
    .execute(&mut *tx)
    .await?;
    commit_with(tx, &mut ctx.log, &audit).await?;
    Ok(rows::revoked_entry(&cred, at, reason))
}

pub(crate) async fn revoke_identity_credentials(
    ctx: &mut Ctx,
    spiffe_id: SpiffeId,
    reason: RevocationReason,
    at: OffsetDateTime,
    audit: AuditRecord,
) -> Result<Vec<RevokedEntry>, StoreError> {
    let mut tx = begin(&mut ctx.conn).await?;
    let updated = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE credentials SET revoked_at = ?, revocation_reason = ? \
         WHERE spiffe_id = ? AND revoked_at IS NULL AND not_after > ? \
         RETURNING {CREDENTIAL_COLS}"
    )))
    .bind(ts(at))
    .bind(reason.as_str())
    .bind(spiffe_id.as_str())
    .bind(ts(at))
    .fetch_all(&mut *tx)
    .await?;
    let entries = revoked_rows(&updated)?;
    commit_with(tx, &mut ctx.log, &audit).await?;
    Ok(entries)
}

/// The entries of rows an `UPDATE ... RETURNING` just revoked, by serial.
fn revoked_rows(updated: &[sqlx::sqlite::SqliteRow]) -> Result<Vec<RevokedEntry>, StoreError> {
    let mut entries = Vec::with_capacity(updated.len());
    for row in updated {
        match rows::credential(row)? {
            (_, Some(entry)) => entries.push(entry),
            (_, None) => {
                return Err(rows::corrupt(
                    "credentials",
                    "revoked_at",
                    "not set by the update",
                ));
            }
        }
    }
    entries.sort_by(|a, b| a.serial.cmp(&b.serial));
    Ok(entries)
}

pub(crate) async fn prune_expired(
    ctx: &mut Ctx,
    before: OffsetDateTime,
) -> Result<u64, StoreError> {
    let done = sqlx::query("DELETE FROM credentials WHERE not_after < ?")
        .bind(ts(before))
        .execute(&mut ctx.conn)
        .await?;
    Ok(done.rows_affected())
}

pub(crate) async fn save_ca(
    ctx: &mut Ctx,
    ca: CaRecord,
    audit: AuditRecord,
) -> Result<(), StoreError> {
    let mut tx = begin(&mut ctx.conn).await?;
    if exists(&mut tx, "SELECT 1 FROM cas WHERE id = ?", &ca.id).await? {
        return Err(StoreError::Conflict(format!(
            "CA with id {} already exists",
            ca.id
        )));
    }
    sqlx::query(
        "INSERT INTO cas (id, role, cert_der, public_key_der, wrapped_key, not_before, \
         not_after, active, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(ca.id.as_str())
    .bind(ca.role.as_str())
    .bind(ca.cert_der.as_deref())
    .bind(ca.public_key_der.as_slice())
    .bind(ca.wrapped_key.as_slice())
    .bind(ts(ca.not_before))
    .bind(ts(ca.not_after))
    .bind(i64::from(ca.active))
    .bind(ts(ca.created_at))
    .execute(&mut *tx)
    .await?;
    commit_with(tx, &mut ctx.log, &audit).await?;
    Ok(())
}

pub(crate) async fn set_ca_active(
    ctx: &mut Ctx,
    id: String,
    active: bool,
    audit: AuditRecord,
) -> Result<(), StoreError> {
    let mut tx = begin(&mut ctx.conn).await?;
    let done = sqlx::query("UPDATE cas SET active = ? WHERE id = ?")
        .bind(i64::from(active))
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("CA {id} not found")));
    }
    commit_with(tx, &mut ctx.log, &audit).await?;
    Ok(())
}

pub(crate) async fn next_crl_number(ctx: &mut Ctx, issuer: String) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar(
        "INSERT INTO crl_numbers (issuer, last) VALUES (?, 1) \
         ON CONFLICT (issuer) DO UPDATE SET last = crl_numbers.last + 1 \
         RETURNING last",
    )
    .bind(issuer.as_str())
    .fetch_one(&mut ctx.conn)
    .await?;
    u64::try_from(n).map_err(|e| rows::corrupt("crl_numbers", "last", e))
}

pub(crate) async fn create_join_token(
    ctx: &mut Ctx,
    token: JoinToken,
    audit: AuditRecord,
) -> Result<(), StoreError> {
    let mut tx = begin(&mut ctx.conn).await?;
    sqlx::query(
        "INSERT INTO join_tokens (hash, id, created_at, expires_at, used_at, node_id) \
         VALUES (?, ?, ?, ?, NULL, NULL)",
    )
    .bind(token.hash.as_str())
    .bind(token.id.as_str())
    .bind(ts(token.created_at))
    .bind(ts(token.expires_at))
    .execute(&mut *tx)
    .await
    .map_err(|e| match StoreError::from(e) {
        StoreError::Conflict(_) => {
            StoreError::Conflict(format!("join token {} already exists", token.id))
        }
        other => other,
    })?;
    commit_with(tx, &mut ctx.log, &audit).await?;
    Ok(())
}

async fn insert_node(tx: &mut SqliteConnection, node: &Node) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO nodes (id, spiffe_id, attestation, token_id, status, agent_serial, \
         agent_not_after, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(node.id.as_str())
    .bind(node.spiffe_id.as_str())
    .bind(node.attestation.as_str())
    .bind(node.token_id.as_deref())
    .bind(node.status.as_str())
    .bind(node.agent_serial.as_deref())
    .bind(node.agent_not_after.map(ts))
    .bind(ts(node.created_at))
    .bind(ts(node.updated_at))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A node attested without a join token (an external OIDC token): created,
/// or, when it exists and is active, attested again. An evicted node stays
/// evicted (`Conflict`).
pub(crate) async fn attest_node(
    ctx: &mut Ctx,
    node: Node,
    audit: AuditRecord,
) -> Result<Node, StoreError> {
    let mut tx = begin(&mut ctx.conn).await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM nodes WHERE id = ?",
        rows::NODE_COLS
    )))
    .bind(node.id.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let out = match row {
        Some(r) => {
            let existing = rows::node(&r)?;
            if existing.status != credence_core::NodeStatus::Active {
                return Err(StoreError::Conflict(format!(
                    "node {} was evicted",
                    existing.id
                )));
            }
            sqlx::query("UPDATE nodes SET updated_at = ? WHERE id = ?")
                .bind(ts(node.updated_at))
                .bind(node.id.as_str())
                .execute(&mut *tx)
                .await?;
            existing
        }
        None => {
            insert_node(&mut tx, &node).await?;
            node
        }
    };
    commit_with(tx, &mut ctx.log, &audit).await?;
    Ok(out)
}

pub(crate) async fn redeem_join_token(
    ctx: &mut Ctx,
    hash: String,
    at: OffsetDateTime,
    node: Node,
    audit: AuditRecord,
) -> Result<JoinToken, StoreError> {
    let mut tx = begin(&mut ctx.conn).await?;
    let row = sqlx::query(
        "SELECT hash, id, created_at, expires_at, used_at, node_id FROM join_tokens \
         WHERE hash = ?",
    )
    .bind(hash.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(StoreError::NotFound("unknown join token".to_owned()));
    };
    let mut token = rows::join_token(&row)?;
    if token.used_at.is_some() {
        return Err(StoreError::Conflict(format!(
            "join token {} was already used",
            token.id
        )));
    }
    if token.expires_at <= at {
        return Err(StoreError::BadArgument(format!(
            "join token {} has expired",
            token.id
        )));
    }
    let at = truncate_ts(at);
    sqlx::query("UPDATE join_tokens SET used_at = ?, node_id = ? WHERE hash = ?")
        .bind(ts(at))
        .bind(node.id.as_str())
        .bind(hash.as_str())
        .execute(&mut *tx)
        .await?;
    insert_node(&mut tx, &node).await?;
    commit_with(tx, &mut ctx.log, &audit).await?;
    token.used_at = Some(at);
    token.node_id = Some(node.id);
    Ok(token)
}

pub(crate) async fn set_node_svid(
    ctx: &mut Ctx,
    id: NodeId,
    serial: String,
    not_after: OffsetDateTime,
    at: OffsetDateTime,
) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE nodes SET agent_serial = ?, agent_not_after = ?, updated_at = ? WHERE id = ?",
    )
    .bind(serial.as_str())
    .bind(ts(not_after))
    .bind(ts(at))
    .bind(id.as_str())
    .execute(&mut ctx.conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(node_not_found(&id));
    }
    Ok(())
}

fn node_not_found(id: &NodeId) -> StoreError {
    StoreError::NotFound(format!("node {id} not found"))
}

pub(crate) async fn evict_node(
    ctx: &mut Ctx,
    id: NodeId,
    at: OffsetDateTime,
    audit: AuditRecord,
) -> Result<Vec<RevokedEntry>, StoreError> {
    let at = truncate_ts(at);
    let mut tx = begin(&mut ctx.conn).await?;
    let done = sqlx::query("UPDATE nodes SET status = 'evicted', updated_at = ? WHERE id = ?")
        .bind(ts(at))
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(node_not_found(&id));
    }
    let updated = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE credentials SET revoked_at = ?, revocation_reason = ? \
         WHERE node_id = ? AND revoked_at IS NULL AND not_after > ? \
         RETURNING {CREDENTIAL_COLS}"
    )))
    .bind(ts(at))
    .bind(RevocationReason::CessationOfOperation.as_str())
    .bind(id.as_str())
    .bind(ts(at))
    .fetch_all(&mut *tx)
    .await?;
    let entries = revoked_rows(&updated)?;
    commit_with(tx, &mut ctx.log, &audit).await?;
    Ok(entries)
}

pub(crate) async fn save_policy_set(
    ctx: &mut Ctx,
    set: PolicySetRecord,
    activate: bool,
    audit: AuditRecord,
) -> Result<u64, StoreError> {
    let mut tx = begin(&mut ctx.conn).await?;
    if activate {
        sqlx::query("UPDATE policy_sets SET active = 0 WHERE active = 1")
            .execute(&mut *tx)
            .await?;
    }
    let version: i64 = sqlx::query_scalar(
        "INSERT INTO policy_sets (version, namespace, schema, policies, note, created_at, \
         created_by, active) VALUES ((SELECT COALESCE(MAX(version), 0) + 1 FROM policy_sets), \
         ?, ?, ?, ?, ?, ?, ?) RETURNING version",
    )
    .bind(set.namespace.as_deref())
    .bind(set.schema.as_str())
    .bind(set.policies.as_str())
    .bind(set.note.as_str())
    .bind(ts(set.created_at))
    .bind(set.created_by.as_str())
    .bind(i64::from(activate))
    .fetch_one(&mut *tx)
    .await?;
    commit_with(tx, &mut ctx.log, &audit).await?;
    u64::try_from(version).map_err(|e| rows::corrupt("policy_sets", "version", e))
}

pub(crate) async fn activate_policy_set(
    ctx: &mut Ctx,
    version: u64,
    audit: AuditRecord,
) -> Result<(), StoreError> {
    let v = i64::try_from(version).map_err(|e| StoreError::BadArgument(e.to_string()))?;
    let mut tx = begin(&mut ctx.conn).await?;
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM policy_sets WHERE version = ?")
        .bind(v)
        .fetch_optional(&mut *tx)
        .await?;
    if found.is_none() {
        return Err(StoreError::NotFound(format!(
            "policy set version {version} not found"
        )));
    }
    sqlx::query("UPDATE policy_sets SET active = CASE WHEN version = ? THEN 1 ELSE 0 END")
        .bind(v)
        .execute(&mut *tx)
        .await?;
    commit_with(tx, &mut ctx.log, &audit).await?;
    Ok(())
}

pub(crate) async fn save_policy_entities(
    ctx: &mut Ctx,
    json: String,
    at: OffsetDateTime,
    audit: AuditRecord,
) -> Result<(), StoreError> {
    let mut tx = begin(&mut ctx.conn).await?;
    sqlx::query(
        "INSERT INTO policy_entities (id, json, updated_at) VALUES (1, ?, ?) \
         ON CONFLICT (id) DO UPDATE SET json = excluded.json, updated_at = excluded.updated_at",
    )
    .bind(json.as_str())
    .bind(ts(at))
    .execute(&mut *tx)
    .await?;
    commit_with(tx, &mut ctx.log, &audit).await?;
    Ok(())
}

pub(crate) async fn create_admin(
    ctx: &mut Ctx,
    admin: Admin,
    token_hash: String,
    audit: AuditRecord,
) -> Result<(), StoreError> {
    let teams = serde_json::to_string(&admin.teams)
        .map_err(|e| StoreError::Invalid(format!("teams: {e}")))?;
    let mut tx = begin(&mut ctx.conn).await?;
    if exists(
        &mut tx,
        "SELECT 1 FROM admins WHERE name = ?",
        admin.name.as_str(),
    )
    .await?
    {
        return Err(StoreError::Conflict(format!(
            "admin {} already exists",
            admin.name
        )));
    }
    sqlx::query(
        "INSERT INTO admins (name, teams_json, description, token_hash, created_at, created_by, \
         expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(admin.name.as_str())
    .bind(teams)
    .bind(admin.description.as_str())
    .bind(token_hash)
    .bind(ts(admin.created_at))
    .bind(admin.created_by.as_str())
    .bind(admin.expires_at.map(ts))
    .execute(&mut *tx)
    .await?;
    commit_with(tx, &mut ctx.log, &audit).await?;
    Ok(())
}

pub(crate) async fn delete_admin(
    ctx: &mut Ctx,
    name: String,
    audit: AuditRecord,
) -> Result<(), StoreError> {
    let mut tx = begin(&mut ctx.conn).await?;
    let done = sqlx::query("DELETE FROM admins WHERE name = ?")
        .bind(name.as_str())
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("admin {name} not found")));
    }
    commit_with(tx, &mut ctx.log, &audit).await?;
    Ok(())
}

pub(crate) async fn create_federation(
    ctx: &mut Ctx,
    f: Federation,
    audit: AuditRecord,
) -> Result<(), StoreError> {
    let mut tx = begin(&mut ctx.conn).await?;
    if exists(
        &mut tx,
        "SELECT 1 FROM federations WHERE trust_domain = ?",
        f.trust_domain.as_str(),
    )
    .await?
    {
        return Err(StoreError::Conflict(format!(
            "a federation with {} already exists",
            f.trust_domain
        )));
    }
    let endpoint_id = match &f.profile {
        BundleProfile::HttpsWeb => None,
        BundleProfile::HttpsSpiffe { endpoint_spiffe_id } => {
            Some(endpoint_spiffe_id.as_str().to_owned())
        }
    };
    let b = f.bundle.as_ref();
    let signed = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
    sqlx::query(
        "INSERT INTO federations (trust_domain, bundle_endpoint, profile, endpoint_spiffe_id, \
         tls_roots_pem, created_at, created_by, bundle_document, bundle_sequence, \
         bundle_refresh_hint, bundle_fetched_at, last_error, last_attempt_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(f.trust_domain.as_str())
    .bind(f.bundle_endpoint.as_str())
    .bind(f.profile.name())
    .bind(endpoint_id)
    .bind(f.tls_roots_pem.as_deref())
    .bind(ts(f.created_at))
    .bind(f.created_by.as_str())
    .bind(b.map(|b| b.document.as_str()))
    .bind(signed(b.and_then(|b| b.sequence)))
    .bind(signed(b.and_then(|b| b.refresh_hint_seconds)))
    .bind(b.map(|b| ts(b.fetched_at)))
    .bind(f.last_error.as_deref())
    .bind(f.last_attempt_at.map(ts))
    .execute(&mut *tx)
    .await?;
    commit_with(tx, &mut ctx.log, &audit).await?;
    Ok(())
}

pub(crate) async fn delete_federation(
    ctx: &mut Ctx,
    td: String,
    audit: AuditRecord,
) -> Result<(), StoreError> {
    let mut tx = begin(&mut ctx.conn).await?;
    let done = sqlx::query("DELETE FROM federations WHERE trust_domain = ?")
        .bind(td.as_str())
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no federation with {td}")));
    }
    commit_with(tx, &mut ctx.log, &audit).await?;
    Ok(())
}

/// A refresh's outcome: a new bundle (with its audit record when it
/// changed) or the reason it failed.
pub(crate) async fn record_federation_refresh(
    ctx: &mut Ctx,
    td: String,
    at: OffsetDateTime,
    outcome: Result<FederatedBundle, String>,
    audit: Option<AuditRecord>,
) -> Result<(), StoreError> {
    let mut tx = begin(&mut ctx.conn).await?;
    let signed = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
    let done =
        match &outcome {
            Ok(b) => {
                sqlx::query(
                    "UPDATE federations SET bundle_document = ?, bundle_sequence = ?, \
                 bundle_refresh_hint = ?, bundle_fetched_at = ?, last_error = NULL, \
                 last_attempt_at = ? WHERE trust_domain = ?",
                )
                .bind(b.document.as_str())
                .bind(signed(b.sequence))
                .bind(signed(b.refresh_hint_seconds))
                .bind(ts(b.fetched_at))
                .bind(ts(at))
                .bind(td.as_str())
                .execute(&mut *tx)
                .await?
            }
            Err(why) => sqlx::query(
                "UPDATE federations SET last_error = ?, last_attempt_at = ? WHERE trust_domain = ?",
            )
            .bind(why.as_str())
            .bind(ts(at))
            .bind(td.as_str())
            .execute(&mut *tx)
            .await?,
        };
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no federation with {td}")));
    }
    match audit {
        Some(a) => {
            commit_with(tx, &mut ctx.log, &a).await?;
        }
        None => tx.commit().await?,
    }
    Ok(())
}

fn delegation_not_found(id: &DelegationId) -> StoreError {
    StoreError::NotFound(format!("no delegation {id}"))
}

async fn delegation_in(
    conn: &mut SqliteConnection,
    id: &DelegationId,
) -> Result<Option<Delegation>, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {DELEGATION_COLS} FROM delegations WHERE id = ?"
    )))
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(rows::delegation).transpose()
}

pub(crate) async fn create_delegation(
    ctx: &mut Ctx,
    d: Delegation,
    audit: AuditRecord,
) -> Result<(), StoreError> {
    let json = |v: serde_json::Value| v.to_string();
    let chain = serde_json::to_value(&d.chain).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let principal = grantor_json(&d.principal)?;
    let grantor = grantor_json(&d.grantor)?;
    let max_uses = d
        .mandate
        .max_uses
        .map(|u| i64::try_from(u).map_err(|e| StoreError::Invalid(format!("max uses: {e}"))))
        .transpose()?;
    let mut tx = begin(&mut ctx.conn).await?;
    if let Some(parent) = &d.parent {
        // a revoked parent's subtree is revoked: nothing new may join it
        match delegation_in(&mut tx, parent).await? {
            None => return Err(delegation_not_found(parent)),
            Some(p) if p.revoked_at.is_some() => {
                return Err(StoreError::Conflict(format!(
                    "delegation {parent} has been revoked"
                )));
            }
            Some(p) if !d.path().starts_with(&p.path()) => {
                return Err(StoreError::BadArgument(format!(
                    "the chain of {} does not extend its parent's",
                    d.id
                )));
            }
            Some(_) => {}
        }
    }
    if delegation_in(&mut tx, &d.id).await?.is_some() {
        return Err(StoreError::Conflict(format!(
            "delegation {} already exists",
            d.id
        )));
    }
    sqlx::query(
        "INSERT INTO delegations (id, parent_id, path, chain_json, principal_json, grantor_json, \
         grantee, scopes_json, audiences_json, max_token_ttl_seconds, max_depth, not_before, \
         expires_at, max_uses, uses, note, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(d.id.as_str())
    .bind(d.parent.as_ref().map(DelegationId::as_str))
    .bind(d.path())
    .bind(json(chain))
    .bind(principal)
    .bind(grantor)
    .bind(d.grantee.as_str())
    .bind(scopes_json(&d.mandate.scopes)?)
    .bind(json(serde_json::json!(d.mandate.audiences)))
    .bind(i64::from(d.mandate.max_token_ttl_seconds))
    .bind(i64::from(d.mandate.max_depth))
    .bind(ts(d.mandate.not_before))
    .bind(ts(d.mandate.expires_at))
    .bind(max_uses)
    .bind(i64::try_from(d.uses).unwrap_or(i64::MAX))
    .bind(d.note.as_str())
    .bind(ts(d.created_at))
    .execute(&mut *tx)
    .await?;
    commit_with(tx, &mut ctx.log, &audit).await?;
    Ok(())
}

pub(crate) async fn record_delegated(
    ctx: &mut Ctx,
    id: DelegationId,
    cred: IssuedCredential,
    audit: AuditRecord,
) -> Result<(), StoreError> {
    let mut tx = begin(&mut ctx.conn).await?;
    // counted only while usable: the check and the count are one statement
    let done = sqlx::query(
        "UPDATE delegations SET uses = uses + 1 \
         WHERE id = ? AND revoked_at IS NULL AND (max_uses IS NULL OR uses < max_uses)",
    )
    .bind(id.as_str())
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(match delegation_in(&mut tx, &id).await? {
            None => delegation_not_found(&id),
            Some(d) if d.revoked_at.is_some() => {
                StoreError::Conflict(format!("delegation {id} has been revoked"))
            }
            Some(_) => StoreError::Conflict(format!("delegation {id} is used up")),
        });
    }
    sqlx::query(
        "INSERT INTO credentials (serial, kind, identity_id, spiffe_id, issuer, not_before, \
         not_after, key_fingerprint, node_id, delegation_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(cred.serial.as_str())
    .bind(cred.kind.as_str())
    .bind(cred.identity_id.as_str())
    .bind(cred.spiffe_id.as_str())
    .bind(cred.issuer.as_str())
    .bind(ts(cred.not_before))
    .bind(ts(cred.not_after))
    .bind(cred.key_fingerprint.as_deref())
    .bind(cred.node_id.as_ref().map(|n| n.as_str()))
    .bind(id.as_str())
    .execute(&mut *tx)
    .await
    .map_err(|e| match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(format!("a credential with serial {} exists", cred.serial))
        }
        other => other.into(),
    })?;
    sqlx::query("UPDATE identities SET last_issued_at = ? WHERE id = ?")
        .bind(ts(audit.time))
        .bind(cred.identity_id.as_str())
        .execute(&mut *tx)
        .await?;
    commit_with(tx, &mut ctx.log, &audit).await?;
    Ok(())
}

pub(crate) async fn revoke_delegation(
    ctx: &mut Ctx,
    id: DelegationId,
    reason: String,
    at: OffsetDateTime,
    audit: AuditRecord,
) -> Result<(Vec<DelegationId>, Vec<RevokedEntry>), StoreError> {
    let at = truncate_ts(at);
    let mut tx = begin(&mut ctx.conn).await?;
    let Some(d) = delegation_in(&mut tx, &id).await? else {
        return Err(delegation_not_found(&id));
    };
    if d.revoked_at.is_some() {
        // idempotent: its subtree was revoked with it
        tx.rollback().await?;
        return Ok((Vec::new(), Vec::new()));
    }
    // the subtree: this grant and every grant whose path extends its own
    let path = d.path();
    let len = i64::try_from(path.len()).unwrap_or(i64::MAX);
    let grants: Vec<String> = sqlx::query_scalar(
        "UPDATE delegations SET revoked_at = ?, revocation_reason = ? \
         WHERE substr(path, 1, ?) = ? AND revoked_at IS NULL RETURNING id",
    )
    .bind(ts(at))
    .bind(reason.as_str())
    .bind(len)
    .bind(path.as_str())
    .fetch_all(&mut *tx)
    .await?;
    let updated = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE credentials SET revoked_at = ?, revocation_reason = ? \
         WHERE delegation_id IN (SELECT id FROM delegations WHERE substr(path, 1, ?) = ?) \
         AND revoked_at IS NULL AND not_after > ? RETURNING {CREDENTIAL_COLS}"
    )))
    .bind(ts(at))
    .bind(RevocationReason::PrivilegeWithdrawn.as_str())
    .bind(len)
    .bind(path.as_str())
    .bind(ts(at))
    .fetch_all(&mut *tx)
    .await?;
    let entries = revoked_rows(&updated)?;
    commit_with(tx, &mut ctx.log, &audit).await?;
    let mut ids = grants
        .iter()
        .map(|g| DelegationId::parse(g).map_err(|e| rows::corrupt("delegations", "id", e)))
        .collect::<Result<Vec<_>, _>>()?;
    ids.sort();
    Ok((ids, entries))
}
