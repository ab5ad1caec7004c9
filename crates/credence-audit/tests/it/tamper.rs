//! Tamper detection on a 1,000-entry log: every edit is caught by
//! `verify_log`, and the stored nodes name the first bad index.

use std::collections::HashMap;

use credence_audit::{
    Actor, AuditError, AuditEvent, Checkpoint, Ed25519NoteSigner, Hash, Issuance, LogVerifier,
    MemoryTree, NodeId, Outcome, VerifyFailure, consistency_proof, hash_leaf, inclusion_proof,
    locate_first_bad_leaf, verify_consistency, verify_inclusion, verify_log, verify_log_with_nodes,
};
use time::OffsetDateTime;

const N: usize = 1000;
const ORIGIN: &str = "credence.test/audit";

fn event(i: usize) -> AuditEvent {
    let t = OffsetDateTime::from_unix_timestamp(1_767_225_600 + i as i64).unwrap();
    let actions = ["identity.create", "credential.issue", "credential.revoke"];
    let mut e = AuditEvent::new(
        t,
        Actor {
            id: format!("admin-{}", i % 3),
            auth: "admin-token".into(),
        },
        actions[i % 3],
        format!("identity-{i:04}"),
        if i.is_multiple_of(7) {
            Outcome::Failure
        } else {
            Outcome::Success
        },
    );
    e.request_id = Some(format!("req-{i}"));
    if i % 3 == 1 {
        e.issuance = Some(Issuance {
            serial: format!("{i:032x}"),
            spiffe_id: format!("spiffe://example.org/svc/{i}"),
            ttl_seconds: 3600,
            key_sha256: hex::encode(hash_leaf(&i.to_be_bytes())),
        });
    }
    if i.is_multiple_of(7) {
        e.reason = Some("denied by policy".into());
        e.policies = vec!["deny-untrusted".into()];
    }
    e
}

struct Log {
    leaves: Vec<Vec<u8>>,
    tree: MemoryTree,
    signer: Ed25519NoteSigner,
    note: String,
}

fn log() -> Log {
    let leaves: Vec<Vec<u8>> = (0..N).map(|i| event(i).leaf_bytes().unwrap()).collect();
    let tree = MemoryTree::from_leaves(&leaves).unwrap();
    let signer = Ed25519NoteSigner::generate(ORIGIN).unwrap();
    let note = Checkpoint::new(ORIGIN, N as u64, tree.root())
        .sign(&signer)
        .unwrap();
    Log {
        leaves,
        tree,
        signer,
        note,
    }
}

#[test]
fn an_untouched_log_verifies() {
    let log = log();
    let v = [log.signer.verifier()];
    let ok = verify_log(&log.leaves, &log.note, &v).unwrap();
    assert_eq!(ok.checkpoint.size, N as u64);
    assert_eq!(ok.verified_by, vec![ORIGIN.to_owned()]);
    assert_eq!(ok.unverified_tail, 0);
    assert_eq!(
        locate_first_bad_leaf(&log.leaves, &log.tree, &log.tree.root(), N as u64),
        None
    );
    // entries appended after the checkpoint are decoded but not covered
    let mut more = log.leaves.clone();
    more.push(event(N).leaf_bytes().unwrap());
    assert_eq!(verify_log(&more, &log.note, &v).unwrap().unverified_tail, 1);
    // every leaf decodes back to its event
    for (i, leaf) in log.leaves.iter().enumerate().step_by(97) {
        assert_eq!(AuditEvent::from_leaf_bytes(leaf).unwrap(), event(i));
    }
}

#[test]
fn editing_one_leaf_is_located() {
    let log = log();
    let v = [log.signer.verifier()];
    let target = 617;
    let mut leaves = log.leaves.clone();
    // still a canonical event, so only the tree can tell
    let text = String::from_utf8(leaves[target].clone()).unwrap();
    let edited = text.replace("identity-0617", "identity-0618");
    assert_ne!(edited, text);
    leaves[target] = edited.into_bytes();
    AuditEvent::from_leaf_bytes(&leaves[target]).unwrap();

    let err = verify_log(&leaves, &log.note, &v).unwrap_err();
    assert_eq!(
        err,
        VerifyFailure::RootMismatch {
            size: N as u64,
            first_bad_index: None
        }
    );
    assert_eq!(
        locate_first_bad_leaf(&leaves, &log.tree, &log.tree.root(), N as u64),
        Some(target as u64)
    );
    let err = verify_log_with_nodes(&leaves, &log.note, &v, &log.tree).unwrap_err();
    assert_eq!(err.first_bad_index(), Some(target as u64));
    assert!(err.to_string().contains("first bad index is 617"), "{err}");
}

