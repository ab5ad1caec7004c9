//! The one error type of this crate.

/// Everything that can go wrong in `credence-audit`.
///
/// Messages are lowercase and specific; no function of this crate panics on
/// any input, every failure comes back as one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    // --- tree and storage ---
    /// A node the computation needs is not in the node store.
    #[error("node (level {level}, index {index}) is not stored")]
    NodeMissing {
        /// Level of the missing node (0 = leaf hashes).
        level: u8,
        /// Index of the missing node within its level.
        index: u64,
    },
    /// The node store failed; stores wrap their own errors in this.
    #[error("node store failed: {0}")]
    Storage(String),
    /// The tree already holds 2^64 − 1 leaves.
    #[error("tree is full")]
    TreeFull,
    /// `CompactRange::from_peaks` got the wrong number of peaks for the size.
    #[error("a tree of size {size} has {expected} peaks, got {got}")]
    PeakCount {
        /// Tree size.
        size: u64,
        /// Number of peaks such a tree has (the number of one bits of the size).
        expected: usize,
        /// Number of peaks supplied.
        got: usize,
    },
    /// A subtree range that no Merkle tree decomposition produces.
    #[error("invalid subtree range [{start}, {end})")]
    InvalidRange {
        /// First leaf of the range.
        start: u64,
        /// One past the last leaf of the range.
        end: u64,
    },

    // --- proofs ---
    /// A leaf index at or beyond the tree size.
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange {
        /// The leaf index asked for.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A consistency proof between a larger and a smaller tree.
    #[error("consistency needs the first size ({first}) to be at most the second ({second})")]
    SizesOutOfOrder {
        /// The older tree size.
        first: u64,
        /// The newer tree size.
        second: u64,
    },
    /// The inclusion proof does not lead to the expected root.
    #[error("inclusion proof does not verify")]
    InclusionProofInvalid,
    /// The consistency proof does not lead to the expected roots.
    #[error("consistency proof does not verify")]
    ConsistencyProofInvalid,

    // --- signed notes and keys ---
    /// A signed note that breaks the C2SP signed-note format.
    #[error("malformed note: {0}")]
    MalformedNote(&'static str),
    /// A signed note above [`crate::MAX_NOTE_BYTES`].
    #[error("note is {len} bytes, more than the limit of {max}")]
    NoteTooLarge {
        /// Length of the note in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A key name that is empty or holds a space, a plus sign or a control character.
    #[error("invalid key name {0:?}")]
    InvalidKeyName(String),
    /// A verifier key string that is not `<name>+<hex key id>+<base64(0x01 || key)>`.
    #[error("malformed verifier key: {0}")]
    MalformedVerifierKey(&'static str),
    /// Two configured verifiers share a key name and key id.
    #[error("ambiguous key {name}+{key_id:08x}")]
    AmbiguousKey {
        /// Key name.
        name: String,
        /// Key id.
        key_id: u32,
    },
    /// A signature from a known key that does not verify.
    #[error("invalid signature for key {name}+{key_id:08x}")]
    InvalidSignature {
        /// Key name.
        name: String,
        /// Key id.
        key_id: u32,
    },
    /// No signature in the note is from a known key.
    #[error("note has no verifiable signatures")]
    NoVerifiableSignatures,
    /// A key could not be generated, loaded or used.
    #[error("key error: {0}")]
    Key(&'static str),
    /// The signer failed, or returned a signature its own public key rejects.
    #[error("signing failed: {0}")]
    Signing(String),

    // --- checkpoints ---
    /// A checkpoint body that breaks the C2SP tlog-checkpoint format.
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(&'static str),

    // --- audit events ---
    /// An event that cannot be encoded (a rule of the leaf encoding is broken).
    #[error("invalid audit event: {0}")]
    InvalidEvent(String),
    /// Leaf bytes that are not JSON of an audit event.
    #[error("leaf is not an audit event: {0}")]
    LeafDecode(String),
    /// Leaf bytes that decode but are not byte-for-byte the canonical encoding.
    #[error("leaf is not in the canonical encoding")]
    NonCanonicalLeaf,
    /// Leaf bytes above [`crate::MAX_LEAF_BYTES`].
    #[error("leaf is {len} bytes, more than the limit of {max}")]
    LeafTooLarge {
        /// Length of the leaf in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
}
