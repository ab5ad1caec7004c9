//! Node addressing, the compact range (append frontier) and node stores.

use std::collections::{BTreeMap, HashMap};

use crate::AuditError;
use crate::hash::{Hash, fold_peaks, hash_children, hash_leaf};

/// Address of a stored node: `(level, index)`.
///
/// Level 0 holds the leaf hashes; node `(l, i)` is the root of the complete
/// subtree over leaves `[i·2^l, (i+1)·2^l)` and exists once all of those
/// leaves do. Nodes never change once they exist.
pub type NodeId = (u8, u64);

/// Read access to stored complete nodes.
///
/// Implementations return only nodes that exist (whose whole leaf range is
/// stored) and [`AuditError::NodeMissing`] otherwise; a storage failure goes
/// into [`AuditError::Storage`].
pub trait NodeReader {
    /// The hash of node `(level, index)`.
    fn node(&self, level: u8, index: u64) -> Result<Hash, AuditError>;
}

impl<T: NodeReader + ?Sized> NodeReader for &T {
    fn node(&self, level: u8, index: u64) -> Result<Hash, AuditError> {
        (**self).node(level, index)
    }
}

impl<S: std::hash::BuildHasher> NodeReader for HashMap<NodeId, Hash, S> {
    fn node(&self, level: u8, index: u64) -> Result<Hash, AuditError> {
        self.get(&(level, index))
            .copied()
            .ok_or(AuditError::NodeMissing { level, index })
    }
}

impl NodeReader for BTreeMap<NodeId, Hash> {
    fn node(&self, level: u8, index: u64) -> Result<Hash, AuditError> {
        self.get(&(level, index))
            .copied()
            .ok_or(AuditError::NodeMissing { level, index })
    }
}

/// The nodes that are the peaks of a tree of `size` leaves, largest first.
///
/// One peak per one bit of `size`, from the most significant down: a bit at
/// position `l` is a peak at level `l` whose index is the number of leaves
/// before it divided by `2^l`. For example size 13 (`0b1101`) has the peaks
/// `(3, 0)` over leaves 0..8, `(2, 2)` over 8..12 and `(0, 12)`.
///
/// A store resumes appending by reading these nodes and handing them to
/// [`CompactRange::from_peaks`] (or calling [`CompactRange::from_reader`]).
pub fn peak_nodes(size: u64) -> Vec<NodeId> {
    let mut out = Vec::with_capacity(size.count_ones() as usize);
    let mut start = 0u64;
    for level in (0u8..64).rev() {
        let width = 1u64 << level;
        if size & width != 0 {
            out.push((level, start >> level));
            start = start.saturating_add(width);
        }
    }
    out
}

/// The largest power of two strictly below `n`, for `n >= 2` (the split point
/// `k` of RFC 9162 §2.1.1). Returns 0 for `n < 2`.
pub(crate) fn split_point(n: u64) -> u64 {
    if n < 2 {
        return 0;
    }
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Hash of the subtree over leaves `[start, end)` as the Merkle Tree Hash of
/// those leaves, read from complete stored nodes.
///
/// The range must be one that the RFC 9162 recursion produces: non-empty and
/// with `start` a multiple of the smallest power of two `>= end - start`. If
/// the range is complete this is a single read; otherwise (a right-edge
/// subtree) it is one read per one bit of `end - start`.
pub(crate) fn range_hash(start: u64, end: u64, nodes: &dyn NodeReader) -> Result<Hash, AuditError> {
    let invalid = AuditError::InvalidRange { start, end };
    if end <= start {
        return Err(invalid);
    }
    let width = end - start;
    let span = width.checked_next_power_of_two().ok_or(invalid.clone())?;
    if !start.is_multiple_of(span) {
        return Err(invalid);
    }
    if width == span {
        let level = width.trailing_zeros();
        let level = u8::try_from(level).map_err(|_| invalid)?;
        return nodes.node(level, start >> level);
    }
    let mut peaks = Vec::with_capacity(width.count_ones() as usize);
    for (level, index) in peak_nodes(width) {
        // `start` is aligned to `span` > every peak width, so the offset
        // keeps each peak aligned to its own width.
        peaks.push(nodes.node(level, index + (start >> level))?);
    }
    Ok(fold_peaks(&peaks))
}

/// The frontier of an append-only Merkle tree: its size and the roots of its
/// maximal complete subtrees ("peaks"), largest first.
///
/// Appending is O(log n) and reports every node that became complete, so a
/// store can write them in the same transaction as the leaf.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompactRange {
    size: u64,
    peaks: Vec<Hash>,
}

