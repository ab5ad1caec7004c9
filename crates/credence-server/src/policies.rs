//! Policy sets and the PDP: versions stored with their audit record,
//! activation (and rollback) that swaps the compiled engine at once, the
//! entity store, and decisions for the AuthZEN endpoints.
//!
//! A policy set is compiled and validated against its schema before it is
//! stored; activating it compiles again from storage and loads the entity
//! store into it, so a set that cannot serve is never made active. Every
//! change is an audit event whose details name the policies added, removed
//! and changed against the active set.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use credence_policy::{Engine, PolicyError};
use credence_store::PolicySetRecord;

use crate::ServerError;
use crate::service::{Actor, Service, audit};

/// The active, compiled policy set.
pub struct Pdp {
    pub engine: Engine,
    pub version: u64,
    pub mapping: credence_policy::authzen::Mapping,
    /// Policy id → source text, for diffs.
    pub texts: BTreeMap<String, String>,
    /// No `forbid` of this set can reach the root administrator, so
    /// `credence.root` (no conditions) decides its every admin action:
    /// allowed without asking Cedar.
    pub root_unrestricted: bool,
}

impl Pdp {
    pub fn new(engine: Engine, version: u64, namespace: Option<String>) -> Self {
        let texts = engine.policy_texts();
        let root = crate::authz::AdminPrincipal::root();
        let root_unrestricted = !engine.forbids_may_reach(
            &crate::authz::admin_ref(&root),
            &crate::authz::admin_parents(&root),
            &crate::authz::admin_actions(),
        );
        Self {
            engine,
            version,
            mapping: credence_policy::authzen::Mapping { namespace },
            texts,
            root_unrestricted,
        }
    }
}

/// What listings show of a version (no texts).
#[derive(Clone, Debug, serde::Serialize)]
pub struct PolicySetSummary {
    pub version: u64,
    pub active: bool,
    pub namespace: Option<String>,
    pub note: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    pub created_by: String,
}

impl From<&PolicySetRecord> for PolicySetSummary {
    fn from(r: &PolicySetRecord) -> Self {
        Self {
            version: r.version,
            active: r.active,
            namespace: r.namespace.clone(),
            note: r.note.clone(),
            created_at: r.created_at,
            created_by: r.created_by.clone(),
        }
    }
}

/// A new policy set version.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPolicySet {
    pub schema: String,
    pub policies: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub activate: bool,
}

/// Largest schema or policy text accepted.
pub const MAX_POLICY_TEXT: usize = 4 * 1024 * 1024;

fn invalid(e: PolicyError) -> ServerError {
    match e {
        PolicyError::Invalid(list) => ServerError::Invalid(
            "invalid_policy_set",
            format!("the policy set is invalid ({} problems)", list.len()),
            list,
        ),
        PolicyError::Schema(m) => {
            ServerError::Invalid("invalid_schema", "the schema is invalid".into(), vec![m])
        }
        PolicyError::Entities(m) => ServerError::Invalid(
            "invalid_entities",
            "the entities do not match the schema".into(),
            vec![m],
        ),
    }
}

fn compile(rec_schema: &str, rec_policies: &str) -> Result<Engine, ServerError> {
    if rec_schema.len() > MAX_POLICY_TEXT || rec_policies.len() > MAX_POLICY_TEXT {
        return Err(ServerError::bad(
            "too_large",
            format!("schema and policies are limited to {MAX_POLICY_TEXT} bytes each"),
        ));
    }
    Engine::compile_with(crate::authz::builtin(), rec_schema, rec_policies).map_err(invalid)
}

/// Most ids of each kind named in an audit record (an audit leaf is
/// bounded; the counts are always exact).
const DIFF_IDS: usize = 100;

