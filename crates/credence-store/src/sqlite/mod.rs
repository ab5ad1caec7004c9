//! The SQLite backend. See the crate docs for the design.

mod log;
mod migrations;
mod ops;
mod rows;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use credence_core::{
    Admin, AdminName, Delegation, DelegationId, FederatedBundle, Federation, Identity, IdentityId,
    JoinToken, Node, RevocationReason, SpiffeId, TrustDomain,
};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, ConnectOptions, QueryBuilder};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use self::rows::{
    ADMIN_COLS, AUDIT_COLS, CA_COLS, CREDENTIAL_COLS, DELEGATION_COLS, FEDERATION_COLS,
    IDENTITY_COLS, NODE_COLS, POLICY_COLS, ts,
};
pub use self::writer::GROUP_COMMIT_MAX;
use self::writer::{BoxFuture, IssueRequest, Msg, WriteOp};
use crate::{
    AuditFilter, AuditRecord, CaRecord, CredentialKind, DelegationFilter, Durability, Hash,
    IdentityFilter, IssuedCredential, NodeId, Page, PolicySetRecord, RevokedEntry, Store,
    StoreError,
};

/// Requests that may wait for the writer before senders are slowed down.
const WRITE_QUEUE: usize = 4_096;
/// Read connections (WAL readers never wait for the writer).
const READ_CONNECTIONS: u32 = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the background task checkpoints the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// WAL size kept after a checkpoint resets it.
const WAL_SIZE_LIMIT: &str = "67108864";
/// Page size bounds of the listings.
const MAX_PAGE: u32 = 1_000;
/// Most leaves one `audit_leaves` call returns.
const MAX_LEAVES: u64 = 10_000;

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    read: SqlitePool,
    writer: mpsc::Sender<Msg>,
    closed: AtomicBool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database file: WAL mode, `synchronous`
    /// per `durability`, foreign keys on, 5 s busy timeout; runs migrations.
    /// Must be called inside a Tokio runtime (it spawns the writer task).
    pub async fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Normal => SqliteSynchronous::Normal,
                Durability::Full => SqliteSynchronous::Full,
            })
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .pragma("journal_size_limit", WAL_SIZE_LIMIT);
        let cannot_open = |e: sqlx::Error| {
            StoreError::Backend(format!("cannot open database {}: {e}", path.display()))
        };
        let read = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .connect_with(options.clone())
            .await
            .map_err(cannot_open)?;
        // Migrations run once, before the writer exists, through the pool:
        // `Migrator::run(&mut SqliteConnection)` makes this future !Send
        // ("implementation of `Acquire` is not general enough"), `&Pool` does not.
        if let Err(e) = migrations::migrator().run(&read).await {
            read.close().await;
            return Err(e.into());
        }
        // The writer never checkpoints: a checkpoint copies pages into the
        // database file and syncs it, which would stall every request waiting
        // on the group commit. A background task checkpoints instead (a
        // PASSIVE checkpoint runs beside the writer in WAL mode).
        let writer_options = options.clone().pragma("wal_autocheckpoint", "0");
        let mut conn: SqliteConnection = match writer_options.connect().await {
            Ok(c) => c,
            Err(e) => {
                read.close().await;
                return Err(cannot_open(e));
            }
        };
        let log = match log::load_frontier(&mut conn).await {
            Ok(l) => l,
            Err(e) => {
                read.close().await;
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(writer::run(log::Ctx { conn, log }, rx));
        tokio::spawn(checkpointer(read.clone()));
        Ok(Self {
            read,
            writer: tx,
            closed: AtomicBool::new(false),
        })
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    /// Runs `f` on the write connection, in the writer task.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut log::Ctx) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        self.check_open()?;
        let (reply, answer) = oneshot::channel();
        let op: WriteOp = Box::new(move |conn| {
            Box::pin(async move {
                let _ = reply.send(f(conn).await);
            })
        });
        self.writer
            .send(Msg::Op(op))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// Checkpoints the WAL periodically until the pool closes.
async fn checkpointer(pool: SqlitePool) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

fn clamp_limit(limit: u32) -> u32 {
    limit.clamp(1, MAX_PAGE)
}

/// Cursor: hex of `v1:<created_at>:<id>` of the last item of a page.
fn encode_cursor(identity: &Identity) -> String {
    hex::encode(format!("v1:{}:{}", ts(identity.created_at), identity.id))
}

fn decode_cursor(cursor: &str) -> Result<(i64, IdentityId), StoreError> {
    let bad = || StoreError::BadArgument("invalid cursor".to_owned());
    let raw = hex::decode(cursor).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let rest = raw.strip_prefix("v1:").ok_or_else(bad)?;
    let (at, id) = rest.split_once(':').ok_or_else(bad)?;
    let at: i64 = at.parse().map_err(|_| bad())?;
    let id = IdentityId::parse(id).map_err(|_| bad())?;
    Ok((at, id))
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create_identity(
        &self,
        identity: &Identity,
        audit: AuditRecord,
    ) -> Result<(), StoreError> {
        let identity = identity.clone();
        self.write(move |c| Box::pin(ops::create_identity(c, identity, audit)))
            .await
    }

    async fn get_identity(&self, id: &IdentityId) -> Result<Option<Identity>, StoreError> {
        self.check_open()?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {IDENTITY_COLS} FROM identities WHERE id = ?"
        )))
        .bind(id.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(rows::identity).transpose()
    }

    async fn get_identity_by_spiffe_id(
        &self,
        spiffe_id: &SpiffeId,
    ) -> Result<Option<Identity>, StoreError> {
        self.check_open()?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {IDENTITY_COLS} FROM identities WHERE spiffe_id = ?"
        )))
        .bind(spiffe_id.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(rows::identity).transpose()
    }

    async fn list_identities(
        &self,
        filter: &IdentityFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Identity>, StoreError> {
        self.check_open()?;
        let limit = clamp_limit(limit);
        let after = cursor.map(decode_cursor).transpose()?;
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {IDENTITY_COLS} FROM identities WHERE 1 = 1"
        ));
        if let Some(kind) = filter.kind {
            qb.push(" AND kind = ").push_bind(kind.as_str());
        }
        if let Some(owner) = &filter.owner {
            qb.push(" AND owner = ").push_bind(owner.as_str());
        }
        if let Some(status) = filter.status {
            qb.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(spiffe_id) = &filter.spiffe_id {
            qb.push(" AND spiffe_id = ").push_bind(spiffe_id.as_str());
        }
        for (key, value) in &filter.labels {
            qb.push(
                " AND EXISTS (SELECT 1 FROM identity_labels l \
                 WHERE l.identity_id = identities.id AND l.key = ",
            )
            .push_bind(key.as_str())
            .push(" AND l.value = ")
            .push_bind(value.as_str())
            .push(")");
        }
        if let Some((at, id)) = &after {
            qb.push(" AND (created_at > ")
                .push_bind(*at)
                .push(" OR (created_at = ")
                .push_bind(*at)
                .push(" AND id > ")
                .push_bind(id.as_str())
                .push("))");
        }
        qb.push(" ORDER BY created_at, id LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let found = qb.build().fetch_all(&self.read).await?;
        let mut items = found
            .iter()
            .map(rows::identity)
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(encode_cursor)
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    async fn update_identity(
        &self,
        identity: &Identity,
        audit: AuditRecord,
    ) -> Result<(), StoreError> {
        let identity = identity.clone();
        self.write(move |c| Box::pin(ops::update_identity(c, identity, audit)))
            .await
    }

    async fn delete_identity(&self, id: &IdentityId, audit: AuditRecord) -> Result<(), StoreError> {
        let id = id.clone();
        self.write(move |c| Box::pin(ops::delete_identity(c, id, audit)))
            .await
    }

    async fn record_issued(
        &self,
        creds: Vec<(IssuedCredential, AuditRecord)>,
    ) -> Result<(), StoreError> {
        if creds.is_empty() {
            return Ok(());
        }
        self.check_open()?;
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Msg::Issue(IssueRequest {
                creds,
                events: Vec::new(),
                reply,
            }))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?.map(|_| ())
    }

    async fn revoke_serial(
        &self,
        serial: &str,
        reason: RevocationReason,
        at: OffsetDateTime,
        audit: AuditRecord,
    ) -> Result<RevokedEntry, StoreError> {
        let serial = serial.to_owned();
        self.write(move |c| Box::pin(ops::revoke_serial(c, serial, reason, at, audit)))
            .await
    }

    async fn revoke_identity_credentials(
        &self,
        spiffe_id: &SpiffeId,
        reason: RevocationReason,
        at: OffsetDateTime,
        audit: AuditRecord,
    ) -> Result<Vec<RevokedEntry>, StoreError> {
        let spiffe_id = spiffe_id.clone();
        self.write(move |c| {
            Box::pin(ops::revoke_identity_credentials(
                c, spiffe_id, reason, at, audit,
            ))
        })
        .await
    }

    async fn list_revoked(
        &self,
        kind: CredentialKind,
        now: OffsetDateTime,
    ) -> Result<Vec<RevokedEntry>, StoreError> {
        self.check_open()?;
        let found = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CREDENTIAL_COLS} FROM credentials \
             WHERE revoked_at IS NOT NULL AND not_after > ? AND kind = ? ORDER BY serial"
        )))
        .bind(ts(now))
        .bind(kind.as_str())
        .fetch_all(&self.read)
        .await?;
        let mut out = Vec::with_capacity(found.len());
        for row in &found {
            if let (_, Some(entry)) = rows::credential(row)? {
                out.push(entry);
            }
        }
        Ok(out)
    }

    async fn is_revoked(&self, serial: &str) -> Result<bool, StoreError> {
        self.check_open()?;
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM credentials WHERE serial = ? AND revoked_at IS NOT NULL",
        )
        .bind(serial)
        .fetch_optional(&self.read)
        .await?;
        Ok(found.is_some())
    }

    async fn revoked_among(&self, serials: &[String]) -> Result<Vec<String>, StoreError> {
        self.check_open()?;
        let mut out = Vec::new();
        for chunk in serials.chunks(500) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT serial FROM credentials WHERE revoked_at IS NOT NULL AND serial IN (",
            );
            let mut list = qb.separated(", ");
            for s in chunk {
                list.push_bind(s.as_str());
            }
            qb.push(")");
            let found: Vec<String> = qb.build_query_scalar().fetch_all(&self.read).await?;
            out.extend(found);
        }
        out.sort();
        Ok(out)
    }

    async fn get_credential(
        &self,
        serial: &str,
    ) -> Result<Option<(IssuedCredential, Option<RevokedEntry>)>, StoreError> {
        self.check_open()?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CREDENTIAL_COLS} FROM credentials WHERE serial = ?"
        )))
        .bind(serial)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(rows::credential).transpose()
    }

    async fn prune_expired(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        self.write(move |c| Box::pin(ops::prune_expired(c, before)))
            .await
    }

    async fn create_join_token(
        &self,
        token: &JoinToken,
        audit: AuditRecord,
    ) -> Result<(), StoreError> {
        let token = token.clone();
        self.write(move |c| Box::pin(ops::create_join_token(c, token, audit)))
            .await
    }

    async fn redeem_join_token(
        &self,
        hash: &str,
        at: OffsetDateTime,
        node: &Node,
        audit: AuditRecord,
    ) -> Result<JoinToken, StoreError> {
        let (hash, node) = (hash.to_owned(), node.clone());
        self.write(move |c| Box::pin(ops::redeem_join_token(c, hash, at, node, audit)))
            .await
    }

    async fn attest_node(&self, node: &Node, audit: AuditRecord) -> Result<Node, StoreError> {
        let node = node.clone();
        self.write(move |c| Box::pin(ops::attest_node(c, node, audit)))
            .await
    }

    async fn get_join_token(&self, id: &str) -> Result<Option<JoinToken>, StoreError> {
        self.check_open()?;
        let row = sqlx::query(
            "SELECT hash, id, created_at, expires_at, used_at, node_id FROM join_tokens \
             WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(rows::join_token).transpose()
    }

    async fn get_node(&self, id: &credence_core::NodeId) -> Result<Option<Node>, StoreError> {
        self.check_open()?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {NODE_COLS} FROM nodes WHERE id = ?"
        )))
        .bind(id.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(rows::node).transpose()
    }

    async fn list_nodes(&self) -> Result<Vec<Node>, StoreError> {
        self.check_open()?;
        let found = sqlx::query(AssertSqlSafe(format!(
            "SELECT {NODE_COLS} FROM nodes ORDER BY created_at, id"
        )))
        .fetch_all(&self.read)
        .await?;
        found.iter().map(rows::node).collect()
    }

    async fn set_node_svid(
        &self,
        id: &credence_core::NodeId,
        serial: &str,
        not_after: OffsetDateTime,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let (id, serial) = (id.clone(), serial.to_owned());
        self.write(move |c| Box::pin(ops::set_node_svid(c, id, serial, not_after, at)))
            .await
    }

    async fn evict_node(
        &self,
        id: &credence_core::NodeId,
        at: OffsetDateTime,
        audit: AuditRecord,
    ) -> Result<Vec<RevokedEntry>, StoreError> {
        let id = id.clone();
        self.write(move |c| Box::pin(ops::evict_node(c, id, at, audit)))
            .await
    }

    async fn save_policy_set(
        &self,
        set: &PolicySetRecord,
        activate: bool,
        audit: AuditRecord,
    ) -> Result<u64, StoreError> {
        let set = set.clone();
        self.write(move |c| Box::pin(ops::save_policy_set(c, set, activate, audit)))
            .await
    }

    async fn activate_policy_set(
        &self,
        version: u64,
        audit: AuditRecord,
    ) -> Result<(), StoreError> {
        self.write(move |c| Box::pin(ops::activate_policy_set(c, version, audit)))
            .await
    }

    async fn get_policy_set(&self, version: u64) -> Result<Option<PolicySetRecord>, StoreError> {
        self.check_open()?;
        let Ok(v) = i64::try_from(version) else {
            return Ok(None);
        };
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {POLICY_COLS} FROM policy_sets WHERE version = ?"
        )))
        .bind(v)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(rows::policy_set).transpose()
    }

    async fn active_policy_set(&self) -> Result<Option<PolicySetRecord>, StoreError> {
        self.check_open()?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {POLICY_COLS} FROM policy_sets WHERE active = 1"
        )))
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(rows::policy_set).transpose()
    }

    async fn list_policy_sets(&self, limit: u32) -> Result<Vec<PolicySetRecord>, StoreError> {
        self.check_open()?;
        let found = sqlx::query(AssertSqlSafe(format!(
            "SELECT {POLICY_COLS} FROM policy_sets ORDER BY version DESC LIMIT ?"
        )))
        .bind(i64::from(clamp_limit(limit)))
        .fetch_all(&self.read)
        .await?;
        found.iter().map(rows::policy_set).collect()
    }

    async fn save_policy_entities(
        &self,
        json: &str,
        at: OffsetDateTime,
        audit: AuditRecord,
    ) -> Result<(), StoreError> {
        let json = json.to_owned();
        self.write(move |c| Box::pin(ops::save_policy_entities(c, json, at, audit)))
            .await
    }

    async fn policy_entities(&self) -> Result<Option<String>, StoreError> {
        self.check_open()?;
        Ok(
            sqlx::query_scalar("SELECT json FROM policy_entities WHERE id = 1")
                .fetch_optional(&self.read)
                .await?,
        )
    }

    async fn create_delegation(
        &self,
        d: &Delegation,
        audit: AuditRecord,
    ) -> Result<(), StoreError> {
        let d = d.clone();
        self.write(move |c| Box::pin(ops::create_delegation(c, d, audit)))
            .await
    }

    async fn get_delegation(&self, id: &DelegationId) -> Result<Option<Delegation>, StoreError> {
        self.check_open()?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DELEGATION_COLS} FROM delegations WHERE id = ?"
        )))
        .bind(id.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(rows::delegation).transpose()
    }

    async fn delegation_chain(&self, id: &DelegationId) -> Result<Vec<Delegation>, StoreError> {
        let Some(last) = self.get_delegation(id).await? else {
            return Err(StoreError::NotFound(format!("no delegation {id}")));
        };
        let mut out = Vec::with_capacity(last.chain.len());
        for hop in &last.chain[..last.chain.len().saturating_sub(1)] {
            let hid = DelegationId::parse(&hop.delegation)
                .map_err(|e| rows::corrupt("delegations", "chain_json", e))?;
            let d = self.get_delegation(&hid).await?.ok_or_else(|| {
                rows::corrupt("delegations", "chain_json", format!("{hid} is missing"))
            })?;
            out.push(d);
        }
        out.push(last);
        Ok(out)
    }

    async fn list_delegations(
        &self,
        filter: &DelegationFilter,
    ) -> Result<Vec<Delegation>, StoreError> {
        self.check_open()?;
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {DELEGATION_COLS} FROM delegations WHERE 1 = 1"
        ));
        if let Some(g) = &filter.grantee {
            qb.push(" AND grantee = ").push_bind(g.as_str().to_owned());
        }
        if let Some(under) = &filter.under {
            let Some(root) = self.get_delegation(under).await? else {
                return Ok(Vec::new());
            };
            let path = root.path();
            qb.push(" AND substr(path, 1, ")
                .push_bind(i64::try_from(path.len()).unwrap_or(i64::MAX))
                .push(") = ")
                .push_bind(path);
        }
        if !filter.include_revoked {
            qb.push(" AND revoked_at IS NULL");
        }
        qb.push(" ORDER BY path LIMIT 10000");
        let found = qb.build().fetch_all(&self.read).await?;
        found.iter().map(rows::delegation).collect()
    }

    async fn record_delegated(
        &self,
        id: &DelegationId,
        cred: IssuedCredential,
        audit: AuditRecord,
    ) -> Result<(), StoreError> {
        let id = id.clone();
        self.write(move |c| Box::pin(ops::record_delegated(c, id, cred, audit)))
            .await
    }

    async fn revoke_delegation(
        &self,
        id: &DelegationId,
        reason: &str,
        at: OffsetDateTime,
        audit: AuditRecord,
    ) -> Result<(Vec<DelegationId>, Vec<RevokedEntry>), StoreError> {
        let (id, reason) = (id.clone(), reason.to_owned());
        self.write(move |c| Box::pin(ops::revoke_delegation(c, id, reason, at, audit)))
            .await
    }

    async fn create_federation(
        &self,
        federation: &Federation,
        audit: AuditRecord,
    ) -> Result<(), StoreError> {
        let f = federation.clone();
        self.write(move |c| Box::pin(ops::create_federation(c, f, audit)))
            .await
    }

    async fn get_federation(&self, td: &TrustDomain) -> Result<Option<Federation>, StoreError> {
        self.check_open()?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {FEDERATION_COLS} FROM federations WHERE trust_domain = ?"
        )))
        .bind(td.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(rows::federation).transpose()
    }

    async fn list_federations(&self) -> Result<Vec<Federation>, StoreError> {
        self.check_open()?;
        let found = sqlx::query(AssertSqlSafe(format!(
            "SELECT {FEDERATION_COLS} FROM federations ORDER BY trust_domain"
        )))
        .fetch_all(&self.read)
        .await?;
        found.iter().map(rows::federation).collect()
    }

    async fn delete_federation(
        &self,
        td: &TrustDomain,
        audit: AuditRecord,
    ) -> Result<(), StoreError> {
        let td = td.as_str().to_owned();
        self.write(move |c| Box::pin(ops::delete_federation(c, td, audit)))
            .await
    }

    async fn record_federation_refresh(
        &self,
        td: &TrustDomain,
        at: OffsetDateTime,
        outcome: Result<FederatedBundle, String>,
        audit: Option<AuditRecord>,
    ) -> Result<(), StoreError> {
        let td = td.as_str().to_owned();
        self.write(move |c| Box::pin(ops::record_federation_refresh(c, td, at, outcome, audit)))
            .await
    }

    async fn create_admin(
        &self,
        admin: &Admin,
        token_hash: &str,
        audit: AuditRecord,
    ) -> Result<(), StoreError> {
        let admin = admin.clone();
        let hash = token_hash.to_owned();
        self.write(move |c| Box::pin(ops::create_admin(c, admin, hash, audit)))
            .await
    }

    async fn admin_by_token_hash(&self, token_hash: &str) -> Result<Option<Admin>, StoreError> {
        self.check_open()?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ADMIN_COLS} FROM admins WHERE token_hash = ?"
        )))
        .bind(token_hash)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(rows::admin).transpose()
    }

    async fn get_admin(&self, name: &AdminName) -> Result<Option<Admin>, StoreError> {
        self.check_open()?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ADMIN_COLS} FROM admins WHERE name = ?"
        )))
        .bind(name.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(rows::admin).transpose()
    }

    async fn list_admins(&self) -> Result<Vec<Admin>, StoreError> {
        self.check_open()?;
        let found = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ADMIN_COLS} FROM admins ORDER BY name"
        )))
        .fetch_all(&self.read)
        .await?;
        found.iter().map(rows::admin).collect()
    }

    async fn delete_admin(&self, name: &AdminName, audit: AuditRecord) -> Result<(), StoreError> {
        let name = name.as_str().to_owned();
        self.write(move |c| Box::pin(ops::delete_admin(c, name, audit)))
            .await
    }

    async fn save_ca(&self, ca: &CaRecord, audit: AuditRecord) -> Result<(), StoreError> {
        let ca = ca.clone();
        self.write(move |c| Box::pin(ops::save_ca(c, ca, audit)))
            .await
    }

    async fn set_ca_active(
        &self,
        id: &str,
        active: bool,
        audit: AuditRecord,
    ) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.write(move |c| Box::pin(ops::set_ca_active(c, id, active, audit)))
            .await
    }

    async fn list_cas(&self) -> Result<Vec<CaRecord>, StoreError> {
        self.check_open()?;
        let found = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CA_COLS} FROM cas ORDER BY created_at, id"
        )))
        .fetch_all(&self.read)
        .await?;
        found.iter().map(rows::ca).collect()
    }

    async fn next_crl_number(&self, issuer: &str) -> Result<u64, StoreError> {
        let issuer = issuer.to_owned();
        self.write(move |c| Box::pin(ops::next_crl_number(c, issuer)))
            .await
    }

    async fn append_audit(&self, audit: AuditRecord) -> Result<u64, StoreError> {
        // group-committed with concurrent issuances and appends
        self.check_open()?;
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Msg::Issue(IssueRequest {
                creds: Vec::new(),
                events: vec![audit],
                reply,
            }))
            .await
            .map_err(|_| StoreError::Closed)?;
        let idx = answer.await.map_err(|_| StoreError::Closed)??;
        idx.first()
            .copied()
            .ok_or_else(|| StoreError::Invalid("append returned no index".into()))
    }

    async fn audit_count(&self) -> Result<u64, StoreError> {
        self.check_open()?;
        let n: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_log")
            .fetch_one(&self.read)
            .await?;
        u64::try_from(n).map_err(|e| StoreError::Invalid(format!("audit count {n}: {e}")))
    }

    async fn list_audit(
        &self,
        start: u64,
        limit: u32,
    ) -> Result<Vec<(u64, AuditRecord)>, StoreError> {
        self.check_open()?;
        let start = i64::try_from(start).unwrap_or(i64::MAX);
        let found = sqlx::query(AssertSqlSafe(format!(
            "SELECT {AUDIT_COLS} FROM audit_log WHERE idx >= ? ORDER BY idx LIMIT ?"
        )))
        .bind(start)
        .bind(i64::from(clamp_limit(limit)))
        .fetch_all(&self.read)
        .await?;
        found.iter().map(rows::audit).collect()
    }

    async fn append_audit_batch(&self, events: Vec<AuditRecord>) -> Result<Vec<u64>, StoreError> {
        self.check_open()?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Msg::Issue(IssueRequest {
                creds: Vec::new(),
                events,
                reply,
            }))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn audit_head(&self) -> Result<(u64, Hash), StoreError> {
        self.write(|ctx| Box::pin(async move { Ok((ctx.log.size(), ctx.log.root())) }))
            .await
    }

    async fn audit_leaves(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.check_open()?;
        let end = end.min(start.saturating_add(MAX_LEAVES));
        if end <= start {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT idx, leaf FROM audit_log WHERE idx >= ? AND idx < ? ORDER BY idx",
        )
        .bind(i64::try_from(start).unwrap_or(i64::MAX))
        .bind(i64::try_from(end).unwrap_or(i64::MAX))
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|(i, leaf)| {
                u64::try_from(i)
                    .map(|i| (i, leaf))
                    .map_err(|e| rows::corrupt("audit_log", "idx", e))
            })
            .collect()
    }

    async fn audit_nodes(&self, ids: &[NodeId]) -> Result<Vec<Option<Hash>>, StoreError> {
        self.check_open()?;
        let mut out = Vec::with_capacity(ids.len());
        // a proof needs O(log n) nodes; one statement per 400 keeps the
        // parameter count small
        for chunk in ids.chunks(400) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT level, idx, hash FROM audit_nodes WHERE (level, idx) IN (",
            );
            let mut sep = qb.separated(", ");
            for (level, idx) in chunk {
                sep.push("(")
                    .push_bind_unseparated(i64::from(*level))
                    .push_unseparated(", ")
                    .push_bind_unseparated(i64::try_from(*idx).unwrap_or(i64::MAX))
                    .push_unseparated(")");
            }
            qb.push(")");
            let rows: Vec<(i64, i64, Vec<u8>)> = qb.build_query_as().fetch_all(&self.read).await?;
            let mut found = std::collections::HashMap::with_capacity(rows.len());
            for (level, idx, hash) in rows {
                let h: Hash = hash.as_slice().try_into().map_err(|_| {
                    StoreError::Invalid(format!("audit node ({level}, {idx}) is not 32 bytes"))
                })?;
                found.insert((level, idx), h);
            }
            for (level, idx) in chunk {
                let key = (i64::from(*level), i64::try_from(*idx).unwrap_or(i64::MAX));
                out.push(found.get(&key).copied());
            }
        }
        Ok(out)
    }

    async fn save_checkpoint(
        &self,
        size: u64,
        note: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let note = note.to_owned();
        let size = i64::try_from(size)
            .map_err(|_| StoreError::BadArgument(format!("checkpoint size {size}")))?;
        self.write(move |ctx| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO audit_checkpoints (size, note, created_at) VALUES (?, ?, ?) \
                     ON CONFLICT (size) DO NOTHING",
                )
                .bind(size)
                .bind(note)
                .bind(ts(at))
                .execute(&mut ctx.conn)
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.check_open()?;
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT size, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1")
                .fetch_optional(&self.read)
                .await?;
        row.map(|(n, note)| {
            u64::try_from(n)
                .map(|n| (n, note))
                .map_err(|e| rows::corrupt("audit_checkpoints", "size", e))
        })
        .transpose()
    }

    async fn checkpoints(&self, from: u64, to: u64) -> Result<Vec<(u64, String)>, StoreError> {
        self.check_open()?;
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT size, note FROM audit_checkpoints WHERE size >= ? AND size <= ? \
             ORDER BY size LIMIT 1000",
        )
        .bind(i64::try_from(from).unwrap_or(i64::MAX))
        .bind(i64::try_from(to).unwrap_or(i64::MAX))
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|(n, note)| {
                u64::try_from(n)
                    .map(|n| (n, note))
                    .map_err(|e| rows::corrupt("audit_checkpoints", "size", e))
            })
            .collect()
    }

    async fn search_audit(
        &self,
        filter: &AuditFilter,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<(u64, AuditRecord)>, StoreError> {
        self.check_open()?;
        let mut qb =
            QueryBuilder::<Sqlite>::new(format!("SELECT {AUDIT_COLS} FROM audit_log WHERE 1 = 1"));
        if let Some(a) = after {
            qb.push(" AND idx > ")
                .push_bind(i64::try_from(a).unwrap_or(i64::MAX));
        }
        if let Some(a) = &filter.action {
            qb.push(" AND action = ").push_bind(a.clone());
        }
        if let Some(o) = filter.outcome {
            qb.push(" AND outcome = ").push_bind(match o {
                crate::Outcome::Success => "success",
                crate::Outcome::Failure => "failure",
            });
        }
        if let Some(s) = &filter.spiffe_id {
            qb.push(" AND (spiffe_id = ")
                .push_bind(s.clone())
                .push(" OR target = ")
                .push_bind(s.clone())
                .push(")");
        }
        if let Some(t) = &filter.target {
            qb.push(" AND target = ").push_bind(t.clone());
        }
        if let Some(t) = filter.since {
            qb.push(" AND at >= ").push_bind(ts(t));
        }
        if let Some(t) = filter.until {
            qb.push(" AND at < ").push_bind(ts(t));
        }
        qb.push(" ORDER BY idx LIMIT ")
            .push_bind(i64::from(clamp_limit(limit)));
        let found = qb.build().fetch_all(&self.read).await?;
        found.iter().map(rows::audit).collect()
    }

    async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let (done, finished) = oneshot::channel();
        if self.writer.send(Msg::Shutdown(done)).await.is_ok() {
            let _ = finished.await;
        }
        self.read.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_rejects_garbage() {
        let (at, id) = decode_cursor(&hex::encode(format!("v1:42:{}", "a".repeat(32)))).unwrap();
        assert_eq!(at, 42);
        assert_eq!(id.as_str(), "a".repeat(32));
        for bad in [
            "",
            "zz",
            &hex::encode("v2:1:x"),
            &hex::encode("v1:x:aa"),
            &hex::encode("v1:1:bad"),
        ] {
            assert!(
                matches!(decode_cursor(bad), Err(StoreError::BadArgument(_))),
                "{bad}"
            );
        }
    }
}
