//! The compiled policy set, its scope index, the entity store, decisions.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, AuthorizationError, Authorizer, Context, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, PrincipalConstraint, Request,
    ResourceConstraint, RestrictedExpression, Schema, SchemaFragment, ValidationMode, Validator,
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

/// What one side of a request (principal, action or resource) is found
/// under in the index: itself, its type, its ancestors.
#[derive(Clone, Copy)]
struct Keys<'a> {
    uid: &'a EntityUid,
    ancestors: &'a [EntityUid],
}

/// FxHash (as in rustc): the index's maps are keyed by names from the
/// policies, hashed once per lookup on every decision; SipHash's
/// flooding resistance buys nothing there (requests only look up).
#[derive(Clone, Copy, Default)]
struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        // hashbrown takes its control bits from the top: mix them in
        self.0.rotate_left(26)
    }
}

impl Fx {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type FxMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fx>>;

/// One level of the scope index: entries by the key of one scope
/// constraint, `any` for the unconstrained.
struct Level<T> {
    any: Option<T>,
    by_uid: FxMap<EntityUid, T>,
    by_type: FxMap<EntityTypeName, T>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Self {
            any: None,
            by_uid: FxMap::default(),
            by_type: FxMap::default(),
        }
    }
}

impl<T: Default> Level<T> {
    fn entry(&mut self, key: Option<&Key>) -> &mut T {
        match key {
            None => self.any.get_or_insert_with(T::default),
            Some(Key::Uid(u)) => self.by_uid.entry(u.clone()).or_default(),
            Some(Key::Type(t)) => self.by_type.entry(t.clone()).or_default(),
        }
    }
}

impl<T> Level<T> {
    /// The entries a request side with these keys can match (each once).
    fn matching<'a, 'k>(&'a self, keys: Keys<'k>) -> impl Iterator<Item = &'a T> + use<'a, 'k, T> {
        self.any
            .iter()
            .chain(self.by_uid.get(keys.uid))
            .chain(self.by_type.get(keys.uid.type_name()))
            .chain(keys.ancestors.iter().filter_map(|a| self.by_uid.get(a)))
    }

    /// Every entry with its key (`None`: unconstrained).
    fn iter_mut(&mut self) -> impl Iterator<Item = (Option<Key>, &mut T)> {
        self.any
            .iter_mut()
            .map(|t| (None, t))
            .chain(
                self.by_uid
                    .iter_mut()
                    .map(|(u, t)| (Some(Key::Uid(u.clone())), t)),
            )
            .chain(
                self.by_type
                    .iter_mut()
                    .map(|(k, t)| (Some(Key::Type(k.clone())), t)),
            )
    }
}

/// Cells up to this size get their policy set at compile time.
const PREBUILT_MAX: usize = 256;

/// Static policies are merged into a dynamic cell's set up to this many.
const STATIC_MERGE_MAX: usize = 8;

/// The policies (by index, ascending, no repeats) of one combination of
/// principal, action and resource keys, and their prebuilt policy set.
///
/// A cell is *static* when its principal and resource keys are at most
/// types: which static cells a request reaches depends only on its
/// principal type, action and resource type. The others are *dynamic*:
/// they name a principal or resource (or an ancestor).
#[derive(Default)]
struct Cell {
    policies: Vec<usize>,
    set: Option<PolicySet>,
    is_static: bool,
    /// When every request that can reach this dynamic cell has the same
    /// types and action ([`Static::id`]), this cell's policies with those
    /// static ones in one set: such a request (a principal's permits
    /// plus type-wide guards, a common shape) costs one call to Cedar.
    with_static: Option<(usize, PolicySet)>,
}

/// The static cells' policies for one principal type, action and resource
/// type of the schema, in one set (`None` when there are none).
struct Static {
    id: usize,
    policies: Vec<usize>,
    set: Option<PolicySet>,
}

/// A request's types and action, the key of [`Static`]s.
type Triple = (EntityTypeName, EntityUid, EntityTypeName);

