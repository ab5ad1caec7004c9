-- Versioned Cedar policy sets (schema + policies), one of them active, and
-- the PDP's entity store (Cedar entities JSON).

CREATE TABLE policy_sets (
    version    INTEGER NOT NULL PRIMARY KEY,
    namespace  TEXT    NULL,
    schema     TEXT    NOT NULL,
    policies   TEXT    NOT NULL,
    note       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT    NOT NULL,
    active     INTEGER NOT NULL
);

CREATE TABLE policy_entities (
    id         INTEGER NOT NULL PRIMARY KEY,
    json       TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
);