/// Added, removed and changed policy ids between two sets.
fn diff(old: Option<&BTreeMap<String, String>>, new: &BTreeMap<String, String>) -> Value {
    let empty = BTreeMap::new();
    let old = old.unwrap_or(&empty);
    let added: Vec<&String> = new.keys().filter(|k| !old.contains_key(*k)).collect();
    let removed: Vec<&String> = old.keys().filter(|k| !new.contains_key(*k)).collect();
    let changed: Vec<&String> = new
        .iter()
        .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
        .map(|(k, _)| k)
        .collect();
    let truncated = [&added, &removed, &changed]
        .iter()
        .any(|l| l.len() > DIFF_IDS);
    let first = |l: &[&String]| {
        l.iter()
            .take(DIFF_IDS)
            .copied()
            .cloned()
            .collect::<Vec<String>>()
    };
    json!({
        "added": first(&added),
        "removed": first(&removed),
        "changed": first(&changed),
        "counts": {"added": added.len(), "removed": removed.len(), "changed": changed.len()},
        "truncated": truncated,
    })
}

impl Service {
    /// The active PDP, if a policy set is active.
    pub fn pdp(&self) -> Option<Arc<Pdp>> {
        match self.pdp.read() {
            Ok(p) => p.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Compiles a stored version with the entity store into a PDP.
    async fn build_pdp(&self, rec: &PolicySetRecord) -> Result<Pdp, ServerError> {
        let mut engine = compile(&rec.schema, &rec.policies)?;
        if let Some(json) = self.store.policy_entities().await? {
            let v: Value = serde_json::from_str(&json)
                .map_err(|e| ServerError::Internal(format!("stored entities: {e}")))?;
            engine.set_entities(&v).map_err(invalid)?;
        }
        Ok(Pdp::new(engine, rec.version, rec.namespace.clone()))
    }

    /// The active PDP, or, when no policy set is active, one with only the
    /// built-in policies (every question about other services is denied).
    pub fn pdp_or_builtin(&self) -> Arc<Pdp> {
        static BUILTIN: std::sync::OnceLock<Arc<Pdp>> = std::sync::OnceLock::new();
        self.pdp().unwrap_or_else(|| {
            BUILTIN
                .get_or_init(|| {
                    let engine = Engine::compile_with(crate::authz::builtin(), "", "")
                        .unwrap_or_else(|e| {
                            // a build-time constant; its unit test keeps this unreachable
                            tracing::error!(error = %e, "built-in policies do not compile; denying everything");
                            Engine::deny_all()
                        });
                    Arc::new(Pdp::new(engine, 0, None))
                })
                .clone()
        })
    }

    fn install_pdp(&self, pdp: Option<Pdp>) {
        if let Ok(mut p) = self.pdp.write() {
            *p = pdp.map(Arc::new);
        }
    }

    /// Loads the active policy set at start. A set that no longer compiles
    /// (it did when activated) leaves the PDP denying everything.
    pub async fn load_policies(&self) -> Result<(), ServerError> {
        if let Some(rec) = self.store.active_policy_set().await? {
            match self.build_pdp(&rec).await {
                Ok(p) => self.install_pdp(Some(p)),
                Err(e) => {
                    tracing::error!(error = %e, version = rec.version, "active policy set does not load; the PDP denies everything");
                }
            }
        }
        Ok(())
    }

    /// A stored version compiled with today's entity store (not installed).
    pub async fn pdp_of_version(&self, version: u64) -> Result<Pdp, ServerError> {
        let rec = self.get_policy_set(version).await?;
        self.build_pdp(&rec).await
    }

    /// Validates without storing.
    pub fn validate_policy_set(
        &self,
        schema: &str,
        policies: &str,
    ) -> Result<Vec<String>, ServerError> {
        Ok(compile(schema, policies)?.policy_ids())
    }

    /// Stores a new version; with `activate`, makes it active at once.
    pub async fn create_policy_set(
        &self,
        actor: &Actor,
        new: NewPolicySet,
    ) -> Result<PolicySetRecord, ServerError> {
        if let Some(ns) = &new.namespace
            && (ns.is_empty() || ns.len() > 256)
        {
            return Err(ServerError::bad(
                "invalid_namespace",
                "namespace must be 1 to 256 characters",
            ));
        }
        let engine = compile(&new.schema, &new.policies)?;
        let texts = engine.policy_texts();
        let now = self.clock.now();
        let mut rec = PolicySetRecord {
            version: 0,
            namespace: new.namespace.clone(),
            schema: new.schema,
            policies: new.policies,
            note: new.note.unwrap_or_default(),
            created_at: now,
            created_by: actor.name.clone(),
            active: new.activate,
        };
        let pdp = if new.activate {
            Some(self.build_pdp(&rec).await?)
        } else {
            None
        };
        let current = self.pdp();
        let details = json!({
            "activate": new.activate,
            "policies": texts.len(),
            "diff_against_active": diff(current.as_ref().map(|p| &p.texts), &texts),
        });
        rec.version = self
            .store
            .save_policy_set(
                &rec,
                new.activate,
                audit(actor, now, "policy.create", "policy_set", details),
            )
            .await?;
        if let Some(mut p) = pdp {
            p.version = rec.version;
            self.install_pdp(Some(p));
        }
        Ok(rec)
    }

    /// Makes a stored version the active one (also a rollback).
    pub async fn activate_policy_set(
        &self,
        actor: &Actor,
        version: u64,
    ) -> Result<PolicySetRecord, ServerError> {
        let mut rec = self.store.get_policy_set(version).await?.ok_or_else(|| {
            ServerError::NotFound(format!("policy set version {version} not found"))
        })?;
        let pdp = self.build_pdp(&rec).await?;
        let current = self.pdp();
        let now = self.clock.now();
        self.store
            .activate_policy_set(
                version,
                audit(
                    actor,
                    now,
                    "policy.activate",
                    &format!("policy_set/{version}"),
                    json!({
                        "from": current.as_ref().map(|p| p.version),
                        "diff": diff(current.as_ref().map(|p| &p.texts), &pdp.texts),
                    }),
                ),
            )
            .await?;
        self.install_pdp(Some(pdp));
        rec.active = true;
        Ok(rec)
    }

    pub async fn list_policy_sets(&self) -> Result<Vec<PolicySetRecord>, ServerError> {
        Ok(self.store.list_policy_sets(1000).await?)
    }

    pub async fn get_policy_set(&self, version: u64) -> Result<PolicySetRecord, ServerError> {
        self.store
            .get_policy_set(version)
            .await?
            .ok_or_else(|| ServerError::NotFound(format!("policy set version {version} not found")))
    }

    /// Replaces the entity store; checked against the active schema (and
    /// refused while no policy set is active).
    pub async fn set_policy_entities(
        &self,
        actor: &Actor,
        entities: &Value,
    ) -> Result<usize, ServerError> {
        let rec = self.store.active_policy_set().await?.ok_or_else(|| {
            ServerError::Conflict("activate a policy set before loading entities (they are checked against its schema)".into())
        })?;
        let mut engine = compile(&rec.schema, &rec.policies)?;
        let count = engine.set_entities(entities).map_err(invalid)?;
        let json = entities.to_string();
        let now = self.clock.now();
        self.store
            .save_policy_entities(
                &json,
                now,
                audit(
                    actor,
                    now,
                    "policy.entities",
                    "entities",
                    json!({"entities": count}),
                ),
            )
            .await?;
        self.install_pdp(Some(Pdp::new(engine, rec.version, rec.namespace.clone())));
        Ok(count)
    }

    pub async fn policy_entities(&self) -> Result<Value, ServerError> {
        match self.store.policy_entities().await? {
            Some(j) => serde_json::from_str(&j)
                .map_err(|e| ServerError::Internal(format!("stored entities: {e}"))),
            None => Ok(json!([])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_of_large_sets_stay_small() {
        let old: BTreeMap<String, String> = (0..5000)
            .map(|i| (format!("p{i}"), "permit".to_owned()))
            .collect();
        let new: BTreeMap<String, String> = (2500..10_000)
            .map(|i| {
                (
                    format!("p{i}"),
                    if i < 3000 { "forbid" } else { "permit" }.to_owned(),
                )
            })
            .collect();
        let d = diff(Some(&old), &new);
        assert_eq!(
            d["counts"],
            json!({"added": 5000, "removed": 2500, "changed": 500})
        );
        assert_eq!(d["truncated"], true);
        assert_eq!(d["added"].as_array().map(Vec::len), Some(DIFF_IDS));
        assert!(d.to_string().len() < 16 * 1024);
    }
}
