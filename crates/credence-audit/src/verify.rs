//! Offline verification of a whole log against a signed checkpoint.

use crate::AuditError;
use crate::checkpoint::Checkpoint;
use crate::event::AuditEvent;
use crate::hash::{Hash, hash_children, hash_leaf, root_of};
use crate::note::Verifier;
use crate::tree::{CompactRange, NodeReader, range_hash, split_point};

/// What a successful [`verify_log`] established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedLog {
    /// The signed checkpoint; its first `size` leaves are now verified.
    pub checkpoint: Checkpoint,
    /// Names of the keys whose signatures on the checkpoint verified.
    pub verified_by: Vec<String>,
    /// Leaves beyond the checkpoint (decoded, but not covered by it).
    pub unverified_tail: u64,
}

fn mismatch_message(size: u64, first_bad_index: Option<u64>) -> String {
    match first_bad_index {
        Some(i) => format!(
            "the first {size} entries do not hash to the signed root; first bad index is {i}"
        ),
        None => format!(
            "the first {size} entries do not hash to the signed root; the first bad index cannot be located without the stored tree nodes"
        ),
    }
}

/// Why a log failed verification. Where the failure is tied to an entry,
/// [`VerifyFailure::first_bad_index`] names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyFailure {
    /// The checkpoint note is malformed, unsigned by a known key, or
    /// carries a bad signature.
    #[error("checkpoint signature does not verify: {0}")]
    Signature(AuditError),
    /// The signed note text is not a checkpoint.
    #[error("checkpoint is malformed: {0}")]
    Checkpoint(AuditError),
    /// Fewer entries than the checkpoint covers.
    #[error(
        "the checkpoint covers {size} entries but only {available} are present; first bad index is {first_bad_index}"
    )]
    MissingEntries {
        /// Checkpoint size.
        size: u64,
        /// Entries supplied.
        available: u64,
        /// `available` (the first missing entry), or an earlier entry when
        /// the stored nodes show that one was removed or changed (see
        /// [`verify_log_with_nodes`]).
        first_bad_index: u64,
    },
    /// An entry is not a canonical audit event.
    #[error("entry {index} is not a valid audit event: {error}")]
    BadEntry {
        /// Index of the entry.
        index: u64,
        /// Why it was refused.
        error: AuditError,
    },
    /// The entries do not hash to the signed root.
    #[error("{}", mismatch_message(*.size, *.first_bad_index))]
    RootMismatch {
        /// Checkpoint size.
        size: u64,
        /// Leftmost entry whose hash disagrees with the signed tree, when it
        /// could be located (see [`locate_first_bad_leaf`]).
        first_bad_index: Option<u64>,
    },
}

impl VerifyFailure {
    /// The first entry found to be bad, when the failure is tied to one.
    pub fn first_bad_index(&self) -> Option<u64> {
        match self {
            Self::Signature(_) | Self::Checkpoint(_) => None,
            Self::MissingEntries {
                first_bad_index, ..
            } => Some(*first_bad_index),
            Self::BadEntry { index, .. } => Some(*index),
            Self::RootMismatch {
                first_bad_index, ..
            } => *first_bad_index,
        }
    }
}

/// Streaming form of [`verify_log`]: feed the entries in order (for progress
/// reporting and bounded memory), then [`finish`](LogVerifier::finish).
#[derive(Debug, Clone)]
pub struct LogVerifier {
    checkpoint: Checkpoint,
    verified_by: Vec<String>,
    range: CompactRange,
    count: u64,
}

impl LogVerifier {
    /// Opens the checkpoint note with `verifiers` and parses it.
    pub fn new(checkpoint_note: &str, verifiers: &[Verifier]) -> Result<Self, VerifyFailure> {
        let (body, verified_by) =
            crate::note::open_note(checkpoint_note, verifiers).map_err(VerifyFailure::Signature)?;
        let checkpoint = Checkpoint::parse_body(&body).map_err(VerifyFailure::Checkpoint)?;
        Ok(Self {
            checkpoint,
            verified_by,
            range: CompactRange::new(),
            count: 0,
        })
    }

