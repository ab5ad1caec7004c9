//! The Credence node agent.

pub mod generated;
