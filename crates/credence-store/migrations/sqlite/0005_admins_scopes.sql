-- Named administrators with their own tokens (only the SHA-256 is
-- stored), and the scopes an identity's tokens may carry.

CREATE TABLE admins (
    name        TEXT    NOT NULL PRIMARY KEY,
    teams_json  TEXT    NOT NULL,
    description TEXT    NOT NULL,
    token_hash  TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    created_by  TEXT    NOT NULL,
    expires_at  INTEGER NULL
);

-- JSON array of scope strings.
ALTER TABLE identities ADD COLUMN scopes_json TEXT NOT NULL DEFAULT '[]';