    /// The verified checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Entries fed so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Feeds the next entry: checks that it is a canonical audit event and,
    /// while within the checkpoint, hashes it into the tree.
    pub fn push(&mut self, leaf: &[u8]) -> Result<(), VerifyFailure> {
        let index = self.count;
        AuditEvent::from_leaf_bytes(leaf)
            .map_err(|error| VerifyFailure::BadEntry { index, error })?;
        if index < self.checkpoint.size {
            self.range
                .push(hash_leaf(leaf))
                .map_err(|error| VerifyFailure::BadEntry { index, error })?;
        }
        self.count = index.saturating_add(1);
        Ok(())
    }

    /// Feeds several entries at once. The canonical-decoding check and the
    /// leaf hashes are computed on every core (they are independent per
    /// entry); the tree is then extended in order, so the result is exactly
    /// that of calling [`LogVerifier::push`] for each entry.
    pub fn push_many<L: AsRef<[u8]> + Sync>(&mut self, leaves: &[L]) -> Result<(), VerifyFailure> {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 16);
        if threads == 1 || leaves.len() < 256 {
            for l in leaves {
                self.push(l.as_ref())?;
            }
            return Ok(());
        }
        let base = self.count;
        let chunk = leaves.len().div_ceil(threads);
        // each worker returns its leaf hashes or its first bad entry
        let results: Vec<Result<Vec<Hash>, VerifyFailure>> = std::thread::scope(|s| {
            let handles: Vec<_> = leaves
                .chunks(chunk)
                .enumerate()
                .map(|(c, part)| {
                    s.spawn(move || {
                        let mut out = Vec::with_capacity(part.len());
                        for (k, l) in part.iter().enumerate() {
                            let index = base + (c * chunk + k) as u64;
                            AuditEvent::from_leaf_bytes(l.as_ref())
                                .map_err(|error| VerifyFailure::BadEntry { index, error })?;
                            out.push(hash_leaf(l.as_ref()));
                        }
                        Ok(out)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(VerifyFailure::Checkpoint(AuditError::Storage(
                            "verification worker failed".into(),
                        )))
                    })
                })
                .collect()
        });
        for r in results {
            for h in r? {
                let index = self.count;
                if index < self.checkpoint.size {
                    self.range
                        .push(h)
                        .map_err(|error| VerifyFailure::BadEntry { index, error })?;
                }
                self.count = index.saturating_add(1);
            }
        }
        Ok(())
    }

    /// Checks that the checkpoint's entries were all fed and hash to its root.
    pub fn finish(self) -> Result<VerifiedLog, VerifyFailure> {
        let size = self.checkpoint.size;
        if self.count < size {
            return Err(VerifyFailure::MissingEntries {
                size,
                available: self.count,
                first_bad_index: self.count,
            });
        }
        if self.range.root() != self.checkpoint.root {
            return Err(VerifyFailure::RootMismatch {
                size,
                first_bad_index: None,
            });
        }
        Ok(VerifiedLog {
            unverified_tail: self.count - size,
            checkpoint: self.checkpoint,
            verified_by: self.verified_by,
        })
    }
}

/// Verifies a log offline: the checkpoint note's signature (by one of
/// `verifiers`), that the checkpoint size is at most the number of entries,
/// that every entry is a canonical [`AuditEvent`], and that the first `size`
/// entries hash to the signed root.
///
/// On a root mismatch the first bad index is unknown (`None`): use
/// [`verify_log_with_nodes`] or [`locate_first_bad_leaf`] with the stored
/// tree nodes to find it.
pub fn verify_log(
    leaves: &[Vec<u8>],
    checkpoint_note: &str,
    verifiers: &[Verifier],
) -> Result<VerifiedLog, VerifyFailure> {
    let mut v = LogVerifier::new(checkpoint_note, verifiers)?;
    let size = v.checkpoint.size;
    let available = u64::try_from(leaves.len()).unwrap_or(u64::MAX);
    if available < size {
        return Err(VerifyFailure::MissingEntries {
            size,
            available,
            first_bad_index: available,
        });
    }
    for leaf in leaves {
        v.push(leaf)?;
    }
    v.finish()
}

