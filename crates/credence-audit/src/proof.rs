//! Inclusion and consistency proofs (RFC 9162 §2.1.3 and §2.1.4), generated
//! from stored complete nodes and verified without any store.

use crate::AuditError;
use crate::hash::{Hash, hash_children};
use crate::tree::{NodeReader, range_hash, split_point};

/// The inclusion proof (audit path) of leaf `leaf_index` in the tree of
/// `tree_size` leaves, per RFC 9162 §2.1.3.1: sibling hashes from the leaf
/// up to the root.
///
/// Every hash is read from complete stored nodes; the one sibling that may be
/// an incomplete right-edge subtree is folded from its stored peaks, so a
/// proof costs O(log n) reads.
pub fn inclusion_proof(
    leaf_index: u64,
    tree_size: u64,
    nodes: &dyn NodeReader,
) -> Result<Vec<Hash>, AuditError> {
    if leaf_index >= tree_size {
        return Err(AuditError::IndexOutOfRange {
            index: leaf_index,
            size: tree_size,
        });
    }
    // walk the RFC recursion top-down, collecting siblings root-first
    let mut path = Vec::new();
    let (mut start, mut end) = (0u64, tree_size);
    while end - start > 1 {
        let mid = start + split_point(end - start);
        if leaf_index < mid {
            path.push(range_hash(mid, end, nodes)?);
            end = mid;
        } else {
            path.push(range_hash(start, mid, nodes)?);
            start = mid;
        }
    }
    path.reverse();
    Ok(path)
}

/// The consistency proof from the tree of `first` leaves to the tree of
/// `second` leaves, per RFC 9162 §2.1.4.1 (`PROOF(m, D[n])`).
///
/// Empty when `first == 0` or `first == second`. At most O(log n) stored
/// nodes are read per proof hash, O(log² n) in all.
pub fn consistency_proof(
    first: u64,
    second: u64,
    nodes: &dyn NodeReader,
) -> Result<Vec<Hash>, AuditError> {
    if first > second {
        return Err(AuditError::SizesOutOfOrder { first, second });
    }
    if first == 0 || first == second {
        return Ok(Vec::new());
    }
    // SUBPROOF(m, D[start:end], b), walked top-down
    let mut proof = Vec::new();
    let (mut start, mut end) = (0u64, second);
    let mut m = first;
    let mut whole = true;
    loop {
        let width = end - start;
        if m == width {
            if !whole {
                proof.push(range_hash(start, end, nodes)?);
            }
            break;
        }
        let k = split_point(width);
        if m <= k {
            proof.push(range_hash(start + k, end, nodes)?);
            end = start + k;
        } else {
            proof.push(range_hash(start, start + k, nodes)?);
            start += k;
            m -= k;
            whole = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// Verifies an inclusion proof per RFC 9162 §2.1.3.2.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), AuditError> {
    if index >= size {
        return Err(AuditError::IndexOutOfRange { index, size });
    }
    let mut fn_ = index;
    let mut sn = size - 1;
    let mut r = *leaf_hash;
    for p in proof {
        if sn == 0 {
            return Err(AuditError::InclusionProofInvalid);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = hash_children(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = hash_children(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn == 0 && r == *root {
        Ok(())
    } else {
        Err(AuditError::InclusionProofInvalid)
    }
}

/// Verifies a consistency proof per RFC 9162 §2.1.4.2: that the tree of
/// `first` leaves with root `first_root` is a prefix of the tree of `second`
/// leaves with root `second_root`.
///
/// `first == second` needs an empty proof and equal roots; `first == 0`
/// needs an empty proof (the empty tree is a prefix of every tree).
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> Result<(), AuditError> {
    if first > second {
        return Err(AuditError::SizesOutOfOrder { first, second });
    }
    let invalid = Err(AuditError::ConsistencyProofInvalid);
    if first == second {
        return if proof.is_empty() && first_root == second_root {
            Ok(())
        } else {
            invalid
        };
    }
    if first == 0 {
        return if proof.is_empty() { Ok(()) } else { invalid };
    }
    let mut path = proof.iter();
    // step 2: a first size that is a power of two is itself a node of the
    // second tree, and the proof starts from its root
    let seed = if first.is_power_of_two() {
        first_root
    } else {
        match path.next() {
            Some(h) => h,
            None => return invalid,
        }
    };
    let mut fn_ = first - 1;
    let mut sn = second - 1;
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let mut fr = *seed;
    let mut sr = *seed;
    for c in path {
        if sn == 0 {
            return invalid;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = hash_children(c, &fr);
            sr = hash_children(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = hash_children(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if fr == *first_root && sr == *second_root && sn == 0 {
        Ok(())
    } else {
        invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{hash_leaf, root_of};
    use crate::tree::MemoryTree;

    fn tree(n: u64) -> (Vec<Hash>, MemoryTree) {
        let data: Vec<Vec<u8>> = (0..n).map(|i| format!("leaf {i}").into_bytes()).collect();
        let hashes = data.iter().map(|d| hash_leaf(d)).collect();
        (hashes, MemoryTree::from_leaves(&data).unwrap())
    }

    #[test]
    fn single_leaf_tree_has_empty_proof() {
        let (l, t) = tree(1);
        let p = inclusion_proof(0, 1, &t).unwrap();
        assert!(p.is_empty());
        verify_inclusion(&l[0], 0, 1, &p, &l[0]).unwrap();
        assert_eq!(
            inclusion_proof(1, 1, &t),
            Err(AuditError::IndexOutOfRange { index: 1, size: 1 })
        );
    }

    #[test]
    fn proofs_for_older_sizes_of_a_larger_store() {
        let (l, t) = tree(40);
        for size in 1..=40u64 {
            let root = root_of(&l[..size as usize]);
            for i in 0..size {
                let p = inclusion_proof(i, size, &t).unwrap();
                verify_inclusion(&l[i as usize], i, size, &p, &root).unwrap();
            }
        }
        assert!(matches!(
            inclusion_proof(0, 41, &t),
            Err(AuditError::NodeMissing { .. })
        ));
    }

    #[test]
    fn consistency_edge_cases() {
        let (l, t) = tree(9);
        let r = |n: usize| root_of(&l[..n]);
        assert!(consistency_proof(0, 9, &t).unwrap().is_empty());
        assert!(consistency_proof(9, 9, &t).unwrap().is_empty());
        assert_eq!(
            consistency_proof(5, 4, &t),
            Err(AuditError::SizesOutOfOrder {
                first: 5,
                second: 4
            })
        );
        verify_consistency(0, 9, &r(0), &r(9), &[]).unwrap();
        verify_consistency(9, 9, &r(9), &r(9), &[]).unwrap();
        assert!(verify_consistency(9, 9, &r(8), &r(9), &[]).is_err());
        assert!(verify_consistency(9, 9, &r(9), &r(9), &[r(1)]).is_err());
        assert!(verify_consistency(0, 9, &r(0), &r(9), &[r(1)]).is_err());
        assert!(verify_consistency(3, 9, &r(3), &r(9), &[]).is_err());
        assert!(verify_consistency(4, 9, &r(4), &r(9), &[]).is_err());
        assert!(verify_consistency(9, 3, &r(9), &r(3), &[]).is_err());
    }
}
