-- SPIFFE federation: relationships with foreign trust domains and the last
-- bundle fetched from each, and the foreign trust domains an identity's
-- workloads receive bundles of.

CREATE TABLE federations (
    trust_domain        TEXT    NOT NULL PRIMARY KEY,
    bundle_endpoint     TEXT    NOT NULL,
    profile             TEXT    NOT NULL,
    endpoint_spiffe_id  TEXT    NULL,
    tls_roots_pem       TEXT    NULL,
    created_at          INTEGER NOT NULL,
    created_by          TEXT    NOT NULL,
    bundle_document     TEXT    NULL,
    bundle_sequence     INTEGER NULL,
    bundle_refresh_hint INTEGER NULL,
    bundle_fetched_at   INTEGER NULL,
    last_error          TEXT    NULL,
    last_attempt_at     INTEGER NULL
);

-- JSON array of trust domain names.
ALTER TABLE identities ADD COLUMN federates_with_json TEXT NOT NULL DEFAULT '[]';
