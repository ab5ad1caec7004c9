-- Credence storage schema, version 1.
-- Portable on purpose: TEXT / INTEGER / BLOB columns only, timestamps are
-- INTEGER unix seconds, booleans are INTEGER 0/1, JSON is stored as TEXT.
-- The only SQLite-specific construct is `INTEGER PRIMARY KEY AUTOINCREMENT`
-- (PostgreSQL: `BIGINT GENERATED ALWAYS AS IDENTITY`).

CREATE TABLE identities (
    id              TEXT    NOT NULL PRIMARY KEY,
    spiffe_id       TEXT    NOT NULL UNIQUE,
    kind            TEXT    NOT NULL,
    owner           TEXT    NOT NULL,
    description     TEXT    NOT NULL,
    labels_json     TEXT    NOT NULL,
    selectors_json  TEXT    NOT NULL,
    max_ttl_seconds INTEGER NULL,
    status          TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_issued_at  INTEGER NULL
);
CREATE INDEX identities_created_at_id ON identities (created_at, id);
CREATE INDEX identities_owner ON identities (owner);

-- One row per label of an identity, for label filters (labels_json stays the
-- source of truth for reads).
CREATE TABLE identity_labels (
    identity_id TEXT NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (identity_id, key)
);
CREATE INDEX identity_labels_key_value ON identity_labels (key, value);

-- Issued credentials. No foreign key to identities: rows outlive a deleted
-- identity for the CRL and the inventory.
CREATE TABLE credentials (
    serial            TEXT    NOT NULL PRIMARY KEY,
    kind              TEXT    NOT NULL,
    identity_id       TEXT    NOT NULL,
    spiffe_id         TEXT    NOT NULL,
    issuer            TEXT    NOT NULL,
    not_before        INTEGER NOT NULL,
    not_after         INTEGER NOT NULL,
    key_fingerprint   TEXT    NULL,
    revoked_at        INTEGER NULL,
    revocation_reason TEXT    NULL
);
CREATE INDEX credentials_spiffe_id ON credentials (spiffe_id);
CREATE INDEX credentials_revoked_at_not_after ON credentials (revoked_at, not_after);

CREATE TABLE cas (
    id             TEXT    NOT NULL PRIMARY KEY,
    role           TEXT    NOT NULL,
    cert_der       BLOB    NULL,
    public_key_der BLOB    NOT NULL,
    wrapped_key    BLOB    NOT NULL,
    not_before     INTEGER NOT NULL,
    not_after      INTEGER NOT NULL,
    active         INTEGER NOT NULL,
    created_at     INTEGER NOT NULL
);

CREATE TABLE crl_numbers (
    issuer TEXT    NOT NULL PRIMARY KEY,
    last   INTEGER NOT NULL
);

CREATE TABLE audit_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    target      TEXT    NOT NULL,
    outcome     TEXT    NOT NULL,
    detail_json TEXT    NOT NULL
);
