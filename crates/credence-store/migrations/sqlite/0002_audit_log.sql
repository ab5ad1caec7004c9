-- The tamper-evident audit log (RFC 9162 Merkle tree).
--
-- `audit_log` holds the leaves: `leaf` is the exact byte string hashed as the
-- Merkle leaf (the canonical encoding of a credence-audit event). The other
-- columns are copies of event fields for searching; verification uses only
-- `leaf` and `audit_nodes`.
--
-- The plain `audit_events` table of version 1 is replaced: it was never
-- published, and its rows cannot be chained retroactively with a trustworthy
-- history.
DROP TABLE audit_events;

CREATE TABLE audit_log (
    idx       INTEGER NOT NULL PRIMARY KEY,
    leaf      BLOB    NOT NULL,
    at        INTEGER NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    target    TEXT    NOT NULL,
    outcome   TEXT    NOT NULL,
    spiffe_id TEXT    NULL
);
CREATE INDEX audit_log_action ON audit_log (action, idx);
CREATE INDEX audit_log_target ON audit_log (target, idx);
CREATE INDEX audit_log_spiffe_id ON audit_log (spiffe_id, idx);
CREATE INDEX audit_log_at ON audit_log (at, idx);

-- Hashes of complete subtrees: node (level, idx) covers leaves
-- [idx * 2^level, (idx + 1) * 2^level); level 0 are the leaf hashes.
CREATE TABLE audit_nodes (
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB    NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;

-- Signed checkpoints (C2SP signed notes), one per tree size.
CREATE TABLE audit_checkpoints (
    size       INTEGER NOT NULL PRIMARY KEY,
    note       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
