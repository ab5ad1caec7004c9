//! The compiled policy set, its scope index, the entity store, decisions.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    Policy, PolicyId, PolicySet, PrincipalConstraint, Request, ResourceConstraint,
    RestrictedExpression, Schema, SchemaFragment, ValidationMode, Validator,
};
use serde_json::{Map, Value};

use crate::PolicyError;

/// An entity named by its Cedar type (`Ns::Type`) and id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct EntityRef {
    pub kind: String,
    pub id: String,
}

impl EntityRef {
    pub fn new(kind: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            id: id.into(),
        }
    }
}

/// An entity supplied with a question, complete with its parents and tags:
/// it stands in for any entity of the same name in the store. Credence
/// describes its own identities this way, from the registry.
#[derive(Clone, Debug, Default)]
pub struct EntityData {
    pub uid: EntityRef,
    pub attrs: Map<String, Value>,
    pub parents: Vec<EntityRef>,
    pub tags: Map<String, Value>,
}

/// One authorization question.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub principal: Option<EntityRef>,
    /// Attributes of the principal when the entity store does not know it.
    pub principal_attrs: Map<String, Value>,
    /// The action's entity: type `Ns::Action`, id its name.
    pub action: Option<EntityRef>,
    pub resource: Option<EntityRef>,
    /// Attributes of the resource when the entity store does not know it.
    pub resource_attrs: Map<String, Value>,
    pub context: Map<String, Value>,
    /// Entities that take precedence over the store's.
    pub entities: Vec<EntityData>,
}

/// The answer. `allow` is true only when Cedar allowed and nothing erred.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Decision {
    pub allow: bool,
    /// The deciding policies: the satisfied `forbid`s on a deny, the
    /// satisfied `permit`s on an allow; empty for a default deny.
    pub policies: Vec<String>,
    /// Why the decision had to deny (evaluation or request errors).
    pub errors: Vec<String>,
}

impl Decision {
    fn error(e: impl Into<String>) -> Self {
        Self {
            allow: false,
            policies: Vec::new(),
            errors: vec![e.into()],
        }
    }
}

/// Index key of one scope constraint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Uid(EntityUid),
    Type(EntityTypeName),
}

/// Policies by the keys their scope constraint can match; `any` holds the
/// unconstrained ones.
#[derive(Default)]
struct Dimension {
    by_key: HashMap<Key, Vec<usize>>,
    any: Vec<usize>,
}

impl Dimension {
    fn add(&mut self, keys: &Option<Vec<Key>>, i: usize) {
        match keys {
            None => self.any.push(i),
            Some(ks) => {
                for k in ks {
                    self.by_key.entry(k.clone()).or_default().push(i);
                }
            }
        }
    }

    /// How many policies [`Self::each`] would visit for these keys.
    fn count(&self, keys: &[Key]) -> usize {
        self.any.len()
            + keys
                .iter()
                .map(|k| self.by_key.get(k).map_or(0, Vec::len))
                .sum::<usize>()
    }

    /// Every policy this dimension allows for an entity with these keys
    /// (possibly repeated).
    fn each<'a>(&'a self, keys: &'a [Key]) -> impl Iterator<Item = usize> + 'a {
        self.any.iter().copied().chain(
            keys.iter()
                .filter_map(|k| self.by_key.get(k))
                .flat_map(|v| v.iter().copied()),
        )
    }
}

/// One policy's scope keys per dimension (`None`: unconstrained).
struct Scope {
    principal: Option<Vec<Key>>,
    action: Option<Vec<Key>>,
    resource: Option<Vec<Key>>,
}

fn matches(scope: &Option<Vec<Key>>, keys: &[Key]) -> bool {
    scope
        .as_ref()
        .is_none_or(|ks| ks.iter().any(|k| keys.contains(k)))
}

fn principal_keys(c: PrincipalConstraint) -> Option<Vec<Key>> {
    match c {
        PrincipalConstraint::Any => None,
        PrincipalConstraint::In(u) | PrincipalConstraint::Eq(u) => Some(vec![Key::Uid(u)]),
        PrincipalConstraint::Is(t) => Some(vec![Key::Type(t)]),
        PrincipalConstraint::IsIn(_, u) => Some(vec![Key::Uid(u)]),
    }
}

fn resource_keys(c: ResourceConstraint) -> Option<Vec<Key>> {
    match c {
        ResourceConstraint::Any => None,
        ResourceConstraint::In(u) | ResourceConstraint::Eq(u) => Some(vec![Key::Uid(u)]),
        ResourceConstraint::Is(t) => Some(vec![Key::Type(t)]),
        ResourceConstraint::IsIn(_, u) => Some(vec![Key::Uid(u)]),
    }
}

