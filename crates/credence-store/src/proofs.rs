//! RFC 9162 proofs served from stored nodes.
//!
//! The proof algorithms of `credence-audit` read nodes through a synchronous
//! [`NodeReader`]. Which nodes they read depends only on the indices, never
//! on hash values, so a first pass with a recording reader learns the node
//! ids, one store query fetches them, and a second pass computes the proof:
//! one database round trip per proof, O(log n) nodes, no leaves rehashed.

use std::cell::RefCell;
use std::collections::HashMap;

use credence_audit::{AuditError, Hash, NodeId, NodeReader};

use crate::{Store, StoreError};

struct Recording(RefCell<Vec<NodeId>>);

impl NodeReader for Recording {
    fn node(&self, level: u8, index: u64) -> Result<Hash, AuditError> {
        self.0.borrow_mut().push((level, index));
        Ok([0u8; 32])
    }
}

struct Fetched(HashMap<NodeId, Hash>);

impl NodeReader for Fetched {
    fn node(&self, level: u8, index: u64) -> Result<Hash, AuditError> {
        self.0
            .get(&(level, index))
            .copied()
            .ok_or(AuditError::NodeMissing { level, index })
    }
}

fn audit_err(e: AuditError) -> StoreError {
    match e {
        AuditError::NodeMissing { .. } => StoreError::Invalid(format!("audit log: {e}")),
        other => StoreError::BadArgument(other.to_string()),
    }
}

async fn run<F>(store: &dyn Store, size: u64, proof: F) -> Result<Vec<Hash>, StoreError>
where
    F: Fn(&dyn NodeReader) -> Result<Vec<Hash>, AuditError>,
{
    let rec = Recording(RefCell::new(Vec::new()));
    proof(&rec).map_err(audit_err)?;
    let mut ids = rec.0.into_inner();
    ids.sort_unstable();
    ids.dedup();
    let found = store.audit_nodes(&ids).await?;
    let mut map = HashMap::with_capacity(ids.len());
    for (id, h) in ids.into_iter().zip(found) {
        if let Some(h) = h {
            map.insert(id, h);
        }
    }
    match proof(&Fetched(map)) {
        Ok(p) => Ok(p),
        Err(AuditError::NodeMissing { .. }) => {
            let (current, _) = store.audit_head().await?;
            if size > current {
                Err(StoreError::BadArgument(format!(
                    "tree size {size} is larger than the log ({current} entries)"
                )))
            } else {
                Err(StoreError::Invalid(format!(
                    "audit log: nodes of the tree of size {size} are missing"
                )))
            }
        }
        Err(e) => Err(audit_err(e)),
    }
}

/// The inclusion proof of leaf `index` in the tree of size `size`. Proofs
/// come from stored nodes only, so they can be served for every size whose
/// nodes are stored, even if leaf rows were later removed: that is what lets
/// a verifier locate tampering.
pub async fn inclusion_proof(
    store: &dyn Store,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, StoreError> {
    run(store, size, |r| {
        credence_audit::inclusion_proof(index, size, r)
    })
    .await
}

/// The consistency proof between tree sizes `from` and `to`.
pub async fn consistency_proof(
    store: &dyn Store,
    from: u64,
    to: u64,
) -> Result<Vec<Hash>, StoreError> {
    run(store, to, |r| {
        credence_audit::consistency_proof(from, to, r)
    })
    .await
}

/// The root of the tree of size `size` (a prefix of the log).
pub async fn root_at(store: &dyn Store, size: u64) -> Result<Hash, StoreError> {
    check_size(store, size).await?;
    let peaks = credence_audit::peak_nodes(size);
    let found = store.audit_nodes(&peaks).await?;
    let mut hashes = Vec::with_capacity(found.len());
    for ((level, index), h) in peaks.into_iter().zip(found) {
        hashes.push(h.ok_or_else(|| audit_err(AuditError::NodeMissing { level, index }))?);
    }
    credence_audit::CompactRange::from_peaks(size, hashes)
        .map(|r| r.root())
        .map_err(audit_err)
}

async fn check_size(store: &dyn Store, size: u64) -> Result<(), StoreError> {
    let (current, _) = store.audit_head().await?;
    if size > current {
        return Err(StoreError::BadArgument(format!(
            "tree size {size} is larger than the log ({current} entries)"
        )));
    }
    Ok(())
}
