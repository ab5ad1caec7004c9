//! Exhaustive properties for every tree size 1..=70: store-backed proofs
//! equal the RFC's recursive definitions, verify, and fail when any byte of
//! the proof, the leaf or the root changes.

use crate::reference;
use credence_audit::{
    Hash, MemoryTree, consistency_proof, hash_leaf, inclusion_proof, root_of, verify_consistency,
    verify_inclusion,
};

const MAX: usize = 70;

fn setup() -> (Vec<Hash>, MemoryTree) {
    let data: Vec<Vec<u8>> = (0..MAX)
        .map(|i| format!("entry {i}").into_bytes())
        .collect();
    let hashes = data.iter().map(|d| hash_leaf(d)).collect();
    (hashes, MemoryTree::from_leaves(&data).unwrap())
}

fn flip(h: &Hash, byte: usize) -> Hash {
    let mut out = *h;
    out[byte] ^= 0x5a;
    out
}

#[test]
fn roots_match_the_reference() {
    let (l, _) = setup();
    for n in 0..=MAX {
        assert_eq!(root_of(&l[..n]), reference::mth(&l[..n]), "size {n}");
    }
}

#[test]
fn inclusion_proofs_for_every_index_and_size() {
    let (l, store) = setup();
    for n in 1..=MAX {
        let root = reference::mth(&l[..n]);
        for i in 0..n {
            let (iu, nu) = (i as u64, n as u64);
            let proof = inclusion_proof(iu, nu, &store).unwrap();
            assert_eq!(proof, reference::path(i, &l[..n]), "leaf {i} of {n}");
            verify_inclusion(&l[i], iu, nu, &proof, &root).unwrap();
            for b in 0..32 {
                assert!(verify_inclusion(&flip(&l[i], b), iu, nu, &proof, &root).is_err());
                assert!(verify_inclusion(&l[i], iu, nu, &proof, &flip(&root, b)).is_err());
                for k in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[k] = flip(&bad[k], b);
                    assert!(
                        verify_inclusion(&l[i], iu, nu, &bad, &root).is_err(),
                        "leaf {i} of {n}: flipped byte {b} of hash {k} verified"
                    );
                }
            }
            // another leaf's hash, a longer or shorter path: all refused
            if n > 1 {
                let other = l[(i + 1) % n];
                assert!(verify_inclusion(&other, iu, nu, &proof, &root).is_err());
                let j = (i + 1) % n;
                assert!(verify_inclusion(&l[i], j as u64, nu, &proof, &root).is_err());
            }
            let mut longer = proof.clone();
            longer.push(root);
            assert!(verify_inclusion(&l[i], iu, nu, &longer, &root).is_err());
            if !proof.is_empty() {
                let shorter = &proof[..proof.len() - 1];
                assert!(verify_inclusion(&l[i], iu, nu, shorter, &root).is_err());
            }
        }
    }
}

#[test]
fn consistency_proofs_for_every_pair_of_sizes() {
    let (l, store) = setup();
    for n in 1..=MAX {
        let root_n = reference::mth(&l[..n]);
        for m in 1..=n {
            let (mu, nu) = (m as u64, n as u64);
            let root_m = reference::mth(&l[..m]);
            let proof = consistency_proof(mu, nu, &store).unwrap();
            if m == n {
                assert!(proof.is_empty());
            } else {
                assert_eq!(proof, reference::proof(m, &l[..n]), "{m} -> {n}");
            }
            verify_consistency(mu, nu, &root_m, &root_n, &proof).unwrap();
            for b in 0..32 {
                assert!(verify_consistency(mu, nu, &flip(&root_m, b), &root_n, &proof).is_err());
                assert!(verify_consistency(mu, nu, &root_m, &flip(&root_n, b), &proof).is_err());
                for k in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[k] = flip(&bad[k], b);
                    assert!(
                        verify_consistency(mu, nu, &root_m, &root_n, &bad).is_err(),
                        "{m} -> {n}: flipped byte {b} of hash {k} verified"
                    );
                }
            }
            if m < n {
                assert!(verify_consistency(mu, nu, &root_m, &root_n, &[]).is_err());
                let mut longer = proof.clone();
                longer.push(root_n);
                assert!(verify_consistency(mu, nu, &root_m, &root_n, &longer).is_err());
                let shorter = &proof[..proof.len() - 1];
                assert!(verify_consistency(mu, nu, &root_m, &root_n, shorter).is_err());
                // a different older tree is not a prefix
                let forged = reference::mth(&[&l[..m - 1], &[hash_leaf(b"forged")]].concat());
                assert!(verify_consistency(mu, nu, &forged, &root_n, &proof).is_err());
            }
        }
    }
}
