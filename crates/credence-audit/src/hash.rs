//! RFC 9162 §2.1.1 hashing: SHA-256 with domain-separated leaves and nodes.

use aws_lc_rs::digest::{Context, SHA256};

/// A SHA-256 output: a leaf hash, a node hash or a tree root.
pub type Hash = [u8; 32];

fn finish(ctx: Context) -> Hash {
    let digest = ctx.finish();
    let mut out = [0u8; 32];
    for (o, i) in out.iter_mut().zip(digest.as_ref()) {
        *o = *i;
    }
    out
}

/// SHA-256 of `data`, with no prefix.
pub fn sha256(data: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(data);
    finish(ctx)
}

/// Leaf hash: `SHA-256(0x00 || data)`.
pub fn hash_leaf(data: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(data);
    finish(ctx)
}

/// Interior node hash: `SHA-256(0x01 || left || right)`.
pub fn hash_children(left: &Hash, right: &Hash) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x01]);
    ctx.update(left);
    ctx.update(right);
    finish(ctx)
}

/// Root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    sha256(&[])
}

/// Folds the peaks of a compact range (largest subtree first) into the root
/// they stand for: the rightmost two are combined first.
pub(crate) fn fold_peaks(peaks: &[Hash]) -> Hash {
    let mut iter = peaks.iter().rev();
    let Some(last) = iter.next() else {
        return empty_root();
    };
    let mut acc = *last;
    for peak in iter {
        acc = hash_children(peak, &acc);
    }
    acc
}

/// The Merkle Tree Hash (RFC 9162 §2.1.1) of a list of leaf hashes.
///
/// O(n) time and O(log n) memory; equal to the root of a tree of
/// `leaf_hashes.len()` leaves.
pub fn root_of(leaf_hashes: &[Hash]) -> Hash {
    let mut peaks: Vec<Hash> = Vec::new();
    for (count, leaf) in (0u64..).zip(leaf_hashes) {
        let mut acc = *leaf;
        // one merge per trailing one bit of the number of leaves so far
        let mut merges = count.trailing_ones();
        while merges > 0 {
            let Some(left) = peaks.pop() else { break };
            acc = hash_children(&left, &acc);
            merges -= 1;
        }
        peaks.push(acc);
    }
    fold_peaks(&peaks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Hash {
        let v = hex::decode(s).unwrap();
        v.try_into().unwrap()
    }

    #[test]
    fn empty_tree_root_is_sha256_of_nothing() {
        assert_eq!(
            empty_root(),
            h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        assert_eq!(root_of(&[]), empty_root());
    }

    #[test]
    fn leaf_and_node_prefixes() {
        // RFC 6962 hash of the empty leaf, as in the transparency-dev vectors
        assert_eq!(
            hash_leaf(b""),
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")
        );
        let a = hash_leaf(b"a");
        let b = hash_leaf(b"b");
        let mut buf = vec![1u8];
        buf.extend_from_slice(&a);
        buf.extend_from_slice(&b);
        assert_eq!(hash_children(&a, &b), sha256(&buf));
        assert_ne!(hash_children(&a, &b), hash_children(&b, &a));
    }

    #[test]
    fn root_of_small_trees() {
        let l: Vec<Hash> = (0u8..5).map(|i| hash_leaf(&[i])).collect();
        assert_eq!(root_of(&l[..1]), l[0]);
        assert_eq!(root_of(&l[..2]), hash_children(&l[0], &l[1]));
        let left = hash_children(&l[0], &l[1]);
        assert_eq!(root_of(&l[..3]), hash_children(&left, &l[2]));
        let four = hash_children(&left, &hash_children(&l[2], &l[3]));
        assert_eq!(root_of(&l[..4]), four);
        assert_eq!(root_of(&l[..5]), hash_children(&four, &l[4]));
    }
}
