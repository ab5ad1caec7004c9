//! The tamper-evident audit log of Credence, as a pure library: no I/O, no
//! async, no database. Storage and HTTP live elsewhere; this crate fixes the
//! formats and does the cryptography, so that an auditor can check a log
//! with nothing but the log's public key.
//!
//! # Leaves and tree (RFC 9162 §2.1)
//!
//! Each audit event is one leaf. The leaf bytes are the event's canonical
//! encoding ([`AuditEvent::leaf_bytes`], below). Hashes are SHA-256 with
//! domain separation:
//!
//! - leaf hash: `SHA-256(0x00 || leaf bytes)` ([`hash_leaf`]);
//! - interior node: `SHA-256(0x01 || left || right)` ([`hash_children`]);
//! - the root of `n` leaves is the Merkle Tree Hash of RFC 9162: for `n > 1`
//!   split at `k`, the largest power of two below `n`, and hash the roots of
//!   the first `k` and the remaining `n − k` leaves; the empty tree's root is
//!   `SHA-256("")` ([`root_of`]).
//!
//! # Node addressing
//!
//! A node is `(level, index)` ([`NodeId`]). Level 0 holds the leaf hashes;
//! node `(l, i)` is the root of the *complete* subtree over leaves
//! `[i·2^l, (i+1)·2^l)`. A store keeps a node once its whole range exists, and
//! it never changes afterwards. [`CompactRange::append`] returns exactly the
//! nodes that an append completes (the leaf and up to log₂ n parents), so the
//! store writes them in the same transaction as the event. The *peaks* of a
//! tree of size `n` are one node per one bit of `n`, largest first
//! ([`peak_nodes`]); reading them resumes the frontier
//! ([`CompactRange::from_reader`]).
//!
//! Proofs ([`inclusion_proof`], [`consistency_proof`]) read stored nodes
//! through [`NodeReader`]. A subtree that is not complete (the right edge of
//! a tree whose size is not a power of two) is folded from the stored peaks
//! inside it, so no proof ever touches all the leaves. Verification
//! ([`verify_inclusion`], [`verify_consistency`]) follows RFC 9162 §2.1.3.2
//! and §2.1.4.2 and needs no store.
//!
//! # Checkpoints and signed notes
//!
//! A checkpoint ([`Checkpoint`], C2SP `tlog-checkpoint`) is the note text
//!
//! ```text
//! <origin>\n<tree size in decimal>\n<base64 of the 32-byte root>\n
//! ```
//!
//! signed as a C2SP signed note: the text, a blank line, then lines
//! `— <key name> <base64(4-byte key id || 64-byte Ed25519 signature)>\n` (the
//! dash is U+2014). The key id is the first four bytes of
//! `SHA-256(name || 0x0A || 0x01 || public key)`; the log's public key is
//! published as `<name>+<8 hex key id>+<base64(0x01 || public key)>`
//! ([`Verifier::to_vkey`]). This is the format of `golang.org/x/mod/sumdb/note`,
//! so Go tooling and witnesses can read Credence checkpoints. Signing goes
//! through the [`NoteSigner`] trait, so a hardware key can replace
//! [`Ed25519NoteSigner`].
//!
//! # The leaf encoding (version 1)
//!
//! [`AuditEvent::leaf_bytes`] is canonical JSON, UTF-8, and
//! [`AuditEvent::from_leaf_bytes`] accepts nothing else (it re-encodes and
//! compares bytes). The rules, enough to write an independent encoder:
//!
//! 1. One JSON object with the members `action`, `actor` (object with `auth`
//!    and `id`), `client_addr`, `details` (object), `issuance` (object with
//!    `key_sha256`, `serial`, `spiffe_id`, `ttl_seconds`), `outcome`
//!    (`"success"` or `"failure"`), `policies` (array of strings), `reason`,
//!    `request_id`, `target`, `time`, `v` (the number `1`). `client_addr`,
//!    `issuance`, `reason` and `request_id` are omitted when absent (never
//!    `null`); all others are always present (`policies` may be `[]`,
//!    `details` may be `{}`). No other members.
//! 2. Every object's members are sorted by the bytes of their UTF-8 keys
//!    (memcmp order), with no duplicates.
//! 3. No whitespace outside strings: `{"a":1,"b":[1,2]}`.
//! 4. Strings escape `"` as `\"`, `\` as `\\`, U+0008 `\b`, U+000C `\f`,
//!    U+000A `\n`, U+000D `\r`, U+0009 `\t`, the other characters below
//!    U+0020 as `\u00xx` with lowercase hex; every other character,
//!    including `/`, U+007F and non-ASCII, is written as raw UTF-8.
//! 5. Numbers are integers within ±(2^53 − 1) in plain decimal (`-` sign
//!    only when negative, no leading zeros, no fraction or exponent).
//!    `details` may hold `null`, booleans, strings, integers, arrays and
//!    objects, nested at most 32 deep.
//! 6. `time` is `YYYY-MM-DDTHH:MM:SSZ`: UTC, whole seconds.
//! 7. `key_sha256` is 64 lowercase hex digits; `actor.id` and `action` are
//!    non-empty; the whole leaf is at most 64 KiB.
//!
//! # Verifying a log offline
//!
//! Given the entries (the exact leaf bytes), a signed checkpoint and the
//! log's `vkey`: open the note with the key ([`open_note`]), parse the
//! checkpoint, decode every entry as a canonical event, and compare the root
//! of the first `size` leaf hashes with the signed root. [`verify_log`] (or
//! the streaming [`LogVerifier`]) does all of this. If the roots differ, the
//! stored nodes lead to the culprit: [`locate_first_bad_leaf`] descends
//! from the signed root through the claimed nodes, trusting only those that
//! hash up to it, to the leftmost leaf whose hash disagrees. To check that a
//! log only grew between two checkpoints, verify a consistency proof between
//! their sizes and roots.
//!
//! # Robustness
//!
//! No function panics on any input; every parser ([`open_note`],
//! [`Verifier::from_vkey`], [`Checkpoint::parse_body`],
//! [`AuditEvent::from_leaf_bytes`]) and verifier ([`verify_inclusion`],
//! [`verify_consistency`], [`verify_log`]) takes untrusted bytes, bounds
//! their size ([`MAX_NOTE_BYTES`], [`MAX_LEAF_BYTES`]) and returns an error.
//! They are ready-made fuzz targets (a `fuzz/` crate would call them
//! directly); none exists yet.

mod checkpoint;
mod error;
mod event;
mod hash;
mod note;
mod proof;
mod tree;
mod verify;

pub use checkpoint::Checkpoint;
pub use error::AuditError;
pub use event::{
    Actor, AuditEvent, EVENT_VERSION, Issuance, MAX_DETAILS_DEPTH, MAX_LEAF_BYTES,
    MAX_SAFE_INTEGER, Outcome, format_time, parse_time,
};
pub use hash::{Hash, empty_root, hash_children, hash_leaf, root_of, sha256};
pub use note::{
    ALG_ED25519, Ed25519NoteSigner, MAX_NOTE_BYTES, MAX_SIGNATURES, NoteSigner, Verifier,
    is_valid_key_name, key_id, open_note, sign_note,
};
pub use proof::{consistency_proof, inclusion_proof, verify_consistency, verify_inclusion};
pub use tree::{CompactRange, MemoryTree, NodeId, NodeReader, peak_nodes};
pub use verify::{
    LogVerifier, VerifiedLog, VerifyFailure, locate_first_bad_leaf, verify_log,
    verify_log_with_nodes,
};
