//! OpenID AuthZEN Authorization API 1.0 requests, mapped onto the engine.
//!
//! - `subject` and `resource` (`{type, id, properties?}`) become Cedar
//!   entities `<namespace>::<type>::"<id>"` (a `type` that already contains
//!   `::` is taken as is). Entities the store knows are used as stored;
//!   otherwise `properties` are their attributes.
//! - `action` (`{name, properties?}`) becomes `<namespace>::Action::"<name>"`;
//!   its properties are passed in the Cedar context under `action`.
//! - `context` is the Cedar context, except the key `explain`: when `true`,
//!   the response's `context.reason` names the deciding policies and any
//!   errors. Without it a decision carries no context (PEPs that compare
//!   answers exactly, like the AuthZEN interop runner, see only
//!   `{"decision": ...}`).
//! - Unknown fields are ignored and `null` values dropped, as the
//!   specification asks; a missing or mistyped required field is a
//!   [`RequestError`] (HTTP 400) for a single evaluation, and a
//!   `decision: false` with `context.error` for one item of a batch.

use serde_json::{Map, Value, json};

use std::collections::HashMap;

use crate::{Decision, Engine, EntityData, EntityRef, Query};

/// Entities the caller knows better than the entity store (Credence's
/// registry of identities): a subject or resource it resolves is used
/// as resolved, whatever the request's `properties` say.
pub trait Resolve {
    fn resolve(&self, e: &EntityRef) -> Option<EntityData>;
}

/// Resolves nothing.
pub struct NoResolve;

impl Resolve for NoResolve {
    fn resolve(&self, _: &EntityRef) -> Option<EntityData> {
        None
    }
}

impl Resolve for HashMap<EntityRef, EntityData> {
    fn resolve(&self, e: &EntityRef) -> Option<EntityData> {
        self.get(e).cloned()
    }
}

/// Every subject and resource of Cedar type `kind` a request body names
/// (top level and each batch item), so a caller can look them up before
/// evaluating. Others cost nothing (this runs on every PDP request).
pub fn referenced(map: &Mapping, body: &Value, kind: &str) -> Vec<EntityRef> {
    let mut out = Vec::new();
    let mut scan = |m: &Map<String, Value>| {
        for k in ["subject", "resource"] {
            if let Some(Value::Object(e)) = m.get(k)
                && let (Some(Value::String(t)), Some(Value::String(id))) =
                    (e.get("type"), e.get("id"))
                && map.names(t, kind)
            {
                let r = EntityRef::new(map.kind(t), id.clone());
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
        // entity references among the context's values (Cedar JSON form)
        if let Some(Value::Object(c)) = m.get("context") {
            for r in context_refs(c) {
                if r.kind == kind && !out.contains(&r) {
                    out.push(r);
                }
            }
        }
    };
    if let Some(top) = body.as_object() {
        scan(top);
        if let Some(Value::Array(items)) = top.get("evaluations") {
            for i in items.iter().filter_map(Value::as_object) {
                scan(i);
            }
        }
    }
    out
}

/// Entities the context's top-level values name as
/// `{"__entity": {"type", "id"}}` (types written in full).
fn context_refs(c: &Map<String, Value>) -> Vec<EntityRef> {
    c.values()
        .filter_map(|v| match v.get("__entity") {
            Some(Value::Object(e)) => match (e.get("type"), e.get("id")) {
                (Some(Value::String(t)), Some(Value::String(id))) => {
                    Some(EntityRef::new(t.clone(), id.clone()))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A request the PDP cannot evaluate at all (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(pub String);

/// How AuthZEN names map to Cedar names.
#[derive(Clone, Debug, Default)]
pub struct Mapping {
    /// Cedar namespace of types and actions given without one.
    pub namespace: Option<String>,
}

impl Mapping {
    fn kind(&self, t: &str) -> String {
        match &self.namespace {
            Some(ns) if !t.contains("::") => format!("{ns}::{t}"),
            _ => t.to_owned(),
        }
    }

    /// Whether the request type `t` maps to the Cedar type `kind`.
    fn names(&self, t: &str, kind: &str) -> bool {
        match &self.namespace {
            Some(ns) if !t.contains("::") => kind
                .strip_prefix(ns.as_str())
                .and_then(|k| k.strip_prefix("::"))
                .is_some_and(|k| k == t),
            _ => t == kind,
        }
    }

    fn action_kind(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}::Action"),
            None => "Action".to_owned(),
        }
    }
}

/// `evaluations_semantic` of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Semantic {
    ExecuteAll,
    DenyOnFirstDeny,
    PermitOnFirstPermit,
}

/// One evaluated item: the question as understood (if it could be) and
/// the decision, for the caller's audit record.
#[derive(Clone, Debug)]
pub struct Evaluated {
    pub query: Option<Query>,
    pub decision: Decision,
    pub explain: bool,
}

/// The response body and every evaluation behind it.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub body: Value,
    pub items: Vec<Evaluated>,
}

fn obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{what} must be a JSON object"))
}

fn string(m: &mut Map<String, Value>, key: &str, what: &str) -> Result<String, String> {
    match m.remove(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(format!("{what}.{key} must not be empty")),
        Some(Value::Null) | None => Err(format!("{what}.{key} is required")),
        Some(_) => Err(format!("{what}.{key} must be a string")),
    }
}

fn properties(m: &mut Map<String, Value>, what: &str) -> Result<Map<String, Value>, String> {
    match m.remove("properties") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(p)) => Ok(p),
        Some(_) => Err(format!("{what}.properties must be a JSON object")),
    }
}

/// The object `v`, taken (the request is consumed, not copied).
fn take_obj(v: Option<Value>, what: &str) -> Result<Map<String, Value>, String> {
    match v {
        None | Some(Value::Null) => Err(format!("{what} is required")),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(format!("{what} must be a JSON object")),
    }
}

fn entity(
    v: Option<Value>,
    what: &str,
    map: &Mapping,
) -> Result<(EntityRef, Map<String, Value>), String> {
    let mut m = take_obj(v, what)?;
    let kind = string(&mut m, "type", what)?;
    let id = string(&mut m, "id", what)?;
    Ok((
        EntityRef::new(map.kind(&kind), id),
        properties(&mut m, what)?,
    ))
}

/// The query of one (merged) evaluation request, and its explain flag.
fn query(
    mut fields: Map<String, Value>,
    map: &Mapping,
    resolver: &dyn Resolve,
) -> Result<(Query, bool), String> {
    let (principal, principal_attrs) = entity(fields.remove("subject"), "subject", map)?;
    let (resource, resource_attrs) = entity(fields.remove("resource"), "resource", map)?;
    let mut action = take_obj(fields.remove("action"), "action")?;
    let name = string(&mut action, "name", "action")?;
    let action_props = properties(&mut action, "action")?;
    let mut context = match fields.remove("context") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(c)) => c,
        Some(_) => return Err("context must be a JSON object".into()),
    };
    let explain = matches!(context.remove("explain"), Some(Value::Bool(true)));
    if !action_props.is_empty() {
        context.insert("action".into(), Value::Object(action_props));
    }
    let refs = context_refs(&context);
    let entities = [&principal, &resource]
        .into_iter()
        .chain(refs.iter())
        .filter_map(|e| resolver.resolve(e))
        .collect();
    Ok((
        Query {
            principal: Some(principal),
            principal_attrs,
            action: Some(EntityRef::new(map.action_kind(), name)),
            resource: Some(resource),
            resource_attrs,
            context,
            entities,
        },
        explain,
    ))
}

