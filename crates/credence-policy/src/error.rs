/// Errors of the policy crate. Decisions never return one: see
/// [`crate::Engine::decide`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The schema does not parse.
    #[error("invalid schema: {0}")]
    Schema(String),
    /// The policy set does not parse or does not validate against the
    /// schema; every problem is listed.
    #[error("invalid policy set: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The entities document does not parse or does not match the schema.
    #[error("invalid entities: {0}")]
    Entities(String),
}