fn action_keys(c: ActionConstraint) -> Option<Vec<Key>> {
    match c {
        ActionConstraint::Any => None,
        ActionConstraint::Eq(u) => Some(vec![Key::Uid(u)]),
        ActionConstraint::In(us) => Some(us.into_iter().map(Key::Uid).collect()),
    }
}

/// Supplied entities by name, with their parents.
type Supplied = HashMap<EntityUid, (Entity, Vec<EntityUid>)>;

/// A validated policy set with its schema, scope index and entity store.
pub struct Engine {
    /// `None` only for [`Engine::deny_all`].
    schema: Option<Schema>,
    policies: Vec<Policy>,
    scopes: Vec<Scope>,
    principal: Dimension,
    action: Dimension,
    resource: Dimension,
    /// The schema's action entities (action groups included).
    actions: Entities,
    store: Entities,
    authorizer: Authorizer,
    /// Every policy in one set, for [`Engine::decide_unindexed`].
    all: PolicySet,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("policies", &self.policies.len())
            .field("entities", &self.store.len())
            .finish_non_exhaustive()
    }
}

/// Parses a schema fragment in Cedar syntax, or JSON when it starts with `{`.
fn parse_fragment(src: &str) -> Result<SchemaFragment, PolicyError> {
    if src.trim_start().starts_with('{') {
        SchemaFragment::from_json_str(src).map_err(|e| PolicyError::Schema(full(&e)))
    } else {
        SchemaFragment::from_cedarschema_str(src)
            .map(|(s, _warnings)| s)
            .map_err(|e| PolicyError::Schema(located(&e, src)))
    }
}

/// Policies that are part of every set (see [`Engine::compile_with`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Builtin<'a> {
    /// A schema fragment merged with the set's own schema.
    pub schema: &'a str,
    /// Policies added to the set's own.
    pub policies: &'a str,
    /// An id prefix only the built-in policies may use (e.g. `credence.`).
    pub reserved_prefix: &'a str,
}

/// [`full`], with the line and column of the error's first label in `src`
/// (Cedar's parse errors carry the offset, not the position).
fn located<E: std::fmt::Display + miette::Diagnostic>(e: &E, src: &str) -> String {
    let at = e
        .labels()
        .and_then(|mut l| l.next())
        .map(|l| l.offset())
        .filter(|&o| o <= src.len() && src.is_char_boundary(o));
    match at {
        Some(o) => {
            let before = &src[..o];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {col}: {}", full(e))
        }
        None => full(e),
    }
}

/// A diagnostic with its related errors (Cedar's `Display` shows only the
/// first of several).
fn full(e: &dyn miette_like::Diag) -> String {
    e.render()
}

mod miette_like {
    /// What we need of a Cedar error: its message and those related to it.
    pub trait Diag {
        fn render(&self) -> String;
    }
    impl<T: std::fmt::Display + miette::Diagnostic> Diag for T {
        fn render(&self) -> String {
            let mut out = self.to_string();
            if let Some(h) = self.help() {
                out.push_str(&format!(" ({h})"));
            }
            if let Some(rel) = self.related() {
                for r in rel {
                    out.push_str("; ");
                    out.push_str(&r.to_string());
                }
            }
            out
        }
    }
}

impl Engine {
    /// Parses and validates; lists every problem on failure.
    pub fn compile(schema_src: &str, policies_src: &str) -> Result<Self, PolicyError> {
        Self::compile_with(Builtin::default(), schema_src, policies_src)
    }

