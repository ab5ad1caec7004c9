//! Appending audit events to the Merkle log inside a write transaction.
//!
//! The writer task owns the log's frontier ([`CompactRange`]). A mutation
//! stages its events on a copy of the frontier, writes the leaves and every
//! node that became complete in its own transaction, and replaces the
//! frontier only after the commit succeeded: a failed transaction leaves
//! neither rows nor a changed frontier behind.

use credence_audit::{AuditEvent, CompactRange, Hash, NodeId, hash_leaf};
use sqlx::QueryBuilder;
use sqlx::sqlite::{Sqlite, SqliteConnection};

use super::rows::ts;
use crate::StoreError;

/// Rows per multi-row INSERT (8 columns).
const ROWS_PER_INSERT: usize = 500;

/// The writer task's state: the write connection and the log frontier.
pub(crate) struct Ctx {
    pub(crate) conn: SqliteConnection,
    pub(crate) log: CompactRange,
}

struct LeafRow {
    idx: i64,
    leaf: Vec<u8>,
    at: i64,
    actor: String,
    action: String,
    target: String,
    outcome: &'static str,
    spiffe_id: Option<String>,
}

/// Events staged for one transaction.
pub(crate) struct Staged {
    pub(crate) log: CompactRange,
    leaves: Vec<LeafRow>,
    nodes: Vec<(NodeId, Hash)>,
}

fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid(format!("{what} {v} out of range")))
}

impl Staged {
    pub(crate) fn new(log: &CompactRange) -> Self {
        Self {
            log: log.clone(),
            leaves: Vec::new(),
            nodes: Vec::new(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// Stages one event; returns its index in the log.
    pub(crate) fn push(&mut self, ev: &AuditEvent) -> Result<u64, StoreError> {
        let leaf = ev
            .leaf_bytes()
            .map_err(|e| StoreError::BadArgument(format!("audit event: {e}")))?;
        let idx = self.log.size();
        let nodes = self
            .log
            .append(hash_leaf(&leaf))
            .map_err(|e| StoreError::Invalid(format!("audit log: {e}")))?;
        self.nodes.extend(nodes);
        let spiffe_id = ev
            .issuance
            .as_ref()
            .map(|i| i.spiffe_id.clone())
            .or_else(|| {
                ev.target
                    .starts_with("spiffe://")
                    .then(|| ev.target.clone())
            });
        self.leaves.push(LeafRow {
            idx: to_i64(idx, "audit index")?,
            leaf,
            at: ts(ev.time),
            actor: ev.actor.id.clone(),
            action: ev.action.clone(),
            target: ev.target.clone(),
            outcome: match ev.outcome {
                credence_audit::Outcome::Success => "success",
                credence_audit::Outcome::Failure => "failure",
            },
            spiffe_id,
        });
        Ok(idx)
    }

    /// Writes the staged leaves and nodes (inside the caller's transaction).
    pub(crate) async fn write(&self, conn: &mut SqliteConnection) -> Result<(), StoreError> {
        for chunk in self.leaves.chunks(ROWS_PER_INSERT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO audit_log (idx, leaf, at, actor, action, target, outcome, spiffe_id) ",
            );
            qb.push_values(chunk, |mut b, r| {
                b.push_bind(r.idx)
                    .push_bind(r.leaf.as_slice())
                    .push_bind(r.at)
                    .push_bind(r.actor.as_str())
                    .push_bind(r.action.as_str())
                    .push_bind(r.target.as_str())
                    .push_bind(r.outcome)
                    .push_bind(r.spiffe_id.as_deref());
            });
            qb.build().execute(&mut *conn).await?;
        }
        for chunk in self.nodes.chunks(ROWS_PER_INSERT * 2) {
            let mut qb = QueryBuilder::<Sqlite>::new("INSERT INTO audit_nodes (level, idx, hash) ");
            let mut rows = Vec::with_capacity(chunk.len());
            for ((level, idx), hash) in chunk {
                rows.push((i64::from(*level), to_i64(*idx, "node index")?, hash));
            }
            qb.push_values(rows, |mut b, (level, idx, hash)| {
                b.push_bind(level).push_bind(idx).push_bind(hash.as_slice());
            });
            qb.build().execute(&mut *conn).await?;
        }
        Ok(())
    }
}

/// Loads the frontier of the stored tree. Its size is the number of leaf
/// hashes (level-0 nodes), not of leaf rows: the nodes are the tree as it
/// was appended, so rows edited or inserted later cannot move it.
pub(crate) async fn load_frontier(conn: &mut SqliteConnection) -> Result<CompactRange, StoreError> {
    let size: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_nodes WHERE level = 0")
            .fetch_one(&mut *conn)
            .await?;
    let size = u64::try_from(size).unwrap_or(0);
    let mut peaks = Vec::new();
    for (level, idx) in credence_audit::peak_nodes(size) {
        let h: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT hash FROM audit_nodes WHERE level = ? AND idx = ?")
                .bind(i64::from(level))
                .bind(to_i64(idx, "node index")?)
                .fetch_optional(&mut *conn)
                .await?;
        let h = h.ok_or_else(|| {
            StoreError::Invalid(format!(
                "audit log: node ({level}, {idx}) of a {size}-leaf tree is missing"
            ))
        })?;
        let h: Hash = h.as_slice().try_into().map_err(|_| {
            StoreError::Invalid(format!("audit log: node ({level}, {idx}) is not 32 bytes"))
        })?;
        peaks.push(h);
    }
    CompactRange::from_peaks(size, peaks)
        .map_err(|e| StoreError::Invalid(format!("audit log: {e}")))
}
