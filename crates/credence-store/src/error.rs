//! The store's error type.

/// Errors from a [`Store`](crate::Store).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The addressed record does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A unique constraint would be violated.
    #[error("{0}")]
    Conflict(String),
    /// A stored row is malformed (an internal error).
    #[error("{0}")]
    Invalid(String),
    /// An argument from the caller (such as a cursor) is malformed.
    #[error("{0}")]
    BadArgument(String),
    /// The database failed.
    #[error("storage backend error: {0}")]
    Backend(String),
    /// The store was closed.
    #[error("store is shutting down")]
    Closed,
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolClosed => Self::Closed,
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Self::Conflict(format!("unique constraint violated: {}", db.message()))
            }
            other => Self::Backend(other.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self::Backend(format!("migration failed: {e}"))
    }
}