    /// Like [`Engine::compile`], with built-in policies and schema merged
    /// into the set: the set may refer to the built-in types, may not
    /// declare them again, and may not use the reserved id prefix.
    pub fn compile_with(
        builtin: Builtin<'_>,
        schema_src: &str,
        policies_src: &str,
    ) -> Result<Self, PolicyError> {
        let mut fragments = Vec::new();
        if !builtin.schema.trim().is_empty() {
            fragments.push(parse_fragment(builtin.schema)?);
        }
        fragments.push(parse_fragment(schema_src)?);
        let schema =
            Schema::from_schema_fragments(fragments).map_err(|e| PolicyError::Schema(full(&e)))?;
        let parse = |src: &str| {
            PolicySet::from_str(src).map_err(|errs| {
                PolicyError::Invalid(errs.iter().map(|e| located(e, src)).collect::<Vec<_>>())
            })
        };
        let own = parse(policies_src)?;
        let base = parse(builtin.policies)?;
        // name policies by @id, keeping source order
        let mut named = Vec::new();
        let mut seen = HashSet::new();
        let mut problems = Vec::new();
        for (set, is_builtin) in [(&base, true), (&own, false)] {
            let mut ordered: Vec<&Policy> = set.policies().collect();
            ordered.sort_by_key(|p| {
                p.id()
                    .to_string()
                    .trim_start_matches("policy")
                    .parse::<u64>()
                    .unwrap_or(u64::MAX)
            });
            for p in ordered {
                let id = p
                    .annotation("id")
                    .map(str::to_owned)
                    .unwrap_or_else(|| p.id().to_string());
                if !is_builtin
                    && !builtin.reserved_prefix.is_empty()
                    && id.starts_with(builtin.reserved_prefix)
                {
                    problems.push(format!(
                        "policy {id}: ids starting with {:?} are reserved for built-in policies",
                        builtin.reserved_prefix
                    ));
                    continue;
                }
                if !seen.insert(id.clone()) {
                    problems.push(format!("two policies have the id {id:?}"));
                    continue;
                }
                named.push(p.new_id(PolicyId::new(id)));
            }
        }
        if !problems.is_empty() {
            return Err(PolicyError::Invalid(problems));
        }
        let set = PolicySet::from_policies(named.iter().cloned())
            .map_err(|e| PolicyError::Invalid(vec![full(&e)]))?;
        let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
        if !result.validation_passed() {
            return Err(PolicyError::Invalid(
                result
                    .validation_errors()
                    .map(|e| format!("policy {}: {}", e.policy_id(), located(e, policies_src)))
                    .collect(),
            ));
        }
        let actions = schema
            .action_entities()
            .map_err(|e| PolicyError::Schema(full(&e)))?;
        let mut engine = Self {
            schema: Some(schema),
            policies: Vec::with_capacity(named.len()),
            scopes: Vec::with_capacity(named.len()),
            principal: Dimension::default(),
            action: Dimension::default(),
            resource: Dimension::default(),
            actions,
            store: Entities::empty(),
            authorizer: Authorizer::new(),
            all: set,
        };
        for (i, p) in named.into_iter().enumerate() {
            let scope = Scope {
                principal: principal_keys(p.principal_constraint()),
                action: action_keys(p.action_constraint()),
                resource: resource_keys(p.resource_constraint()),
            };
            engine.principal.add(&scope.principal, i);
            engine.action.add(&scope.action, i);
            engine.resource.add(&scope.resource, i);
            engine.scopes.push(scope);
            engine.policies.push(p);
        }
        Ok(engine)
    }

    /// An engine with no schema and no policy: every question is denied
    /// (Cedar's default), malformed ones with their reasons.
    pub fn deny_all() -> Self {
        Self {
            schema: None,
            policies: Vec::new(),
            scopes: Vec::new(),
            principal: Dimension::default(),
            action: Dimension::default(),
            resource: Dimension::default(),
            actions: Entities::empty(),
            store: Entities::empty(),
            authorizer: Authorizer::new(),
            all: PolicySet::new(),
        }
    }

    /// Policy id → its text, for diffs between versions.
    pub fn policy_texts(&self) -> std::collections::BTreeMap<String, String> {
        self.policies
            .iter()
            .map(|p| (p.id().to_string(), p.to_string()))
            .collect()
    }

    /// Ids of the policies, in source order.
    pub fn policy_ids(&self) -> Vec<String> {
        self.policies.iter().map(|p| p.id().to_string()).collect()
    }

    /// Replaces the entity store with a Cedar entities JSON document,
    /// checked against the schema; returns how many entities it held.
    pub fn set_entities(&mut self, json: &Value) -> Result<usize, PolicyError> {
        let store = Entities::from_json_value(json.clone(), self.schema.as_ref())
            .map_err(|e| PolicyError::Entities(full(&e)))?;
        self.store = store;
        // the store also holds the schema's actions; report the document's
        Ok(json.as_array().map_or(0, Vec::len))
    }

    fn uid(r: &EntityRef) -> Result<EntityUid, String> {
        let t = EntityTypeName::from_str(&r.kind)
            .map_err(|e| format!("{:?} is not a valid entity type: {e}", r.kind))?;
        Ok(EntityUid::from_type_name_and_id(t, EntityId::new(&r.id)))
    }