/// The scope index: principal key → action key → resource key → cell.
/// Every policy of a cell reached by a request's keys matches the
/// request's scope, and every policy that does is in such a cell.
type Index = Level<Level<Level<Cell>>>;

/// The scope keys of one constraint: `[None]` when unconstrained.
fn or_any(keys: &Option<Vec<Key>>) -> Vec<Option<&Key>> {
    match keys {
        None => vec![None],
        Some(ks) => ks.iter().map(Some).collect(),
    }
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

/// Whether a policy's condition names an action its scope does not (its
/// scope's actions appear among its literals too).
fn names_other_actions(p: &Policy) -> bool {
    let scoped: Vec<EntityUid> = match p.action_constraint() {
        ActionConstraint::Any => Vec::new(),
        ActionConstraint::Eq(u) => vec![u],
        ActionConstraint::In(us) => us,
    };
    p.entity_literals()
        .iter()
        .any(|u| u.type_name().basename() == "Action" && !scoped.contains(u))
}

/// Supplied entities by name, with their parents.
type Supplied = HashMap<EntityUid, (Entity, Vec<EntityUid>)>;

/// Entity type names by their text, parsed once: Cedar's parser costs
/// about as much per name as the rest of building a request.
#[derive(Default)]
struct TypeNames(FxMap<String, EntityTypeName>);

impl TypeNames {
    /// Every entity and action type of the schema, each parsed from its
    /// text exactly as a request's would be.
    fn of(schema: &Schema) -> Self {
        let mut map = FxMap::default();
        let names = schema
            .entity_types()
            .cloned()
            .chain(schema.actions().map(|a| a.type_name().clone()));
        for t in names {
            let text = t.to_string();
            if let Ok(parsed) = EntityTypeName::from_str(&text) {
                map.insert(text, parsed);
            }
        }
        Self(map)
    }

    fn get(&self, kind: &str) -> Result<EntityTypeName, String> {
        match self.0.get(kind) {
            Some(t) => Ok(t.clone()),
            None => EntityTypeName::from_str(kind)
                .map_err(|e| format!("{kind:?} is not a valid entity type: {e}")),
        }
    }
}

/// A validated policy set with its schema, scope index and entity store.
pub struct Engine {
    /// `None` only for [`Engine::deny_all`].
    schema: Option<Schema>,
    policies: Vec<Policy>,
    /// Policy id → its index in `policies` (source order).
    order: FxMap<PolicyId, usize>,
    index: Index,
    /// The static policies of each request type of the schema.
    statics: FxMap<Triple, Static>,
    /// The schema's action entities (action groups included).
    actions: Entities,
    /// Whether some action is in a group. Only then can an action entity
    /// make a difference to a decision (actions have no attributes or
    /// tags; without ancestors, `in` is `==`), so only then does a
    /// request's entities include them.
    action_groups: bool,
    /// Whether some policy names an action outside its scope (say
    /// `Action::"a" in Action::"g"` in a condition): then Cedar may look
    /// up any action, and a request carries all of them. Otherwise the
    /// request's own action is enough, which spares copying and re-closing
    /// every action of a large schema per decision.
    actions_in_conditions: bool,
    types: TypeNames,
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
        let types = TypeNames::of(&schema);
        let action_groups = actions.iter().any(|a| {
            actions
                .ancestors(&a.uid())
                .is_some_and(|mut i| i.next().is_some())
        });
        let mut engine = Self {
            schema: Some(schema),
            policies: Vec::with_capacity(named.len()),
            order: FxMap::default(),
            index: Index::default(),
            statics: FxMap::default(),
            actions,
            action_groups,
            actions_in_conditions: false,
            types,
            store: Entities::empty(),
            authorizer: Authorizer::new(),
            all: set,
        };
        for (i, p) in named.into_iter().enumerate() {
            engine.actions_in_conditions |= names_other_actions(&p);
            let principal = principal_keys(p.principal_constraint());
            let action = action_keys(p.action_constraint());
            let resource = resource_keys(p.resource_constraint());
            for pk in or_any(&principal) {
                let by_action = engine.index.entry(pk);
                for ak in or_any(&action) {
                    let by_resource = by_action.entry(ak);
                    for rk in or_any(&resource) {
                        let cell = by_resource.entry(rk);
                        // a scope naming the same key twice (`action in [A, A]`)
                        if cell.policies.last() != Some(&i) {
                            cell.policies.push(i);
                        }
                    }
                }
            }
            engine.order.insert(p.id().clone(), i);
            engine.policies.push(p);
        }
        // the policy set of each cell now, not per decision
        let policies = &engine.policies;
        let set_of = |ids: &mut dyn Iterator<Item = &usize>| {
            PolicySet::from_policies(ids.filter_map(|&i| policies.get(i).cloned())).ok()
        };
        for (pk, by_action) in engine.index.iter_mut() {
            for (_, by_resource) in by_action.iter_mut() {
                for (rk, cell) in by_resource.iter_mut() {
                    cell.is_static =
                        !matches!(pk, Some(Key::Uid(_))) && !matches!(rk, Some(Key::Uid(_)));
                    if cell.policies.len() <= PREBUILT_MAX {
                        cell.set = set_of(&mut cell.policies.iter());
                    }
                }
            }
        }
        // the static policies of each request type of the schema
        let mut statics: FxMap<Triple, Static> = FxMap::default();
        if let Some(schema) = &engine.schema {
            for env in schema.request_envs() {
                let (p, a, r) = (env.principal(), env.action(), env.resource());
                let a_anc: Vec<EntityUid> = engine
                    .actions
                    .ancestors(a)
                    .map(|i| i.cloned().collect())
                    .unwrap_or_default();
                let mut ids: Vec<usize> = engine
                    .index
                    .any
                    .iter()
                    .chain(engine.index.by_type.get(p))
                    .flat_map(|by_action| {
                        by_action.matching(Keys {
                            uid: a,
                            ancestors: &a_anc,
                        })
                    })
                    .flat_map(|by_resource| {
                        by_resource.any.iter().chain(by_resource.by_type.get(r))
                    })
                    .flat_map(|cell| cell.policies.iter().copied())
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                if ids.len() > PREBUILT_MAX {
                    continue;
                }
                let set = if ids.is_empty() {
                    None
                } else {
                    set_of(&mut ids.iter())
                };
                let id = statics.len();
                statics.insert(
                    (p.clone(), a.clone(), r.clone()),
                    Static {
                        id,
                        policies: ids,
                        set,
                    },
                );
            }
        }
        // each dynamic cell reached by requests of only one type and
        // action, with their static policies
        let actions = &engine.actions;
        let reaches = |ak: &Option<Key>, a: &EntityUid| match ak {
            None => true,
            Some(Key::Uid(u)) => {
                u == a
                    || actions
                        .ancestors(a)
                        .is_some_and(|mut anc| anc.any(|x| x == u))
            }
            Some(Key::Type(_)) => false,
        };
        let fits = |k: &Option<Key>, t: &EntityTypeName| match k {
            Some(Key::Type(kt)) => kt == t,
            _ => true,
        };
        for (pk, by_action) in engine.index.iter_mut() {
            for (ak, by_resource) in by_action.iter_mut() {
                for (rk, cell) in by_resource.iter_mut() {
                    if cell.is_static || cell.set.is_none() {
                        continue;
                    }
                    let mut candidates = statics
                        .iter()
                        .filter(|((p, a, r), _)| fits(&pk, p) && reaches(&ak, a) && fits(&rk, r));
                    if let (Some((_, st)), None) = (candidates.next(), candidates.next())
                        && !st.policies.is_empty()
                        && st.policies.len() <= STATIC_MERGE_MAX
                    {
                        cell.with_static = set_of(&mut cell.policies.iter().chain(&st.policies))
                            .map(|set| (st.id, set));
                    }
                }
            }
        }
        engine.statics = statics;
        Ok(engine)
    }

    /// An engine with no schema and no policy: every question is denied
    /// (Cedar's default), malformed ones with their reasons.
    pub fn deny_all() -> Self {
        Self {
            schema: None,
            policies: Vec::new(),
            order: FxMap::default(),
            index: Index::default(),
            statics: FxMap::default(),
            actions: Entities::empty(),
            action_groups: false,
            actions_in_conditions: false,
            types: TypeNames::default(),
            store: Entities::empty(),
            authorizer: Authorizer::new(),
            all: PolicySet::new(),
        }
    }

    /// Whether some `forbid` could apply to this principal doing an
    /// action of the group `actions` (given every entity the principal is
    /// in, as a request would supply them): the forbid's principal scope
    /// is open, names the principal's type, the principal or one of those
    /// ancestors, and its action scope is open or names an action of the
    /// group or a group one of them is in. When none can, a `permit`
    /// without conditions that matches such a request is its decision.
    pub fn forbids_may_reach(
        &self,
        principal: &EntityRef,
        ancestors: &[EntityRef],
        actions: &EntityRef,
    ) -> bool {
        let (Ok(uid), Ok(anc), Ok(group)) = (
            self.uid(principal),
            ancestors
                .iter()
                .map(|a| self.uid(a))
                .collect::<Result<Vec<_>, _>>(),
            self.uid(actions),
        ) else {
            // a name Cedar cannot read: assume the worst
            return true;
        };
        // the group's actions and every group any of them is in
        let mut related: HashSet<EntityUid> = HashSet::from([group.clone()]);
        for a in self.actions.iter() {
            let up: Vec<EntityUid> = self
                .actions
                .ancestors(&a.uid())
                .map(|i| i.cloned().collect())
                .unwrap_or_default();
            if up.contains(&group) {
                related.insert(a.uid());
                related.extend(up);
            }
        }
        let named = |u: &EntityUid| *u == uid || anc.contains(u);
        self.policies
            .iter()
            .filter(|p| p.effect() == cedar_policy::Effect::Forbid)
            .filter(|p| match p.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(a) => related.contains(&a),
                ActionConstraint::In(r#as) => r#as.iter().any(|a| related.contains(a)),
            })
            .any(|p| match p.principal_constraint() {
                PrincipalConstraint::Any => true,
                PrincipalConstraint::Is(t) => t == *uid.type_name(),
                PrincipalConstraint::Eq(u) | PrincipalConstraint::In(u) => named(&u),
                PrincipalConstraint::IsIn(t, u) => t == *uid.type_name() && named(&u),
            })
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

    fn uid(&self, r: &EntityRef) -> Result<EntityUid, String> {
        Ok(EntityUid::from_type_name_and_id(
            self.types.get(&r.kind)?,
            EntityId::new(&r.id),
        ))
    }

    /// Attributes or tags as Cedar values (`null`s left out).
    fn values(
        &self,
        m: &Map<String, Value>,
    ) -> Result<Vec<(String, RestrictedExpression)>, String> {
        m.iter()
            .filter_map(|(k, v)| restricted(v, &self.types).map(|r| r.map(|r| (k.clone(), r))))
            .collect()
    }

    /// The entity for `uid`: the store's, else one made from `attrs`.
    fn entity(&self, uid: &EntityUid, attrs: &Map<String, Value>) -> Result<Entity, String> {
        if let Some(e) = self.store.get(uid) {
            return Ok(e.clone());
        }
        let attrs = self
            .values(attrs)
            .map_err(|e| format!("attributes of {uid}: {e}"))?;
        Entity::new_with_tags(uid.clone(), attrs, [], [])
            .map_err(|e| format!("attributes of {uid}: {}", full(&e)))
    }

    /// An entity supplied with the request.
    fn supplied(&self, e: &EntityData) -> Result<(EntityUid, Entity, Vec<EntityUid>), String> {
        let uid = self.uid(&e.uid)?;
        let parents = e
            .parents
            .iter()
            .map(|p| self.uid(p))
            .collect::<Result<Vec<_>, _>>()?;
        let attrs = self
            .values(&e.attrs)
            .map_err(|err| format!("attributes of {uid}: {err}"))?;
        let tags = self
            .values(&e.tags)
            .map_err(|err| format!("tags of {uid}: {err}"))?;
        let entity = Entity::new_with_tags(uid.clone(), attrs, parents.iter().cloned(), tags)
            .map_err(|err| format!("entity {uid}: {}", full(&err)))?;
        Ok((uid, entity, parents))
    }

    /// Whether the store's entity `e` can be left out of a request's
    /// entities without changing any decision: it has no attributes, no
    /// tags and no parents, so every question about it gets the answer it
    /// would get if it did not exist (`has` and `hasTag`: false; `in`: only
    /// itself). Only reading an attribute or tag could tell, and both fail
    /// either way (strict validation refuses them, but a request of
    /// undeclared types could still reach one; the error then says the
    /// entity does not exist instead of lacking the attribute). Groups
    /// (teams, roles) are often such entities, and each costs a clone and
    /// a node in the request's transitive closure.
    fn inert(&self, uid: &EntityUid, e: &Entity) -> bool {
        e.attrs().next().is_none()
            && e.tags().next().is_none()
            && self
                .store
                .ancestors(uid)
                .is_none_or(|mut a| a.next().is_none())
    }

    /// Every ancestor of `uid`, as Cedar will see them in the request's
    /// entities: a supplied entity's parents, the store's ancestors of a
    /// stored one, and so on through both (a supplied entity stands in
    /// for the store's of the same name, parents included).
    fn ancestors(&self, uid: &EntityUid, supplied: &Supplied) -> Vec<EntityUid> {
        let up = |u: &EntityUid| -> Vec<&EntityUid> {
            match supplied.get(u) {
                Some((_, parents)) => parents.iter().collect(),
                None => self
                    .store
                    .ancestors(u)
                    .map(Iterator::collect)
                    .unwrap_or_default(),
            }
        };
        if supplied.is_empty() {
            return self
                .store
                .ancestors(uid)
                .map(|a| a.cloned().collect())
                .unwrap_or_default();
        }
        let mut out: Vec<EntityUid> = Vec::new();
        let mut todo = up(uid);
        while let Some(a) = todo.pop() {
            if a == uid || out.contains(a) {
                continue;
            }
            out.push(a.clone());
            todo.extend(up(a));
        }
        out
    }

    /// The policy sets to evaluate for a request with these keys: those of
    /// the index cells its keys reach, prebuilt. The static cells' come
    /// as one set when the request's types and action are the schema's;
    /// when many small cells are reached, their policies come in one new
    /// set instead (a call to Cedar costs about as much as adding a
    /// policy to a set).
    fn slice(&self, pk: Keys<'_>, ak: Keys<'_>, rk: Keys<'_>) -> Result<Slice<'_>, String> {
        // a request reaches a handful of cells: no allocation for them
        let mut cells: smallvec::SmallVec<[&Cell; 8]> = self
            .index
            .matching(pk)
            .flat_map(|by_action| by_action.matching(ak))
            .flat_map(|by_resource| by_resource.matching(rk))
            .filter(|c| !c.policies.is_empty())
            .collect();
        let mut out = Slice::default();
        let triple = (
            pk.uid.type_name().clone(),
            ak.uid.clone(),
            rk.uid.type_name().clone(),
        );
        if let Some(st) = self.statics.get(&triple) {
            cells.retain(|c| !c.is_static);
            if let [cell] = cells[..]
                && let Some((id, set)) = &cell.with_static
                && *id == st.id
            {
                out.prebuilt.push(set);
                return Ok(out);
            }
            out.prebuilt.extend(&st.set);
        }
        let mut loose: Vec<usize> = Vec::new();
        for cell in &cells {
            match &cell.set {
                Some(set) if cells.len() <= 4 || cell.policies.len() > 2 => out.prebuilt.push(set),
                _ => loose.extend(&cell.policies),
            }
        }
        if !loose.is_empty() {
            // a policy with several keys in one constraint can be in
            // several cells
            loose.sort_unstable();
            loose.dedup();
            out.built = Some(
                PolicySet::from_policies(
                    loose
                        .into_iter()
                        .filter_map(|i| self.policies.get(i).cloned()),
                )
                .map_err(|e| format!("policy slice: {}", full(&e)))?,
            );
        }
        Ok(out)
    }

    /// Decides; never fails (see the crate docs).
    pub fn decide(&self, q: &Query) -> Decision {
        match self.try_decide(q, Mode::Indexed) {
            Ok(d) => d,
            Err(e) => Decision::error(e),
        }
    }

    /// The same decision with every policy evaluated, as Cedar alone does
    /// (for benchmarks and for checking the index).
    pub fn decide_unindexed(&self, q: &Query) -> Decision {
        match self.try_decide(q, Mode::Unindexed) {
            Ok(d) => d,
            Err(e) => Decision::error(e),
        }
    }

    /// [`Engine::decide_unindexed`] with every action entity of the schema
    /// in the request, as a plain Cedar call would have them (for tests of
    /// the shortcuts taken in building a request's entities).
    #[doc(hidden)]
    pub fn decide_reference(&self, q: &Query) -> Decision {
        match self.try_decide(q, Mode::Reference) {
            Ok(d) => d,
            Err(e) => Decision::error(e),
        }
    }

    fn try_decide(&self, q: &Query, mode: Mode) -> Result<Decision, String> {
        let need = |r: &Option<EntityRef>, what: &str| {
            r.as_ref()
                .ok_or_else(|| format!("the request names no {what}"))
                .and_then(|r| self.uid(r))
        };
        let p = need(&q.principal, "principal")?;
        let a = need(&q.action, "action")?;
        let r = need(&q.resource, "resource")?;

        // this request's entities: those supplied, principal, resource,
        // their ancestors, on top of the schema's actions
        let mut supplied: Supplied = HashMap::new();
        for e in &q.entities {
            let (uid, entity, parents) = self.supplied(e)?;
            supplied.insert(uid, (entity, parents));
        }
        let p_anc = self.ancestors(&p, &supplied);
        let r_anc = self.ancestors(&r, &supplied);
        let mut slice: Vec<Entity> = Vec::with_capacity(2 + p_anc.len() + r_anc.len());
        let mut taken: Vec<&EntityUid> = Vec::with_capacity(slice.capacity());
        for (uid, attrs) in [(&p, &q.principal_attrs), (&r, &q.resource_attrs)] {
            if !supplied.contains_key(uid) && !taken.contains(&uid) {
                slice.push(self.entity(uid, attrs)?);
                taken.push(uid);
            }
        }
        for u in p_anc.iter().chain(&r_anc) {
            if !supplied.contains_key(u)
                && !taken.contains(&u)
                && let Some(e) = self.store.get(u)
                && !self.inert(u, e)
            {
                slice.push(e.clone());
                taken.push(u);
            }
        }
        drop(taken);
        // the actions already have their transitive closure: only the
        // request's entities need theirs computed. A supplied action must
        // meet the schema's (Cedar refuses a different one).
        let all_actions = mode == Mode::Reference
            || (self.action_groups && self.actions_in_conditions)
            || supplied
                .keys()
                .any(|u| u.type_name().basename() == "Action");
        let base = if all_actions {
            self.actions.clone()
        } else {
            if self.action_groups
                && let Some(e) = self.actions.get(&a)
            {
                // already closed: its ancestors are the groups it is in
                slice.push(e.clone());
            }
            Entities::empty()
        };
        let entities = base
            .add_entities(supplied.into_values().map(|(e, _)| e).chain(slice), None)
            .map_err(|e| format!("request entities: {}", full(&e)))?;

        let pairs = self
            .values(&q.context)
            .map_err(|e| format!("context: {e}"))?;
        let context = Context::from_pairs(pairs).map_err(|e| format!("context: {}", full(&e)))?;

        let sets = if mode == Mode::Indexed {
            let a_anc: Vec<EntityUid> = self
                .actions
                .ancestors(&a)
                .map(|i| i.cloned().collect())
                .unwrap_or_default();
            let keys = |uid, ancestors| Keys { uid, ancestors };
            self.slice(keys(&p, &p_anc), keys(&a, &a_anc), keys(&r, &r_anc))?
        } else {
            Slice {
                prebuilt: smallvec::smallvec![&self.all],
                built: None,
            }
        };
        let request =
            Request::new(p, a, r, context, None).map_err(|e| format!("request: {}", full(&e)))?;
        let mut outcome = Outcome::default();
        for set in sets.prebuilt.iter().copied().chain(sets.built.as_ref()) {
            let resp = self.authorizer.is_authorized(&request, set, &entities);
            outcome.add(&resp);
        }
        Ok(outcome.decision(&self.order))
    }
}

/// How [`Engine::try_decide`] picks policies and entities.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The policies of the matching index cells.
    Indexed,
    /// Every policy.
    Unindexed,
    /// Every policy and every action entity.
    Reference,
}

/// The policy sets one decision evaluates.
#[derive(Default)]
struct Slice<'a> {
    prebuilt: smallvec::SmallVec<[&'a PolicySet; 4]>,
    built: Option<PolicySet>,
}

/// Cedar's answers for the parts of a slice, combined as Cedar combines
/// policies: any satisfied `forbid` denies, else any satisfied `permit`
/// allows. Policies and errors are listed in source order, each once.
#[derive(Default)]
struct Outcome {
    forbids: Vec<PolicyId>,
    permits: Vec<PolicyId>,
    errors: Vec<(PolicyId, String)>,
}

impl Outcome {
    fn add(&mut self, resp: &cedar_policy::Response) {
        // a deny names the satisfied forbids, an allow the satisfied permits
        let into = match resp.decision() {
            cedar_policy::Decision::Deny => &mut self.forbids,
            cedar_policy::Decision::Allow => &mut self.permits,
        };
        into.extend(resp.diagnostics().reason().cloned());
        self.errors
            .extend(resp.diagnostics().errors().map(|e| match e {
                AuthorizationError::PolicyEvaluationError(pe) => {
                    (pe.policy_id().clone(), e.to_string())
                }
            }));
    }

    fn decision(self, order: &FxMap<PolicyId, usize>) -> Decision {
        let at = |id: &PolicyId| order.get(id).copied().unwrap_or(usize::MAX);
        let mut errors = self.errors;
        if errors.len() > 1 {
            errors.sort_by_cached_key(|(id, e)| (at(id), e.clone()));
            errors.dedup();
        }
        let allow = self.forbids.is_empty() && !self.permits.is_empty() && errors.is_empty();
        let mut policies = if self.forbids.is_empty() {
            self.permits
        } else {
            self.forbids
        };
        if policies.len() > 1 {
            policies.sort_by_cached_key(|id| at(id));
            policies.dedup();
        }
        Decision {
            allow,
            policies: policies
                .iter()
                .map(|id| AsRef::<str>::as_ref(id).to_owned())
                .collect(),
            errors: errors.into_iter().map(|(_, e)| e).collect(),
        }
    }
}

/// A JSON value as a Cedar value, built directly (no JSON re-parsing):
/// `null` and non-integer numbers have no Cedar form and are left out
/// (`None`); `{"__entity": {"type", "id"}}` is an entity reference and
/// `{"__extn": {"fn": "ip"|"decimal", "arg"}}` an extension value, as in
/// Cedar's JSON formats.
fn restricted(v: &Value, types: &TypeNames) -> Option<Result<RestrictedExpression, String>> {
    Some(Ok(match v {
        Value::Null => return None,
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::Number(n) => RestrictedExpression::new_long(n.as_i64()?),
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Array(a) => {
            let items = a
                .iter()
                .filter_map(|v| restricted(v, types))
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
                return Some(types.get(t).map(|t| {
                    RestrictedExpression::new_entity_uid(EntityUid::from_type_name_and_id(
                        t,
                        EntityId::new(id),
                    ))
                }));
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
                .filter_map(|(k, v)| restricted(v, types).map(|r| r.map(|r| (k.clone(), r))))
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