#[test]
fn changing_one_byte_into_garbage_names_the_entry() {
    let log = log();
    let v = [log.signer.verifier()];
    let mut leaves = log.leaves.clone();
    leaves[123][0] = b'[';
    let err = verify_log(&leaves, &log.note, &v).unwrap_err();
    assert!(
        matches!(err, VerifyFailure::BadEntry { index: 123, .. }),
        "{err}"
    );
    assert_eq!(err.first_bad_index(), Some(123));
    // and a non-canonical re-encoding of the same event
    let mut leaves = log.leaves.clone();
    leaves[5].push(b' ');
    let err = verify_log(&leaves, &log.note, &v).unwrap_err();
    assert_eq!(
        err,
        VerifyFailure::BadEntry {
            index: 5,
            error: AuditError::NonCanonicalLeaf
        }
    );
}

#[test]
fn delete_insert_reorder_and_rollback_are_located() {
    let log = log();
    let v = [log.signer.verifier()];
    let size = N as u64;

    let mut deleted = log.leaves.clone();
    deleted.remove(300);
    let err = verify_log(&deleted, &log.note, &v).unwrap_err();
    assert!(matches!(
        err,
        VerifyFailure::MissingEntries { available: 999, .. }
    ));
    let err = verify_log_with_nodes(&deleted, &log.note, &v, &log.tree).unwrap_err();
    assert_eq!(err.first_bad_index(), Some(300), "{err}");

    let mut inserted = log.leaves.clone();
    inserted.insert(300, event(5000).leaf_bytes().unwrap());
    let err = verify_log_with_nodes(&inserted, &log.note, &v, &log.tree).unwrap_err();
    assert_eq!(err.first_bad_index(), Some(300), "{err}");

    let mut reordered = log.leaves.clone();
    reordered.swap(400, 401);
    let err = verify_log_with_nodes(&reordered, &log.note, &v, &log.tree).unwrap_err();
    assert_eq!(err.first_bad_index(), Some(400), "{err}");

    // roll back to 900 entries: the checkpoint still covers 1000
    let rolled: Vec<Vec<u8>> = log.leaves[..900].to_vec();
    let err = verify_log(&rolled, &log.note, &v).unwrap_err();
    assert_eq!(err.first_bad_index(), Some(900));
    // and the old checkpoint cannot be proven consistent with the new head
    let rolled_tree = MemoryTree::from_leaves(&rolled).unwrap();
    assert!(consistency_proof(size, 900, &rolled_tree).is_err());
    assert!(verify_consistency(size, 900, &log.tree.root(), &rolled_tree.root(), &[]).is_err());

    // a rewritten history that grows from 900 is not consistent either
    let mut forked = rolled.clone();
    forked.extend((0..200).map(|i| event(9000 + i).leaf_bytes().unwrap()));
    let forked_tree = MemoryTree::from_leaves(&forked).unwrap();
    let proof = consistency_proof(size, forked_tree.size(), &forked_tree).unwrap();
    assert!(
        verify_consistency(
            size,
            forked_tree.size(),
            &log.tree.root(),
            &forked_tree.root(),
            &proof
        )
        .is_err()
    );
}