/// An evaluation request that asks `q` again (types written in full, so
/// any namespace mapping gives the same question; action properties are
/// already in the context). Used to record questions and replay them
/// against another policy set.
pub fn request_of(q: &Query) -> Value {
    let ent = |e: &Option<EntityRef>, props: &Map<String, Value>| {
        let mut m = Map::new();
        if let Some(e) = e {
            m.insert("type".into(), json!(e.kind));
            m.insert("id".into(), json!(e.id));
        }
        if !props.is_empty() {
            m.insert("properties".into(), Value::Object(props.clone()));
        }
        Value::Object(m)
    };
    let mut out = Map::new();
    out.insert("subject".into(), ent(&q.principal, &q.principal_attrs));
    out.insert(
        "action".into(),
        json!({"name": q.action.as_ref().map(|a| a.id.clone())}),
    );
    out.insert("resource".into(), ent(&q.resource, &q.resource_attrs));
    if !q.context.is_empty() {
        out.insert("context".into(), Value::Object(q.context.clone()));
    }
    Value::Object(out)
}

fn response(d: &Decision, explain: bool) -> Value {
    if explain {
        json!({
            "decision": d.allow,
            "context": {"reason": {"policies": d.policies, "errors": d.errors}},
        })
    } else {
        json!({ "decision": d.allow })
    }
}

/// `POST /access/v1/evaluation`.
pub fn evaluation(engine: &Engine, map: &Mapping, body: &Value) -> Result<Outcome, RequestError> {
    evaluation_with(engine, map, body, &NoResolve)
}

/// [`evaluation`] with entities resolved by the caller.
pub fn evaluation_with(
    engine: &Engine,
    map: &Mapping,
    body: &Value,
    resolver: &dyn Resolve,
) -> Result<Outcome, RequestError> {
    evaluation_owned(engine, map, body.clone(), resolver)
}

/// [`evaluation_with`] taking the body, which it consumes instead of
/// copying (the PDP's hot path).
pub fn evaluation_owned(
    engine: &Engine,
    map: &Mapping,
    body: Value,
    resolver: &dyn Resolve,
) -> Result<Outcome, RequestError> {
    let Value::Object(fields) = body else {
        return Err(RequestError(
            "the request body must be a JSON object".into(),
        ));
    };
    let (q, explain) = query(fields, map, resolver).map_err(RequestError)?;
    let decision = engine.decide(&q);
    Ok(Outcome {
        body: response(&decision, explain),
        items: vec![Evaluated {
            query: Some(q),
            decision,
            explain,
        }],
    })
}