impl CompactRange {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resumes a tree of `size` leaves from its peaks, largest first (the
    /// hashes of the nodes [`peak_nodes`]`(size)`).
    pub fn from_peaks(size: u64, peaks: Vec<Hash>) -> Result<Self, AuditError> {
        let expected = size.count_ones() as usize;
        if peaks.len() != expected {
            return Err(AuditError::PeakCount {
                size,
                expected,
                got: peaks.len(),
            });
        }
        Ok(Self { size, peaks })
    }

    /// Resumes a tree of `size` leaves by reading its peaks from a node store.
    pub fn from_reader(size: u64, nodes: &dyn NodeReader) -> Result<Self, AuditError> {
        let peaks = peak_nodes(size)
            .into_iter()
            .map(|(level, index)| nodes.node(level, index))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_peaks(size, peaks)
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The peaks, largest subtree first.
    pub fn peaks(&self) -> &[Hash] {
        &self.peaks
    }

    /// The root of the tree: the peaks folded right to left (SHA-256 of the
    /// empty string for the empty tree).
    pub fn root(&self) -> Hash {
        fold_peaks(&self.peaks)
    }

    fn append_with(
        &mut self,
        leaf_hash: Hash,
        mut emit: impl FnMut(NodeId, &Hash),
    ) -> Result<(), AuditError> {
        let index = self.size;
        let new_size = index.checked_add(1).ok_or(AuditError::TreeFull)?;
        emit((0, index), &leaf_hash);
        let mut acc = leaf_hash;
        // one merge per trailing one bit: each completes a parent
        let merges = index.trailing_ones();
        for level in 1..=merges {
            let Some(left) = self.peaks.pop() else {
                // unreachable while the peaks match the size (enforced by
                // from_peaks); refuse rather than corrupt the frontier
                return Err(AuditError::PeakCount {
                    size: self.size,
                    expected: self.size.count_ones() as usize,
                    got: self.peaks.len(),
                });
            };
            acc = hash_children(&left, &acc);
            // level <= 63 because index < u64::MAX has at most 63 trailing ones
            let level = u8::try_from(level).map_err(|_| AuditError::TreeFull)?;
            emit((level, index >> level), &acc);
        }
        self.peaks.push(acc);
        self.size = new_size;
        Ok(())
    }

    /// Appends a leaf hash and returns every node that became complete: the
    /// leaf itself `(0, index)` first, then each completed parent up the tree.
    pub fn append(&mut self, leaf_hash: Hash) -> Result<Vec<(NodeId, Hash)>, AuditError> {
        let mut out = Vec::with_capacity(1 + self.size.trailing_ones() as usize);
        self.append_with(leaf_hash, |id, h| out.push((id, *h)))?;
        Ok(out)
    }

    /// Appends a leaf hash without reporting the completed nodes.
    pub fn push(&mut self, leaf_hash: Hash) -> Result<(), AuditError> {
        self.append_with(leaf_hash, |_, _| {})
    }
}

/// A complete in-memory node store: every node of the tree, level by level.
///
/// Useful for tests, for small logs and as the model of what a database
/// store keeps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
    range: CompactRange,
}

impl MemoryTree {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree of the given leaves (leaf data, hashed with [`hash_leaf`]).
    pub fn from_leaves<I, L>(leaves: I) -> Result<Self, AuditError>
    where
        I: IntoIterator<Item = L>,
        L: AsRef<[u8]>,
    {
        let mut tree = Self::new();
        for leaf in leaves {
            tree.append_leaf(leaf.as_ref())?;
        }
        Ok(tree)
    }

    /// Appends leaf data; returns its index.
    pub fn append_leaf(&mut self, data: &[u8]) -> Result<u64, AuditError> {
        self.append_leaf_hash(hash_leaf(data))
    }

    /// Appends a leaf hash; returns its index.
    pub fn append_leaf_hash(&mut self, leaf_hash: Hash) -> Result<u64, AuditError> {
        let index = self.range.size();
        let levels = &mut self.levels;
        self.range.append_with(leaf_hash, |(level, _), hash| {
            let level = usize::from(level);
            while levels.len() <= level {
                levels.push(Vec::new());
            }
            if let Some(row) = levels.get_mut(level) {
                row.push(*hash);
            }
        })?;
        Ok(index)
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.range.size()
    }

    /// Current root.
    pub fn root(&self) -> Hash {
        self.range.root()
    }