#[test]
fn rewriting_the_stored_nodes_too_is_still_detected() {
    let log = log();
    let v = [log.signer.verifier()];
    let mut leaves = log.leaves.clone();
    leaves[10] = event(7777).leaf_bytes().unwrap();
    let forged = MemoryTree::from_leaves(&leaves).unwrap();
    // the nodes no longer hash to the signed root, so no index can be trusted
    assert_eq!(
        locate_first_bad_leaf(&leaves, &forged, &log.tree.root(), N as u64),
        None
    );
    let err = verify_log_with_nodes(&leaves, &log.note, &v, &forged).unwrap_err();
    assert!(matches!(
        err,
        VerifyFailure::RootMismatch {
            first_bad_index: None,
            ..
        }
    ));

    // a store that edited one stored leaf hash to match the edited leaf is
    // caught by the parent link check
    let mut nodes: HashMap<NodeId, Hash> = log.tree.nodes().collect();
    nodes.insert((0, 10), hash_leaf(&leaves[10]));
    assert_eq!(
        locate_first_bad_leaf(&leaves, &nodes, &log.tree.root(), N as u64),
        None
    );
    // while an edit to an internal node elsewhere does not hide leaf 10
    let mut nodes: HashMap<NodeId, Hash> = log.tree.nodes().collect();
    nodes.insert((3, 90), [0; 32]);
    assert_eq!(
        locate_first_bad_leaf(&leaves, &nodes, &log.tree.root(), N as u64),
        Some(10)
    );
}

#[test]
fn signature_problems_are_reported() {
    let log = log();
    let other = Ed25519NoteSigner::generate(ORIGIN).unwrap();
    let err = verify_log(&log.leaves, &log.note, &[other.verifier()]).unwrap_err();
    assert_eq!(
        err,
        VerifyFailure::Signature(AuditError::NoVerifiableSignatures)
    );
    let forged = log.note.replacen("\n1000\n", "\n999\n", 1);
    let err = verify_log(&log.leaves, &forged, &[log.signer.verifier()]).unwrap_err();
    assert!(matches!(
        err,
        VerifyFailure::Signature(AuditError::InvalidSignature { .. })
    ));
    // a signed note that is not a checkpoint
    let note = credence_audit::sign_note("hello\n", &log.signer).unwrap();
    let err = verify_log(&log.leaves, &note, &[log.signer.verifier()]).unwrap_err();
    assert!(matches!(err, VerifyFailure::Checkpoint(_)));
}

#[test]
fn streaming_verifier_and_proofs_on_the_big_log() {
    let log = log();
    let mut sv = LogVerifier::new(&log.note, &[log.signer.verifier()]).unwrap();
    for leaf in &log.leaves {
        sv.push(leaf).unwrap();
    }
    assert_eq!(sv.count(), N as u64);
    sv.finish().unwrap();

    let root = log.tree.root();
    for i in [0u64, 1, 511, 512, 999] {
        let proof = inclusion_proof(i, N as u64, &log.tree).unwrap();
        verify_inclusion(
            &hash_leaf(&log.leaves[i as usize]),
            i,
            N as u64,
            &proof,
            &root,
        )
        .unwrap();
    }
    for m in [1u64, 500, 512, 777, 999] {
        let old = MemoryTree::from_leaves(&log.leaves[..m as usize]).unwrap();
        let proof = consistency_proof(m, N as u64, &log.tree).unwrap();
        verify_consistency(m, N as u64, &old.root(), &root, &proof).unwrap();
    }
}

#[test]
fn push_many_equals_push_and_names_the_bad_entry() {
    let l = log();
    let verifiers = [l.signer.verifier()];
    let mut one = LogVerifier::new(&l.note, &verifiers).unwrap();
    for leaf in &l.leaves {
        one.push(leaf).unwrap();
    }
    let mut many = LogVerifier::new(&l.note, &verifiers).unwrap();
    many.push_many(&l.leaves[..300]).unwrap();
    many.push_many(&l.leaves[300..]).unwrap();
    assert_eq!(many.count(), one.count());
    assert_eq!(
        many.finish().unwrap().checkpoint,
        one.finish().unwrap().checkpoint
    );
    // a non-canonical entry in the second worker's half is named exactly
    let mut leaves = l.leaves.clone();
    leaves[777][0] = b' ';
    let mut v = LogVerifier::new(&l.note, &verifiers).unwrap();
    let e = v.push_many(&leaves).unwrap_err();
    assert_eq!(e.first_bad_index(), Some(777));
}
