//! Credence's policy engine: [Cedar](https://www.cedarpolicy.com) behind
//! Credence's own types.
//!
//! - [`Engine::compile`] takes a Cedar schema and a policy set, names each
//!   policy by its `@id("...")` annotation (else `policyN`), and validates
//!   the set against the schema in strict mode. Nothing invalid is ever
//!   activated: every parse and validation error is returned, each naming
//!   its policy.
//! - [`Engine::decide`] never fails. Anything that goes wrong (an unknown
//!   type name, a value Cedar cannot represent, a policy that errors while
//!   evaluating) is a **deny**, with the reasons in [`Decision::errors`].
//!   Cedar by itself skips an erroring policy, which can turn into an allow
//!   when the erroring policy was a `forbid`; Credence does not.
//! - Policies are indexed by their scope (principal, action, resource):
//!   a decision evaluates only the policies whose scope can match the
//!   request, so its cost follows the applicable policies, not the size of
//!   the set.
//! - Entities (people, teams, roles, documents, tools, ...) come from an
//!   entity store in Cedar's entities JSON format, checked against the
//!   schema; a request may describe its subject and resource by
//!   properties, which fill in for entities the store does not know.
//! - [`authzen`] maps OpenID AuthZEN 1.0 evaluation requests onto all this.

pub mod authzen;
mod engine;
mod error;

pub use engine::{Builtin, Decision, Engine, EntityData, EntityRef, Query};
pub use error::PolicyError;
