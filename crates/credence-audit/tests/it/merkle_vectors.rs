//! RFC 6962 / RFC 9162 test vectors published by transparency-dev/merkle
//! (`testonly/constants.go`: leaf inputs, node hashes, roots and compact
//! ranges; `proof/verify_test.go`: inclusion and consistency proofs and the
//! corruptions every verifier must reject). The same vectors come from the
//! certificate-transparency C++ and Go merkle tree tests.

use credence_audit::{
    AuditError, CompactRange, Hash, MemoryTree, NodeReader, consistency_proof, empty_root,
    hash_leaf, inclusion_proof, peak_nodes, root_of, verify_consistency, verify_inclusion,
};

fn h(s: &str) -> Hash {
    hex::decode(s).unwrap().try_into().unwrap()
}

fn leaf_inputs() -> Vec<Vec<u8>> {
    [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
    .iter()
    .map(|s| hex::decode(s).unwrap())
    .collect()
}

/// Node hashes by level, then index, for the 8-leaf tree.
fn node_hashes() -> Vec<Vec<Hash>> {
    vec![
        vec![
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"),
            h("07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
        ],
        vec![
            h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
        ],
        vec![
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
        vec![h(
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        )],
    ]
}

/// Roots by tree size 0..=8.
fn roots() -> Vec<Hash> {
    vec![
        h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
        h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
        h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
        h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
        h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
        h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
        h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
    ]
}

/// (leaf index, tree size, proof); the published vectors number leaves from
/// 1, converted here to 0-based indices.
fn inclusion_vectors() -> Vec<(u64, u64, Vec<Hash>)> {
    vec![
        (0, 1, vec![]),
        (
            0,
            8,
            vec![
                h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
            ],
        ),
        (
            5,
            8,
            vec![
                h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
            ],
        ),
        (
            2,
            3,
            vec![h(
                "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            )],
        ),
        (
            1,
            5,
            vec![
                h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            ],
        ),
    ]
}

/// (first size, second size, proof).
fn consistency_vectors() -> Vec<(u64, u64, Vec<Hash>)> {
    vec![
        (1, 1, vec![]),
        (
            1,
            8,
            vec![
                h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
            ],
        ),
        (
            6,
            8,
            vec![
                h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
                h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
            ],
        ),
        (
            2,
            5,
            vec![
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            ],
        ),
        (
            6,
            7,
            vec![
                h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
                h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
                h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
            ],
        ),
    ]
}

fn tree() -> MemoryTree {
    MemoryTree::from_leaves(leaf_inputs()).unwrap()
}

#[test]
fn leaf_and_node_hashes() {
    let t = tree();
    for (level, row) in node_hashes().iter().enumerate() {
        for (index, want) in row.iter().enumerate() {
            assert_eq!(
                t.node(level as u8, index as u64).unwrap(),
                *want,
                "node ({level}, {index})"
            );
        }
    }
    let leaves: Vec<Hash> = leaf_inputs().iter().map(|l| hash_leaf(l)).collect();
    assert_eq!(leaves, node_hashes()[0]);
}

#[test]
fn roots_for_every_size() {
    let leaves: Vec<Hash> = leaf_inputs().iter().map(|l| hash_leaf(l)).collect();
    assert_eq!(empty_root(), roots()[0]);
    let mut cr = CompactRange::new();
    assert_eq!(cr.root(), roots()[0]);
    for (i, leaf) in leaves.iter().enumerate() {
        cr.append(*leaf).unwrap();
        assert_eq!(cr.root(), roots()[i + 1], "size {}", i + 1);
        assert_eq!(root_of(&leaves[..=i]), roots()[i + 1], "size {}", i + 1);
    }
}

#[test]
fn compact_ranges_match_published_peaks() {
    // testonly.CompactTrees(): the peaks of every size, as node coordinates
    let nh = node_hashes();
    let want: Vec<Vec<Hash>> = vec![
        vec![],
        vec![nh[0][0]],
        vec![nh[1][0]],
        vec![nh[1][0], nh[0][2]],
        vec![nh[2][0]],
        vec![nh[2][0], nh[0][4]],
        vec![nh[2][0], nh[1][2]],
        vec![nh[2][0], nh[1][2], nh[0][6]],
        vec![nh[3][0]],
    ];
    let t = tree();
    let mut cr = CompactRange::new();
    for (size, peaks) in want.iter().enumerate() {
        assert_eq!(cr.peaks(), &peaks[..], "size {size}");
        let from_store = CompactRange::from_reader(size as u64, &t).unwrap();
        assert_eq!(from_store.peaks(), &peaks[..]);
        let coords: Vec<Hash> = peak_nodes(size as u64)
            .into_iter()
            .map(|(l, i)| nh[l as usize][i as usize])
            .collect();
        assert_eq!(&coords, peaks);
        if let Some(l) = leaf_inputs().get(size) {
            cr.append(hash_leaf(l)).unwrap();
        }
    }
}

fn inclusion_probes(
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
    leaf: &Hash,
) -> Vec<(String, u64, u64, Vec<Hash>, Hash, Hash)> {
    let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
    let mut out = vec![
        (
            "index - 1".into(),
            index.wrapping_sub(1),
            size,
            proof.to_vec(),
            *root,
            *leaf,
        ),
        (
            "index + 1".into(),
            index + 1,
            size,
            proof.to_vec(),
            *root,
            *leaf,
        ),
        (
            "index ^ 2".into(),
            index ^ 2,
            size,
            proof.to_vec(),
            *root,
            *leaf,
        ),
        (
            "size * 2".into(),
            index,
            size * 2,
            proof.to_vec(),
            *root,
            *leaf,
        ),
        (
            "size / 2".into(),
            index,
            size / 2,
            proof.to_vec(),
            *root,
            *leaf,
        ),
        (
            "wrong leaf".into(),
            index,
            size,
            proof.to_vec(),
            *root,
            hash_leaf(b"WrongLeaf"),
        ),
        (
            "empty root".into(),
            index,
            size,
            proof.to_vec(),
            empty_root(),
            *leaf,
        ),
        (
            "random root".into(),
            index,
            size,
            proof.to_vec(),
            some,
            *leaf,
        ),
        (
            "trailing root".into(),
            index,
            size,
            [proof, &[*root]].concat(),
            *root,
            *leaf,
        ),
        (
            "preceding root".into(),
            index,
            size,
            [&[*root], proof].concat(),
            *root,
            *leaf,
        ),
    ];
    for i in 0..proof.len() {
        let mut p = proof.to_vec();
        p[i][0] ^= 8;
        out.push((format!("proof[{i}] bit 3"), index, size, p, *root, *leaf));
    }
    if !proof.is_empty() {
        let p = proof[..proof.len() - 1].to_vec();
        out.push(("removed component".into(), index, size, p, *root, *leaf));
    }
    if proof.len() > 1 {
        let p = [&[proof[0], some], &proof[1..]].concat();
        out.push(("inserted component".into(), index, size, p, *root, *leaf));
    }
    out
}

#[test]
fn inclusion_proofs() {
    let t = tree();
    let leaves = leaf_inputs();
    for (index, size, want) in inclusion_vectors() {
        let got = inclusion_proof(index, size, &t).unwrap();
        assert_eq!(got, want, "proof for leaf {index} of {size}");
        let leaf = hash_leaf(&leaves[index as usize]);
        let root = roots()[size as usize];
        verify_inclusion(&leaf, index, size, &want, &root).unwrap();
        for (desc, i, s, p, r, l) in inclusion_probes(index, size, &want, &root, &leaf) {
            assert!(
                verify_inclusion(&l, i, s, &p, &r).is_err(),
                "leaf {index} of {size}: {desc} verified"
            );
        }
    }
}

#[test]
fn inclusion_rejects_degenerate_inputs() {
    let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
    for (index, size) in [(0, 0), (1, 0), (2, 1)] {
        assert_eq!(
            verify_inclusion(&some, index, size, &[], &empty_root()),
            Err(AuditError::IndexOutOfRange { index, size })
        );
    }
    assert!(verify_inclusion(&some, 0, 1, &[], &empty_root()).is_err());
    let leaf = hash_leaf(b"data");
    verify_inclusion(&leaf, 0, 1, &[], &leaf).unwrap();
}

#[allow(clippy::type_complexity)]
fn consistency_probes(
    m: u64,
    n: u64,
    r1: &Hash,
    r2: &Hash,
    proof: &[Hash],
) -> Vec<(String, u64, u64, Hash, Hash, Vec<Hash>)> {
    let wrong = hash_leaf(b"WrongRoot");
    let p = proof.to_vec();
    let mut out = vec![
        ("m - 1".into(), m - 1, n, *r1, *r2, p.clone()),
        ("m + 1".into(), m + 1, n, *r1, *r2, p.clone()),
        ("m ^ 2".into(), m ^ 2, n, *r1, *r2, p.clone()),
        ("n * 2".into(), m, n * 2, *r1, *r2, p.clone()),
        ("n / 2".into(), m, n / 2, *r1, *r2, p.clone()),
        ("wrong root1".into(), m, n, wrong, *r2, p.clone()),
        ("wrong root2".into(), m, n, *r1, wrong, p.clone()),
        ("swapped roots".into(), m, n, *r2, *r1, p.clone()),
        ("empty proof".into(), m, n, *r1, *r2, vec![]),
        (
            "trailing root1".into(),
            m,
            n,
            *r1,
            *r2,
            [&p[..], &[*r1]].concat(),
        ),
        (
            "trailing root2".into(),
            m,
            n,
            *r1,
            *r2,
            [&p[..], &[*r2]].concat(),
        ),
        (
            "preceding root1".into(),
            m,
            n,
            *r1,
            *r2,
            [&[*r1], &p[..]].concat(),
        ),
        (
            "preceding root2".into(),
            m,
            n,
            *r1,
            *r2,
            [&[*r2], &p[..]].concat(),
        ),
        (
            "preceding proof[0]".into(),
            m,
            n,
            *r1,
            *r2,
            [&[p[0]], &p[..]].concat(),
        ),
        (
            "truncated".into(),
            m,
            n,
            *r1,
            *r2,
            p[..p.len() - 1].to_vec(),
        ),
    ];
    for i in 0..p.len() {
        let mut q = p.clone();
        q[i][0] ^= 16;
        out.push((format!("proof[{i}] bit 4"), m, n, *r1, *r2, q));
    }
    out
}

#[test]
fn consistency_proofs() {
    let t = tree();
    for (m, n, want) in consistency_vectors() {
        let got = consistency_proof(m, n, &t).unwrap();
        assert_eq!(got, want, "proof {m} -> {n}");
        let (r1, r2) = (roots()[m as usize], roots()[n as usize]);
        verify_consistency(m, n, &r1, &r2, &want).unwrap();
        if want.is_empty() {
            continue;
        }
        for (desc, a, b, x, y, p) in consistency_probes(m, n, &r1, &r2, &want) {
            assert!(
                verify_consistency(a, b, &x, &y, &p).is_err(),
                "{m} -> {n}: {desc} verified"
            );
        }
    }
}

#[test]
fn consistency_trivial_cases() {
    // the table of proof/verify_test.go TestVerifyConsistency
    let r1 = hash_leaf(b"don't care 1");
    let r2 = hash_leaf(b"don't care 2");
    let e = empty_root();
    let cases: Vec<(u64, u64, Hash, Hash, Vec<Hash>, bool)> = vec![
        (0, 0, r1, r2, vec![], false),
        (1, 1, r1, r2, vec![], false),
        (0, 0, r1, r1, vec![], true),
        (0, 1, r1, r2, vec![], true),
        (1, 1, r2, r2, vec![], true),
        (1, 0, r1, r2, vec![], false),
        (2, 1, r1, r2, vec![], false),
        (1, 2, r1, r2, vec![], false),
        (0, 0, e, r2, vec![], false),
        (1, 1, e, r2, vec![], false),
        (0, 0, e, e, vec![e], false),
        (0, 1, e, e, vec![e], false),
        (1, 1, e, e, vec![e], false),
    ];
    for (m, n, a, b, p, ok) in cases {
        assert_eq!(
            verify_consistency(m, n, &a, &b, &p).is_ok(),
            ok,
            "{m} -> {n}"
        );
    }
}
