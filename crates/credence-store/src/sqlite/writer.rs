//! The writer task: sole owner of the write connection, and group commit for
//! issued credentials.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use sqlx::sqlite::Sqlite;
use sqlx::{Connection, QueryBuilder};
use tokio::sync::{mpsc, oneshot};

use super::log::{Ctx, Staged};
use super::rows::ts;
use crate::{AuditRecord, IssuedCredential, StoreError};

/// Most credentials one group-commit transaction takes from the queue (a
/// single request larger than this still commits in one transaction).
pub const GROUP_COMMIT_MAX: usize = 2_000;

/// Rows per multi-row INSERT: 9 columns x 500 = 4,500 bound parameters, far
/// under SQLite's 32,766 (and PostgreSQL's 65,535).
const ROWS_PER_INSERT: usize = 500;

pub(crate) type BoxFuture<'c, T> = Pin<Box<dyn Future<Output = T> + Send + 'c>>;

/// A mutation run by the writer task on the write connection.
pub(crate) type WriteOp = Box<dyn for<'c> FnOnce(&'c mut Ctx) -> BoxFuture<'c, ()> + Send>;

/// Work for the group commit: issued credentials with their audit events,
/// and audit events that go with no state change.
pub(crate) struct IssueRequest {
    pub(crate) creds: Vec<(IssuedCredential, AuditRecord)>,
    pub(crate) events: Vec<AuditRecord>,
    /// Answered after the commit with the log index of every event, in
    /// order (credentials' events first).
    pub(crate) reply: oneshot::Sender<Result<Vec<u64>, StoreError>>,
}

impl IssueRequest {
    fn len(&self) -> usize {
        self.creds.len() + self.events.len()
    }
}

pub(crate) enum Msg {
    Issue(IssueRequest),
    Op(WriteOp),
    Shutdown(oneshot::Sender<()>),
}

/// Runs until a `Shutdown` message arrives or every sender is gone.
pub(crate) async fn run(mut ctx: Ctx, mut rx: mpsc::Receiver<Msg>) {
    // a non-issuance message found while draining the queue for a batch; it
    // runs right after that batch commits, keeping arrival order
    let mut held: Option<Msg> = None;
    loop {
        let msg = match held.take() {
            Some(m) => m,
            None => match rx.recv().await {
                Some(m) => m,
                None => break,
            },
        };
        match msg {
            Msg::Op(op) => op(&mut ctx).await,
            Msg::Issue(first) => {
                let mut count = first.len();
                let mut batch = vec![first];
                while count < GROUP_COMMIT_MAX {
                    match rx.try_recv() {
                        Ok(Msg::Issue(req)) => {
                            count += req.len();
                            batch.push(req);
                        }
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit_group(&mut ctx, batch, count).await;
            }
            Msg::Shutdown(done) => {
                // requests queued after the shutdown get `Closed` (their
                // reply senders are dropped)
                rx.close();
                while rx.try_recv().is_ok() {}
                // leave a compact database behind (the WAL folded in)
                if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&mut ctx.conn)
                    .await
                {
                    tracing::warn!(error = %e, "final WAL checkpoint failed");
                }
                if let Err(e) = ctx.conn.close().await {
                    tracing::warn!(error = %e, "closing the SQLite write connection failed");
                }
                let _ = done.send(());
                return;
            }
        }
    }
    if let Err(e) = ctx.conn.close().await {
        tracing::warn!(error = %e, "closing the SQLite write connection failed");
    }
}

/// Writes a whole batch in one transaction and answers every caller.
async fn commit_group(ctx: &mut Ctx, batch: Vec<IssueRequest>, count: usize) {
    let all: Vec<&IssueRequest> = batch.iter().collect();
    let result = write_batch(ctx, &all).await;
    drop(all);
    tracing::trace!(
        callers = batch.len(),
        items = count,
        ok = result.is_ok(),
        "group commit"
    );
    match result {
        Ok(indices) => {
            for (req, idx) in batch.into_iter().zip(indices) {
                let _ = req.reply.send(Ok(idx));
            }
        }
        Err(StoreError::Conflict(_) | StoreError::BadArgument(_)) if batch.len() > 1 => {
            // a repeated serial or a malformed event: retry caller by caller
            // so that only the offending request fails
            for req in batch {
                let r = write_batch(ctx, &[&req]).await.map(|mut v| v.remove(0));
                let _ = req.reply.send(r);
            }
        }
        Err(e) => {
            for req in batch {
                let _ = req.reply.send(Err(e.clone()));
            }
        }
    }
}

async fn write_batch(ctx: &mut Ctx, reqs: &[&IssueRequest]) -> Result<Vec<Vec<u64>>, StoreError> {
    let creds: Vec<&(IssuedCredential, AuditRecord)> =
        reqs.iter().flat_map(|r| r.creds.iter()).collect();
    // everything that can fail before touching the database
    let mut staged = Staged::new(&ctx.log);
    let mut indices = Vec::with_capacity(reqs.len());
    for r in reqs {
        let mut own = Vec::with_capacity(r.len());
        for (_, a) in &r.creds {
            own.push(staged.push(a)?);
        }
        for e in &r.events {
            own.push(staged.push(e)?);
        }
        indices.push(own);
    }
    if staged.is_empty() {
        return Ok(indices);
    }
    let mut last_issued: BTreeMap<&str, i64> = BTreeMap::new();
    for (c, a) in &creds {
        let at = ts(a.time);
        last_issued
            .entry(c.identity_id.as_str())
            .and_modify(|v| *v = (*v).max(at))
            .or_insert(at);
    }

    let mut tx = ctx.conn.begin_with("BEGIN IMMEDIATE").await?;
    for chunk in creds.chunks(ROWS_PER_INSERT) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO credentials (serial, kind, identity_id, spiffe_id, issuer, not_before, \
             not_after, key_fingerprint, node_id) ",
        );
        qb.push_values(chunk, |mut b, (c, _)| {
            b.push_bind(c.serial.as_str())
                .push_bind(c.kind.as_str())
                .push_bind(c.identity_id.as_str())
                .push_bind(c.spiffe_id.as_str())
                .push_bind(c.issuer.as_str())
                .push_bind(ts(c.not_before))
                .push_bind(ts(c.not_after))
                .push_bind(c.key_fingerprint.as_deref())
                .push_bind(c.node_id.as_ref().map(|n| n.as_str()));
        });
        qb.build()
            .execute(&mut *tx)
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::Conflict(_) if creds.len() == 1 => StoreError::Conflict(format!(
                    "credential with serial {} is already recorded",
                    creds[0].0.serial
                )),
                StoreError::Conflict(_) => StoreError::Conflict(
                    "a credential with one of these serials is already recorded".to_owned(),
                ),
                other => other,
            })?;
    }
    staged.write(&mut tx).await?;
    for (identity_id, at) in last_issued {
        sqlx::query(
            "UPDATE identities SET last_issued_at = ? \
             WHERE id = ? AND (last_issued_at IS NULL OR last_issued_at < ?)",
        )
        .bind(at)
        .bind(identity_id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    ctx.log = staged.log;
    Ok(indices)
}
