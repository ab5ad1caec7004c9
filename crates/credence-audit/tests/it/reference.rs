//! A deliberately naive RFC 9162 §2.1 implementation over in-memory leaf
//! hashes (the recursive definitions, written straight from the RFC), used as
//! an independent oracle for the store-backed proofs.

use credence_audit::{Hash, hash_children};

fn k_of(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH(D[n]) over leaf hashes.
pub fn mth(d: &[Hash]) -> Hash {
    match d.len() {
        0 => credence_audit::sha256(b""),
        1 => d[0],
        n => {
            let k = k_of(n);
            hash_children(&mth(&d[..k]), &mth(&d[k..]))
        }
    }
}

/// PATH(m, D[n]).
pub fn path(m: usize, d: &[Hash]) -> Vec<Hash> {
    let n = d.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = k_of(n);
    if m < k {
        let mut p = path(m, &d[..k]);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = path(m - k, &d[k..]);
        p.push(mth(&d[..k]));
        p
    }
}

fn subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
    let n = d.len();
    if m == n {
        return if b { Vec::new() } else { vec![mth(d)] };
    }
    let k = k_of(n);
    if m <= k {
        let mut p = subproof(m, &d[..k], b);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = subproof(m - k, &d[k..], false);
        p.push(mth(&d[..k]));
        p
    }
}

/// PROOF(m, D[n]) for 0 < m <= n.
pub fn proof(m: usize, d: &[Hash]) -> Vec<Hash> {
    subproof(m, d, true)
}