/// [`verify_log`], and when the entries do not match the signed tree (a
/// root mismatch, or missing entries), names the first bad index using the
/// log's stored tree nodes (see [`locate_first_bad_leaf`]).
pub fn verify_log_with_nodes(
    leaves: &[Vec<u8>],
    checkpoint_note: &str,
    verifiers: &[Verifier],
    claimed_nodes: &dyn NodeReader,
) -> Result<VerifiedLog, VerifyFailure> {
    let result = verify_log(leaves, checkpoint_note, verifiers);
    let locate = || -> Result<Option<u64>, VerifyFailure> {
        let checkpoint = LogVerifier::new(checkpoint_note, verifiers)?.checkpoint;
        Ok(locate_first_bad_leaf(
            leaves,
            claimed_nodes,
            &checkpoint.root,
            checkpoint.size,
        ))
    };
    match result {
        Err(VerifyFailure::RootMismatch { size, .. }) => Err(VerifyFailure::RootMismatch {
            size,
            first_bad_index: locate()?,
        }),
        Err(VerifyFailure::MissingEntries {
            size,
            available,
            first_bad_index,
        }) => Err(VerifyFailure::MissingEntries {
            size,
            available,
            first_bad_index: locate()?.unwrap_or(first_bad_index).min(first_bad_index),
        }),
        other => other,
    }
}

/// Finds the leftmost of the first `size` leaves whose hash disagrees with
/// the tree committed to by `signed_root`.
///
/// The stored nodes (`claimed_nodes`) are not trusted: the search starts at
/// the signed root and descends only through claimed nodes whose pair hashes
/// to their already-trusted parent, so each claimed node it uses is bound to
/// the signed root. At each step it recomputes the left child's hash from
/// the leaves: if that disagrees the bad leaf is on the left, otherwise on
/// the right. A missing leaf counts as bad.
///
/// Returns `None` when all leaves agree with the signed root, or when the
/// claimed nodes do not hash up to it (the store was rewritten too, or is
/// missing nodes), so no leaf can be pinned down.
pub fn locate_first_bad_leaf(
    leaves: &[Vec<u8>],
    claimed_nodes: &dyn NodeReader,
    signed_root: &Hash,
    size: u64,
) -> Option<u64> {
    if size == 0 {
        return None;
    }
    let take = usize::try_from(size)
        .unwrap_or(usize::MAX)
        .min(leaves.len());
    let hashes: Vec<Hash> = leaves.iter().take(take).map(|l| hash_leaf(l)).collect();
    let recompute = |start: u64, end: u64| -> Option<Hash> {
        let s = usize::try_from(start).ok()?;
        let e = usize::try_from(end).ok()?;
        hashes.get(s..e).map(root_of)
    };
    if recompute(0, size).as_ref() == Some(signed_root) {
        return None;
    }
    if range_hash(0, size, claimed_nodes).ok()? != *signed_root {
        return None;
    }
    let (mut start, mut end, mut trusted) = (0u64, size, *signed_root);
    while end - start > 1 {
        let mid = start + split_point(end - start);
        let left = range_hash(start, mid, claimed_nodes).ok()?;
        let right = range_hash(mid, end, claimed_nodes).ok()?;
        if hash_children(&left, &right) != trusted {
            return None;
        }
        if recompute(start, mid) != Some(left) {
            end = mid;
            trusted = left;
        } else {
            start = mid;
            trusted = right;
        }
    }
    Some(start)
}