    /// The frontier.
    pub fn compact_range(&self) -> &CompactRange {
        &self.range
    }

    /// Every stored node, level by level.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, Hash)> + '_ {
        (0u8..).zip(&self.levels).flat_map(|(level, row)| {
            (0u64..)
                .zip(row)
                .map(move |(index, hash)| ((level, index), *hash))
        })
    }
}

impl NodeReader for MemoryTree {
    fn node(&self, level: u8, index: u64) -> Result<Hash, AuditError> {
        let missing = AuditError::NodeMissing { level, index };
        let row = self.levels.get(usize::from(level)).ok_or(missing.clone())?;
        let i = usize::try_from(index).map_err(|_| missing.clone())?;
        row.get(i).copied().ok_or(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::root_of;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| hash_leaf(&i.to_be_bytes())).collect()
    }

    #[test]
    fn peaks_of_sizes() {
        assert!(peak_nodes(0).is_empty());
        assert_eq!(peak_nodes(1), vec![(0, 0)]);
        assert_eq!(peak_nodes(13), vec![(3, 0), (2, 2), (0, 12)]);
        assert_eq!(peak_nodes(u64::MAX).len(), 64);
        assert_eq!(peak_nodes(u64::MAX).first(), Some(&(63, 0)));
    }

    #[test]
    fn split_points() {
        assert_eq!(split_point(0), 0);
        assert_eq!(split_point(1), 0);
        assert_eq!(split_point(2), 1);
        assert_eq!(split_point(3), 2);
        assert_eq!(split_point(4), 2);
        assert_eq!(split_point(5), 4);
        assert_eq!(split_point(u64::MAX), 1 << 63);
    }

    #[test]
    fn append_reports_completed_nodes_and_tracks_root() {
        let l = leaves(70);
        let mut cr = CompactRange::new();
        let mut all = HashMap::new();
        assert_eq!(cr.root(), root_of(&[]));
        for (i, leaf) in (0u64..).zip(&l) {
            let nodes = cr.append(*leaf).unwrap();
            assert_eq!(nodes.len(), 1 + i.trailing_ones() as usize);
            assert_eq!(nodes[0], ((0, i), *leaf));
            for ((level, index), hash) in nodes {
                // the node covers exactly the leaves it claims
                let s = (index << level) as usize;
                let e = ((index + 1) << level) as usize;
                assert_eq!(e, i as usize + 1);
                assert_eq!(hash, root_of(&l[s..e]));
                assert!(all.insert((level, index), hash).is_none());
            }
            let size = i + 1;
            assert_eq!(cr.size(), size);
            assert_eq!(cr.root(), root_of(&l[..size as usize]));
            // the peaks are exactly the stored peak nodes
            let resumed = CompactRange::from_reader(size, &all).unwrap();
            assert_eq!(resumed, cr);
        }
    }

    #[test]
    fn from_peaks_checks_count() {
        assert!(matches!(
            CompactRange::from_peaks(3, vec![[0; 32]]),
            Err(AuditError::PeakCount {
                size: 3,
                expected: 2,
                got: 1
            })
        ));
        let mut cr = CompactRange::from_peaks(u64::MAX, vec![[0; 32]; 64]).unwrap();
        assert_eq!(cr.append([1; 32]), Err(AuditError::TreeFull));
    }

    #[test]
    fn range_hash_reads_complete_and_partial_ranges() {
        let l = leaves(70);
        let tree = MemoryTree::from_leaves((0u64..70).map(|i| i.to_be_bytes())).unwrap();
        assert_eq!(tree.root(), root_of(&l));
        assert_eq!(range_hash(0, 70, &tree).unwrap(), root_of(&l));
        assert_eq!(range_hash(64, 70, &tree).unwrap(), root_of(&l[64..70]));
        assert_eq!(range_hash(32, 64, &tree).unwrap(), root_of(&l[32..64]));
        assert_eq!(range_hash(68, 70, &tree).unwrap(), root_of(&l[68..70]));
        assert!(matches!(
            range_hash(3, 5, &tree),
            Err(AuditError::InvalidRange { .. })
        ));
        assert!(matches!(
            range_hash(5, 5, &tree),
            Err(AuditError::InvalidRange { .. })
        ));
        assert!(matches!(
            range_hash(0, 71, &tree),
            Err(AuditError::NodeMissing { .. })
        ));
        assert_eq!(tree.nodes().count(), 70 + 35 + 17 + 8 + 4 + 2 + 1);
    }
}
