//! The SQLite schema migrations, embedded at compile time.
//!
//! The files live in `migrations/sqlite/NNNN_name.sql` and are embedded with
//! `include_str!` and handed to [`Migrator::with_migrations`]. This is what
//! `sqlx::migrate!` expands to (same versions, same checksums, same
//! `_sqlx_migrations` table), without needing sqlx's proc-macro feature.
//! A unit test checks that this list matches the directory.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// `(version, description, sql)`, in version order.
pub(crate) const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "audit log",
        include_str!("../../migrations/sqlite/0002_audit_log.sql"),
    ),
    (
        3,
        "nodes",
        include_str!("../../migrations/sqlite/0003_nodes.sql"),
    ),
    (
        4,
        "policies",
        include_str!("../../migrations/sqlite/0004_policies.sql"),
    ),
    (
        5,
        "admins scopes",
        include_str!("../../migrations/sqlite/0005_admins_scopes.sql"),
    ),
    (
        6,
        "federation",
        include_str!("../../migrations/sqlite/0006_federation.sql"),
    ),
    (
        7,
        "delegations",
        include_str!("../../migrations/sqlite/0007_delegations.sql"),
    ),
];

pub(crate) fn migrator() -> Migrator {
    Migrator::with_migrations(
        SQLITE_MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_list_matches_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> = SQLITE_MIGRATIONS
            .iter()
            .map(|(v, d, _)| format!("{v:04}_{}.sql", d.replace(' ', "_")))
            .collect();
        assert_eq!(files, embedded);
        for ((_, _, sql), file) in SQLITE_MIGRATIONS.iter().zip(&files) {
            assert_eq!(*sql, std::fs::read_to_string(dir.join(file)).unwrap());
        }
    }
}
