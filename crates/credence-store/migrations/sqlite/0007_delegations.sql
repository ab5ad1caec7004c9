-- Delegation grants: bounded mandates an agent holds for a principal,
-- chained by parent. `path` is "/root/.../this/": a grant's descendants
-- are the grants whose path starts with its own (cascade revocation).

CREATE TABLE delegations (
    id                    TEXT    NOT NULL PRIMARY KEY,
    parent_id             TEXT    NULL REFERENCES delegations (id),
    path                  TEXT    NOT NULL UNIQUE,
    chain_json            TEXT    NOT NULL,
    principal_json        TEXT    NOT NULL,
    grantor_json          TEXT    NOT NULL,
    grantee               TEXT    NOT NULL,
    scopes_json           TEXT    NOT NULL,
    audiences_json        TEXT    NOT NULL,
    max_token_ttl_seconds INTEGER NOT NULL,
    max_depth             INTEGER NOT NULL,
    not_before            INTEGER NOT NULL,
    expires_at            INTEGER NOT NULL,
    max_uses              INTEGER NULL,
    uses                  INTEGER NOT NULL DEFAULT 0,
    note                  TEXT    NOT NULL DEFAULT '',
    created_at            INTEGER NOT NULL,
    revoked_at            INTEGER NULL,
    revocation_reason     TEXT    NULL
);

CREATE INDEX delegations_grantee ON delegations (grantee);
CREATE INDEX delegations_parent ON delegations (parent_id);

-- The grant a credential was minted under (NULL: none); revoking the
-- grant revokes it.
ALTER TABLE credentials ADD COLUMN delegation_id TEXT NULL;
CREATE INDEX credentials_delegation ON credentials (delegation_id) WHERE delegation_id IS NOT NULL;