const DEFAULTS: [&str; 4] = ["subject", "action", "resource", "context"];

/// `POST /access/v1/evaluations`: top-level fields are defaults that an
/// item's own fields replace as whole objects.
pub fn evaluations(
    engine: &Engine,
    map: &Mapping,
    body: &Value,
    max_items: usize,
) -> Result<Outcome, RequestError> {
    evaluations_with(engine, map, body, max_items, &NoResolve)
}

/// [`evaluations`] with entities resolved by the caller.
pub fn evaluations_with(
    engine: &Engine,
    map: &Mapping,
    body: &Value,
    max_items: usize,
    resolver: &dyn Resolve,
) -> Result<Outcome, RequestError> {
    let top = obj(body, "the request body").map_err(RequestError)?;
    let semantic = match top.get("options") {
        None | Some(Value::Null) => Semantic::ExecuteAll,
        Some(Value::Object(o)) => match o.get("evaluations_semantic") {
            None | Some(Value::Null) => Semantic::ExecuteAll,
            Some(Value::String(s)) => match s.as_str() {
                "execute_all" => Semantic::ExecuteAll,
                "deny_on_first_deny" => Semantic::DenyOnFirstDeny,
                "permit_on_first_permit" => Semantic::PermitOnFirstPermit,
                other => {
                    return Err(RequestError(format!(
                        "options.evaluations_semantic {other:?} is not one of execute_all, deny_on_first_deny, permit_on_first_permit"
                    )));
                }
            },
            Some(_) => {
                return Err(RequestError(
                    "options.evaluations_semantic must be a string".into(),
                ));
            }
        },
        Some(_) => return Err(RequestError("options must be a JSON object".into())),
    };
    let items = match top.get("evaluations") {
        None | Some(Value::Null) => return evaluation_with(engine, map, body, resolver),
        Some(Value::Array(a)) if a.is_empty() => {
            return evaluation_with(engine, map, body, resolver);
        }
        Some(Value::Array(a)) => a,
        Some(_) => return Err(RequestError("evaluations must be an array".into())),
    };
    if items.len() > max_items {
        return Err(RequestError(format!(
            "at most {max_items} evaluations per request"
        )));
    }
    let mut out = Vec::with_capacity(items.len());
    let mut evaluated = Vec::with_capacity(items.len());
    for item in items {
        let mut fields = Map::new();
        for k in DEFAULTS {
            if let Some(v) = top.get(k) {
                fields.insert(k.to_owned(), v.clone());
            }
        }
        let merged = match item.as_object() {
            Some(own) => {
                for (k, v) in own {
                    if DEFAULTS.contains(&k.as_str()) {
                        fields.insert(k.clone(), v.clone());
                    }
                }
                query(fields, map, resolver)
            }
            None => Err("each evaluation must be a JSON object".into()),
        };
        let (body, ev) = match merged {
            Ok((q, explain)) => {
                let d = engine.decide(&q);
                (
                    response(&d, explain),
                    Evaluated {
                        query: Some(q),
                        decision: d,
                        explain,
                    },
                )
            }
            Err(why) => (
                json!({"decision": false, "context": {"error": {"status": 400, "message": why}}}),
                Evaluated {
                    query: None,
                    decision: Decision {
                        allow: false,
                        policies: Vec::new(),
                        errors: vec![why],
                    },
                    explain: false,
                },
            ),
        };
        let allow = ev.decision.allow;
        out.push(body);
        evaluated.push(ev);
        match semantic {
            Semantic::DenyOnFirstDeny if !allow => break,
            Semantic::PermitOnFirstPermit if allow => break,
            _ => {}
        }
    }
    Ok(Outcome {
        body: json!({ "evaluations": out }),
        items: evaluated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referenced_names_only_the_asked_type() {
        let ns = Mapping {
            namespace: Some("Credence".into()),
        };
        let body = json!({
            "subject": {"type": "Identity", "id": "spiffe://td/a"},
            "resource": {"type": "Doc", "id": "d"},
            "evaluations": [
                {"subject": {"type": "Credence::Identity", "id": "spiffe://td/b"}},
                {"resource": {"type": "Other::Identity", "id": "x"}},
                {"resource": {"type": "CredenceIdentity", "id": "y"}},
            ],
        });
        let ids: Vec<String> = referenced(&ns, &body, "Credence::Identity")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["spiffe://td/a", "spiffe://td/b"]);
        // without a namespace a bare type names itself
        let bare = Mapping::default();
        assert!(referenced(&bare, &body, "Credence::Identity").len() == 1);
        assert!(!bare.names("Identity", "Credence::Identity"));
        assert!(ns.names("Identity", "Credence::Identity"));
        assert!(!ns.names("Identity", "CredenceX::Identity"));
    }
}
