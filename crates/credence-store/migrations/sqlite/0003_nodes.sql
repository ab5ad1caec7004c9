-- Nodes (attested agents), their one-time join tokens, credentials issued
-- through a node, and identities restricted to given nodes.

CREATE TABLE nodes (
    id              TEXT    NOT NULL PRIMARY KEY,
    spiffe_id       TEXT    NOT NULL UNIQUE,
    attestation     TEXT    NOT NULL,
    token_id        TEXT    NULL,
    status          TEXT    NOT NULL,
    agent_serial    TEXT    NULL,
    agent_not_after INTEGER NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX nodes_created_at_id ON nodes (created_at, id);

-- Only the SHA-256 of a token is stored; the token is shown once.
CREATE TABLE join_tokens (
    hash       TEXT    NOT NULL PRIMARY KEY,
    id         TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER NULL,
    node_id    TEXT    NULL
);

-- The node whose agent asked for the credential (NULL: the API or dev).
ALTER TABLE credentials ADD COLUMN node_id TEXT NULL;
CREATE INDEX credentials_node_id ON credentials (node_id);

-- JSON array of node ids; empty: every node.
ALTER TABLE identities ADD COLUMN nodes_json TEXT NOT NULL DEFAULT '[]';