    /// The entity for `uid`: the store's, else one made from `attrs`.
    fn entity(&self, uid: &EntityUid, attrs: &Map<String, Value>) -> Result<Entity, String> {
        if let Some(e) = self.store.get(uid) {
            return Ok(e.clone());
        }
        let attrs = attrs
            .iter()
            .filter_map(|(k, v)| restricted(v).map(|r| r.map(|r| (k.clone(), r))))
            .collect::<Result<HashMap<_, _>, _>>()
            .map_err(|e| format!("attributes of {uid}: {e}"))?;
        Entity::new(uid.clone(), attrs, HashSet::new())
            .map_err(|e| format!("attributes of {uid}: {}", full(&e)))
    }

    /// An entity supplied with the request.
    fn supplied(e: &EntityData) -> Result<(EntityUid, Entity, Vec<EntityUid>), String> {
        let uid = Self::uid(&e.uid)?;
        let values = |m: &Map<String, Value>, what: &str| {
            m.iter()
                .filter_map(|(k, v)| restricted(v).map(|r| r.map(|r| (k.clone(), r))))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| format!("{what} of {uid}: {err}"))
        };
        let parents = e
            .parents
            .iter()
            .map(Self::uid)
            .collect::<Result<Vec<_>, _>>()?;
        let entity = Entity::new_with_tags(
            uid.clone(),
            values(&e.attrs, "attributes")?,
            parents.iter().cloned(),
            values(&e.tags, "tags")?,
        )
        .map_err(|err| format!("entity {uid}: {}", full(&err)))?;
        Ok((uid, entity, parents))
    }

    /// Every ancestor of `uid`: a supplied entity's parents and theirs in
    /// the store, else the store's.
    fn ancestors(&self, uid: &EntityUid, supplied: &Supplied) -> Vec<EntityUid> {
        let mut out = Vec::new();
        match supplied.get(uid) {
            Some((_, parents)) => {
                for p in parents {
                    out.push(p.clone());
                    if let Some(anc) = self.store.ancestors(p) {
                        out.extend(anc.cloned());
                    }
                }
            }
            None => {
                if let Some(anc) = self.store.ancestors(uid) {
                    out.extend(anc.cloned());
                }
            }
        }
        out
    }

    /// Keys an entity is found under in the index: itself, its type, its
    /// ancestors.
    fn keys_of(uid: &EntityUid, ancestors: &[EntityUid]) -> Vec<Key> {
        let mut keys = vec![Key::Uid(uid.clone()), Key::Type(uid.type_name().clone())];
        keys.extend(ancestors.iter().cloned().map(Key::Uid));
        keys
    }

    /// The policies whose scope can match: walk the most selective
    /// dimension's list and check the other two per policy.
    fn candidates(&self, pk: &[Key], ak: &[Key], rk: &[Key]) -> Vec<usize> {
        let dims = [
            (self.principal.count(pk), &self.principal, pk),
            (self.action.count(ak), &self.action, ak),
            (self.resource.count(rk), &self.resource, rk),
        ];
        let Some((_, dim, keys)) = dims.iter().min_by_key(|d| d.0) else {
            return Vec::new();
        };
        let mut out: Vec<usize> = dim
            .each(keys)
            .filter(|&i| {
                self.scopes.get(i).is_some_and(|s| {
                    matches(&s.principal, pk) && matches(&s.action, ak) && matches(&s.resource, rk)
                })
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Decides; never fails (see the crate docs).
    pub fn decide(&self, q: &Query) -> Decision {
        match self.try_decide(q, true) {
            Ok(d) => d,
            Err(e) => Decision::error(e),
        }
    }

    /// The same decision with every policy evaluated, as Cedar alone does
    /// (for benchmarks and for checking the index).
    pub fn decide_unindexed(&self, q: &Query) -> Decision {
        match self.try_decide(q, false) {
            Ok(d) => d,
            Err(e) => Decision::error(e),
        }
    }

    fn try_decide(&self, q: &Query, indexed: bool) -> Result<Decision, String> {
        let need = |r: &Option<EntityRef>, what: &str| {
            r.as_ref()
                .ok_or_else(|| format!("the request names no {what}"))
                .and_then(Self::uid)
        };
        let p = need(&q.principal, "principal")?;
        let a = need(&q.action, "action")?;
        let r = need(&q.resource, "resource")?;

        // this request's entities: those supplied, principal, resource,
        // their ancestors
        let mut supplied: Supplied = HashMap::new();
        for e in &q.entities {
            let (uid, entity, parents) = Self::supplied(e)?;
            supplied.insert(uid, (entity, parents));
        }
        let p_anc = self.ancestors(&p, &supplied);
        let r_anc = self.ancestors(&r, &supplied);
        let mut slice: HashMap<EntityUid, Entity> = supplied
            .iter()
            .map(|(u, (e, _))| (u.clone(), e.clone()))
            .collect();
        for (uid, attrs) in [(&p, &q.principal_attrs), (&r, &q.resource_attrs)] {
            if !slice.contains_key(uid) {
                slice.insert(uid.clone(), self.entity(uid, attrs)?);
            }
        }
        for u in p_anc.iter().chain(&r_anc) {
            if !slice.contains_key(u)
                && let Some(e) = self.store.get(u)
            {
                slice.insert(u.clone(), e.clone());
            }
        }
        let entities = Entities::from_entities(
            slice.into_values().chain(self.actions.iter().cloned()),
            None,
        )
        .map_err(|e| format!("request entities: {}", full(&e)))?;

        let pairs = q
            .context
            .iter()
            .filter_map(|(k, v)| restricted(v).map(|r| r.map(|r| (k.clone(), r))))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("context: {e}"))?;
        let context = Context::from_pairs(pairs).map_err(|e| format!("context: {}", full(&e)))?;
        let request = Request::new(p.clone(), a.clone(), r.clone(), context, None)
            .map_err(|e| format!("request: {}", full(&e)))?;

        let slice;
        let set = if indexed {
            let a_anc: Vec<EntityUid> = self
                .actions
                .ancestors(&a)
                .map(|i| i.cloned().collect())
                .unwrap_or_default();
            slice = PolicySet::from_policies(
                self.candidates(
                    &Self::keys_of(&p, &p_anc),
                    &Self::keys_of(&a, &a_anc),
                    &Self::keys_of(&r, &r_anc),
                )
                .into_iter()
                .filter_map(|i| self.policies.get(i).cloned()),
            )
            .map_err(|e| format!("policy slice: {}", full(&e)))?;
            &slice
        } else {
            &self.all
        };
        let resp = self.authorizer.is_authorized(&request, set, &entities);
        let errors: Vec<String> = resp.diagnostics().errors().map(|e| e.to_string()).collect();
        Ok(Decision {
            allow: resp.decision() == cedar_policy::Decision::Allow && errors.is_empty(),
            policies: resp
                .diagnostics()
                .reason()
                .map(|id| id.to_string())
                .collect(),
            errors,
        })
    }
}

/// A JSON value as a Cedar value, built directly (no JSON re-parsing):
/// `null` and non-integer numbers have no Cedar form and are left out
/// (`None`); `{"__entity": {"type", "id"}}` is an entity reference and
/// `{"__extn": {"fn": "ip"|"decimal", "arg"}}` an extension value, as in
/// Cedar's JSON formats.
fn restricted(v: &Value) -> Option<Result<RestrictedExpression, String>> {
    Some(Ok(match v {
        Value::Null => return None,
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::Number(n) => RestrictedExpression::new_long(n.as_i64()?),
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Array(a) => {
            let items = a
                .iter()
                .filter_map(restricted)
                .collect::<Result<Vec<_>, _>>();
            match items {
                Ok(items) => RestrictedExpression::new_set(items),
                Err(e) => return Some(Err(e)),
            }
        }
        Value::Object(o) => {
            if let (Some(Value::Object(e)), 1) = (o.get("__entity"), o.len()) {
                let (Some(Value::String(t)), Some(Value::String(id))) =
                    (e.get("type"), e.get("id"))
                else {
                    return Some(Err("__entity needs string type and id".into()));
                };
                return Some(
                    EntityTypeName::from_str(t)
                        .map(|t| {
                            RestrictedExpression::new_entity_uid(EntityUid::from_type_name_and_id(
                                t,
                                EntityId::new(id),
                            ))
                        })
                        .map_err(|e| format!("{t:?} is not a valid entity type: {e}")),
                );
            }
            if let (Some(Value::Object(x)), 1) = (o.get("__extn"), o.len()) {
                return Some(match (x.get("fn"), x.get("arg")) {
                    (Some(Value::String(f)), Some(Value::String(arg))) if f == "ip" => {
                        Ok(RestrictedExpression::new_ip(arg))
                    }
                    (Some(Value::String(f)), Some(Value::String(arg))) if f == "decimal" => {
                        Ok(RestrictedExpression::new_decimal(arg))
                    }
                    _ => Err("__extn supports ip and decimal with a string arg".into()),
                });
            }
            let fields = o
                .iter()
                .filter_map(|(k, v)| restricted(v).map(|r| r.map(|r| (k.clone(), r))))
                .collect::<Result<Vec<_>, _>>();
            match fields {
                Ok(f) => match RestrictedExpression::new_record(f) {
                    Ok(r) => r,
                    Err(e) => return Some(Err(e.to_string())),
                },
                Err(e) => return Some(Err(e)),
            }
        }
    }))
}
