//! Validation, fail-closed decisions, explanations, batch semantics and
//! the scope index.

use credence_policy::authzen::{Mapping, evaluation, evaluations};
use credence_policy::{Builtin, Engine, EntityRef, PolicyError, Query};
use serde_json::json;

use crate::authzen_todo::todo_engine;

const SCHEMA: &str = r#"
namespace App {
  entity Team;
  entity Agent in [Team] { risk: Long };
  entity Doc { owner: Team, classification?: String };
  action read, delete appliesTo { principal: Agent, resource: Doc, context: { hour?: Long } };
}
"#;

#[test]
fn invalid_policies_are_refused_with_every_error() {
    let bad = r#"
@id("a") permit (principal, action == App::Action::"read", resource) when { principal.nope == 1 };
@id("b") permit (principal, action == App::Action::"fly", resource);
"#;
    let e = Engine::compile(SCHEMA, bad).unwrap_err();
    let PolicyError::Invalid(list) = e else {
        panic!("{e:?}")
    };
    assert!(list.len() >= 2, "{list:?}");
    assert!(list.iter().any(|m| m.contains("policy a")), "{list:?}");
    assert!(list.iter().any(|m| m.contains("policy b")), "{list:?}");
    // each names where it is
    assert!(
        list.iter().any(|m| m.contains("line 2, column")),
        "{list:?}"
    );
    assert!(
        list.iter().any(|m| m.contains("line 3, column")),
        "{list:?}"
    );
    // syntax errors, all of them
    let e = Engine::compile(SCHEMA, "permit(principal action, resource); forbid(;").unwrap_err();
    assert!(matches!(e, PolicyError::Invalid(_)), "{e:?}");
    // duplicate ids
    let dup = r#"@id("x") permit(principal, action, resource); @id("x") forbid(principal, action, resource);"#;
    let e = Engine::compile(SCHEMA, dup).unwrap_err();
    assert!(e.to_string().contains("\"x\""), "{e}");
    assert!(matches!(
        Engine::compile("namespace {", "").unwrap_err(),
        PolicyError::Schema(_)
    ));
    let e = Engine::compile("namespace A {\n  entity B,;\n}", "").unwrap_err();
    assert!(e.to_string().contains("line 2, column"), "{e}");
}

#[test]
fn built_in_policies_and_schema_are_merged_and_reserved() {
    let builtin = Builtin {
        schema: "namespace Base { entity Admin; action manage appliesTo { principal: Admin, resource: Admin }; }",
        policies: r#"@id("base.root") permit (principal == Base::Admin::"root", action, resource);"#,
        reserved_prefix: "base.",
    };
    // the set can refer to built-in types and narrow built-in permits
    let e = Engine::compile_with(
        builtin,
        SCHEMA,
        r#"@id("no-self") forbid (principal, action == Base::Action::"manage", resource) when { principal == resource };"#,
    )
    .unwrap();
    let ask = |p: &str, r: &str| {
        e.decide(&Query {
            principal: Some(EntityRef::new("Base::Admin", p)),
            action: Some(EntityRef::new("Base::Action", "manage")),
            resource: Some(EntityRef::new("Base::Admin", r)),
            ..Default::default()
        })
    };
    assert!(ask("root", "other").allow);
    assert_eq!(ask("root", "root").policies, ["no-self"]);
    assert!(!ask("eve", "other").allow);
    // reserved ids and redeclared built-in types are refused
    let e = Engine::compile_with(
        builtin,
        SCHEMA,
        r#"@id("base.mine") permit (principal, action, resource);"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("reserved"), "{e}");
    assert!(Engine::compile_with(builtin, "namespace Base { entity Admin; }", "").is_err());
}

#[test]
fn supplied_entities_take_precedence_with_parents_and_tags() {
    let schema = r#"
namespace S {
  entity Team;
  entity Bot in [Team] = { kind: String } tags String;
  entity Doc = { team: String };
  action read appliesTo { principal: Bot, resource: Doc };
}
"#;
    let mut e = Engine::compile(
        schema,
        r#"
@id("team-blue") permit (principal in S::Team::"blue", action, resource);
@id("no-quarantine") forbid (principal, action, resource) when { principal.hasTag("quarantine") };
"#,
    )
    .unwrap();
    // the store says the bot is in team red
    e.set_entities(&json!([
        {"uid": {"type": "S::Bot", "id": "b"}, "attrs": {"kind": "x"}, "parents": [{"type": "S::Team", "id": "red"}]},
        {"uid": {"type": "S::Doc", "id": "d"}, "attrs": {"team": "blue"}, "parents": []},
    ]))
    .unwrap();
    let bot = |parents: &[&str], tags: serde_json::Value| credence_policy::EntityData {
        uid: EntityRef::new("S::Bot", "b"),
        attrs: json!({"kind": "x"}).as_object().unwrap().clone(),
        parents: parents
            .iter()
            .map(|p| EntityRef::new("S::Team", *p))
            .collect(),
        tags: tags.as_object().unwrap().clone(),
    };
    let ask = |entities: Vec<credence_policy::EntityData>| {
        e.decide(&Query {
            principal: Some(EntityRef::new("S::Bot", "b")),
            action: Some(EntityRef::new("S::Action", "read")),
            resource: Some(EntityRef::new("S::Doc", "d")),
            entities,
            ..Default::default()
        })
    };
    assert!(!ask(Vec::new()).allow);
    let d = ask(vec![bot(&["blue"], json!({}))]);
    assert!(d.allow, "{d:?}");
    assert_eq!(d.policies, ["team-blue"]);
    let d = ask(vec![bot(&["blue"], json!({"quarantine": "yes"}))]);
    assert_eq!(d.policies, ["no-quarantine"]);
    assert!(!d.allow);
}

fn engine(policies: &str) -> Engine {
    let mut e = Engine::compile(SCHEMA, policies).unwrap();
    e.set_entities(&json!([
        {"uid": {"type": "App::Team", "id": "blue"}, "attrs": {}, "parents": []},
        {"uid": {"type": "App::Agent", "id": "bot"}, "attrs": {"risk": 3},
         "parents": [{"type": "App::Team", "id": "blue"}]},
        {"uid": {"type": "App::Doc", "id": "d1"}, "attrs": {"owner": {"__entity": {"type": "App::Team", "id": "blue"}}}, "parents": []},
    ]))
    .unwrap();
    e
}

fn q(action: &str, doc: &str) -> Query {
    Query {
        principal: Some(EntityRef::new("App::Agent", "bot")),
        action: Some(EntityRef::new("App::Action", action)),
        resource: Some(EntityRef::new("App::Doc", doc)),
        ..Default::default()
    }
}

#[test]
fn an_erroring_forbid_denies_even_when_a_permit_matches() {
    // Cedar alone skips the erroring forbid and allows
    let e = engine(
        r#"
@id("team-reads") permit (principal in App::Team::"blue", action == App::Action::"read", resource);
@id("red-docs") forbid (principal, action, resource) when { resource.owner == App::Team::"red" };
"#,
    );
    assert!(e.decide(&q("read", "d1")).allow);
    // "ghost" is in no store and has no owner: the forbid cannot be
    // evaluated, so the request is denied although the permit matches
    let d = e.decide(&q("read", "ghost"));
    assert!(!d.allow, "{d:?}");
    assert!(d.errors.iter().any(|m| m.contains("red-docs")), "{d:?}");
}

#[test]
fn bad_requests_deny_and_say_why() {
    let e = engine(r#"@id("all") permit (principal, action, resource);"#);
    let mut bad = q("read", "d1");
    bad.principal = Some(EntityRef::new("not a type", "x"));
    let d = e.decide(&bad);
    assert!(!d.allow);
    assert!(d.errors[0].contains("not a valid entity type"), "{d:?}");
    let mut none = q("read", "d1");
    none.resource = None;
    assert!(!e.decide(&none).allow);
    // unknown resources are fine (policy decides), unknown actions match no scoped policy
    assert!(e.decide(&q("read", "unknown-doc")).allow);
}

#[test]
fn explain_names_the_deciding_policies() {
    let e = engine(
        r#"
@id("team-reads") permit (principal in App::Team::"blue", action == App::Action::"read", resource);
@id("no-deletes") forbid (principal, action == App::Action::"delete", resource);
@id("team-deletes") permit (principal in App::Team::"blue", action == App::Action::"delete", resource);
"#,
    );
    let map = Mapping {
        namespace: Some("App".into()),
    };
    let req = |action: &str| {
        json!({"subject": {"type": "Agent", "id": "bot"}, "action": {"name": action},
               "resource": {"type": "Doc", "id": "d1"}, "context": {"explain": true}})
    };
    let out = evaluation(&e, &map, &req("read")).unwrap();
    assert_eq!(out.body["decision"], true);
    assert_eq!(
        out.body["context"]["reason"]["policies"],
        json!(["team-reads"])
    );
    let out = evaluation(&e, &map, &req("delete")).unwrap();
    assert_eq!(out.body["decision"], false);
    assert_eq!(
        out.body["context"]["reason"]["policies"],
        json!(["no-deletes"])
    );
    // without explain: the bare decision
    let plain = json!({"subject": {"type": "Agent", "id": "bot"}, "action": {"name": "read"},
                       "resource": {"type": "Doc", "id": "d1"}, "unknown": 1});
    assert_eq!(
        evaluation(&e, &map, &plain).unwrap().body,
        json!({"decision": true})
    );
}

#[test]
fn batch_semantics() {
    let e = todo_engine();
    let map = Mapping {
        namespace: Some("Todo".into()),
    };
    let morty = "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs";
    let body = |semantic: &str| {
        json!({
            "subject": {"type": "user", "id": morty},
            "action": {"name": "can_update_todo"},
            "options": {"evaluations_semantic": semantic, "another_option": 1},
            "evaluations": [
                {"resource": {"type": "todo", "id": "1", "properties": {"ownerID": "morty@the-citadel.com"}}},
                {"resource": {"type": "todo", "id": "2", "properties": {"ownerID": "rick@the-citadel.com"}}},
                {"action": {"name": "can_read_todos"}, "resource": {"type": "todo", "id": "3"}},
                {"resource": {"type": "todo"}},
            ]
        })
    };
    let all = evaluations(&e, &map, &body("execute_all"), 100).unwrap();
    let d: Vec<_> = all.body["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["decision"].clone())
        .collect();
    assert_eq!(d, [json!(true), json!(false), json!(true), json!(false)]);
    // the malformed item is a per-item error, not a failed request
    assert_eq!(
        all.body["evaluations"][3]["context"]["error"]["status"],
        400
    );
    let first_deny = evaluations(&e, &map, &body("deny_on_first_deny"), 100).unwrap();
    assert_eq!(first_deny.body["evaluations"].as_array().unwrap().len(), 2);
    let first_permit = evaluations(&e, &map, &body("permit_on_first_permit"), 100).unwrap();
    assert_eq!(
        first_permit.body["evaluations"].as_array().unwrap().len(),
        1
    );
    assert!(evaluations(&e, &map, &body("sometimes"), 100).is_err());
    assert!(evaluations(&e, &map, &body("execute_all"), 3).is_err());
    // no items: a single evaluation
    let single = json!({"subject": {"type": "user", "id": morty}, "action": {"name": "can_read_todos"},
                        "resource": {"type": "todo", "id": "x"}, "evaluations": []});
    assert_eq!(
        evaluations(&e, &map, &single, 100).unwrap().body,
        json!({"decision": true})
    );
}

#[test]
fn malformed_single_requests_are_request_errors() {
    let e = todo_engine();
    let map = Mapping::default();
    for body in [
        json!("just a string"),
        json!({"action": {"name": "a"}, "resource": {"type": "t", "id": "1"}}),
        json!({"subject": "alice", "action": {"name": "a"}, "resource": {"type": "t", "id": "1"}}),
        json!({"subject": {"type": "u"}, "action": {"name": "a"}, "resource": {"type": "t", "id": "1"}}),
        json!({"subject": {"type": "u", "id": "1"}, "action": {"name": 123}, "resource": {"type": "t", "id": "1"}}),
        json!({"subject": {"type": "u", "id": "1"}, "action": {"name": "a"}, "resource": {"type": "t", "id": "1"}, "context": []}),
    ] {
        assert!(evaluation(&e, &map, &body).is_err(), "{body}");
    }
}

#[test]
fn the_index_agrees_with_evaluating_every_policy() {
    // many teams, one policy each, plus unconstrained and action-group ones
    let mut src = String::new();
    for i in 0..300 {
        src.push_str(&format!(
            "@id(\"t{i}\") permit (principal in App::Team::\"team{i}\", action == App::Action::\"read\", resource);\n"
        ));
    }
    src.push_str(
        "@id(\"risky\") forbid (principal, action, resource) when { principal.risk > 5 };\n",
    );
    let mut e = Engine::compile(SCHEMA, &src).unwrap();
    let mut ents = vec![];
    for i in 0..300 {
        ents.push(json!({"uid": {"type": "App::Team", "id": format!("team{i}")}, "attrs": {}, "parents": []}));
        ents.push(
            json!({"uid": {"type": "App::Agent", "id": format!("a{i}")}, "attrs": {"risk": i % 10},
                         "parents": [{"type": "App::Team", "id": format!("team{i}")}]}),
        );
    }
    e.set_entities(&json!(ents)).unwrap();
    for i in (0..300).step_by(7) {
        for action in ["read", "delete"] {
            let q = Query {
                principal: Some(EntityRef::new("App::Agent", format!("a{i}"))),
                action: Some(EntityRef::new("App::Action", action)),
                resource: Some(EntityRef::new("App::Doc", "d")),
                ..Default::default()
            };
            let fast = e.decide(&q);
            let slow = e.decide_unindexed(&q);
            assert_eq!(fast.allow, slow.allow, "{q:?}");
            assert_eq!(fast.policies, slow.policies, "{q:?}");
            assert_eq!(fast.allow, action == "read" && i % 10 <= 5, "{q:?}");
        }
    }
}

#[test]
fn deny_all_denies_and_still_checks_requests() {
    let e = Engine::deny_all();
    let map = Mapping::default();
    let ok = json!({"subject": {"type": "user", "id": "a"}, "action": {"name": "read"},
                    "resource": {"type": "doc", "id": "1"}});
    assert_eq!(
        evaluation(&e, &map, &ok).unwrap().body,
        json!({"decision": false})
    );
    assert!(evaluation(&e, &map, &json!({"subject": {"type": "user"}})).is_err());
    let batch = json!({"subject": {"type": "user", "id": "a"}, "action": {"name": "read"},
                       "options": {"evaluations_semantic": "deny_on_first_deny"},
                       "evaluations": [{"resource": {"type": "doc", "id": "1"}}, {"resource": {"type": "doc", "id": "2"}}]});
    assert_eq!(
        evaluations(&e, &map, &batch, 10).unwrap().body,
        json!({"evaluations": [{"decision": false}]})
    );
}

/// A set that exercises every kind of scope (==, in, is, is in; action
/// lists and groups; none at all), conditions that err, action entities in
/// conditions, entities with and without attributes, a cell too big to
/// prebuild and a principal reaching many cells.
const SCOPES_SCHEMA: &str = r#"
namespace T {
  entity Org;
  entity Group in [Group, Org] { level?: Long };
  entity User in [Group] { risk: Long, dept?: String } tags String;
  entity Folder in [Folder];
  entity Doc in [Folder] { owner: User, secret: Bool };
  action view appliesTo { principal: User, resource: [Doc, Folder], context: { hour?: Long } };
  action read, list in [view] appliesTo { principal: User, resource: [Doc, Folder], context: { hour?: Long } };
  action write appliesTo { principal: User, resource: [Doc, Folder], context: { hour?: Long } };
  action delete in [write] appliesTo { principal: User, resource: [Doc, Folder], context: { hour?: Long } };
}
"#;

fn scopes_engine() -> Engine {
    scopes_engine_with(true)
}

/// `literal`: whether a policy names an action in its condition (then
/// every request carries every action entity; otherwise only its own).
fn scopes_engine_with(literal: bool) -> Engine {
    let mut src = String::from(
        r#"
@id("org-view") permit (principal in T::Org::"o1", action in T::Action::"view", resource);
@id("g-write") permit (principal in T::Group::"g2", action in [T::Action::"write", T::Action::"delete"], resource is T::Doc);
@id("owner") permit (principal, action, resource is T::Doc) when { resource.owner == principal };
@id("user-eq") permit (principal == T::User::"u3", action == T::Action::"list", resource in T::Folder::"f1");
@id("is-in") permit (principal is T::User in T::Group::"g3", action, resource is T::Doc in T::Folder::"f2");
@id("risky") forbid (principal, action, resource) when { principal.risk > 7 };
@id("secret") forbid (principal, action in T::Action::"write", resource is T::Doc) when { resource.secret };
@id("dept") forbid (principal is T::User, action == T::Action::"delete", resource) when { principal has dept && principal.dept == "x" };
@id("tagged") forbid (principal, action, resource) when { principal.hasTag("quarantine") };
@id("literal") permit (principal, action, resource == T::Folder::"f9") when { T::Action::"read" in T::Action::"view" };
@id("group-cond") permit (principal in T::Group::"g4", action, resource) when { action in T::Action::"view" };
@id("level") forbid (principal in T::Group::"g5", action == T::Action::"delete", resource) when { T::Group::"g5" has level && T::Group::"g5".level > 3 };
"#,
    );
    if !literal {
        src = src.replace("@id(\"literal\")", "// @id(\"literal\")");
    }
    for k in 10..16 {
        src.push_str(&format!(
            "@id(\"g{k}-read\") permit (principal in T::Group::\"g{k}\", action == T::Action::\"read\", resource) when {{ context has hour && context.hour > {k} }};\n"
        ));
    }
    // one cell too big to prebuild
    for k in 0..300 {
        src.push_str(&format!(
            "@id(\"list-{k}\") permit (principal, action == T::Action::\"list\", resource) when {{ principal.risk == {k} }};\n"
        ));
    }
    let mut e = Engine::compile(SCOPES_SCHEMA, &src).unwrap();
    let user = |id: &str, risk: i64, groups: &[&str], extra: serde_json::Value| {
        let mut attrs = json!({"risk": risk});
        if let Some(dept) = extra.get("dept") {
            attrs["dept"] = dept.clone();
        }
        json!({"uid": {"type": "T::User", "id": id}, "attrs": attrs,
               "parents": groups.iter().map(|g| json!({"type": "T::Group", "id": g})).collect::<Vec<_>>(),
               "tags": extra.get("tags").cloned().unwrap_or(json!({}))})
    };
    let mut ents = vec![
        json!({"uid": {"type": "T::Org", "id": "o1"}, "attrs": {}, "parents": []}),
        json!({"uid": {"type": "T::Group", "id": "g1"}, "attrs": {"level": 1}, "parents": [{"type": "T::Org", "id": "o1"}]}),
        json!({"uid": {"type": "T::Group", "id": "g2"}, "attrs": {}, "parents": []}),
        json!({"uid": {"type": "T::Group", "id": "g3"}, "attrs": {}, "parents": [{"type": "T::Group", "id": "g1"}]}),
        json!({"uid": {"type": "T::Group", "id": "g4"}, "attrs": {}, "parents": []}),
        json!({"uid": {"type": "T::Group", "id": "g5"}, "attrs": {"level": 5}, "parents": []}),
        user("u1", 1, &["g1"], json!({})),
        user("u2", 9, &["g2"], json!({})),
        user("u3", 2, &["g3"], json!({"dept": "x"})),
        user("u4", 0, &["g4", "g5"], json!({})),
        user("u5", 0, &["g2"], json!({"tags": {"quarantine": "yes"}})),
        user(
            "u9",
            3,
            &["g10", "g11", "g12", "g13", "g14", "g15"],
            json!({}),
        ),
        json!({"uid": {"type": "T::Folder", "id": "f1"}, "attrs": {}, "parents": []}),
        json!({"uid": {"type": "T::Folder", "id": "f2"}, "attrs": {}, "parents": [{"type": "T::Folder", "id": "f1"}]}),
        json!({"uid": {"type": "T::Folder", "id": "f9"}, "attrs": {}, "parents": []}),
        json!({"uid": {"type": "T::Doc", "id": "d1"}, "attrs": {"owner": {"__entity": {"type": "T::User", "id": "u1"}}, "secret": false},
               "parents": [{"type": "T::Folder", "id": "f1"}]}),
        json!({"uid": {"type": "T::Doc", "id": "d2"}, "attrs": {"owner": {"__entity": {"type": "T::User", "id": "u3"}}, "secret": true},
               "parents": [{"type": "T::Folder", "id": "f2"}]}),
        json!({"uid": {"type": "T::Doc", "id": "d3"}, "attrs": {"owner": {"__entity": {"type": "T::User", "id": "u2"}}, "secret": false},
               "parents": [{"type": "T::Folder", "id": "f2"}]}),
    ];
    for k in 10..16 {
        ents.push(
            json!({"uid": {"type": "T::Group", "id": format!("g{k}")}, "attrs": {}, "parents": []}),
        );
    }
    e.set_entities(&json!(ents)).unwrap();
    e
}

/// Every principal × action × resource × context of the scopes set.
fn scopes_queries() -> Vec<Query> {
    let obj = |v: serde_json::Value| v.as_object().unwrap().clone();
    let group = |id: &str, parents: &[(&str, &str)]| credence_policy::EntityData {
        uid: EntityRef::new("T::Group", id),
        attrs: Default::default(),
        parents: parents
            .iter()
            .map(|(t, p)| EntityRef::new(*t, *p))
            .collect(),
        tags: Default::default(),
    };
    let supplied_user =
        |id: &str, parents: &[&str], tags: serde_json::Value| credence_policy::EntityData {
            uid: EntityRef::new("T::User", id),
            attrs: obj(json!({"risk": 4})),
            parents: parents
                .iter()
                .map(|p| EntityRef::new("T::Group", *p))
                .collect(),
            tags: obj(tags),
        };
    // (principal id, its attributes, entities supplied with the question)
    let principals: Vec<(&str, serde_json::Value, Vec<credence_policy::EntityData>)> = vec![
        ("u1", json!({}), vec![]),
        ("u2", json!({}), vec![]),
        ("u3", json!({}), vec![]),
        ("u4", json!({}), vec![]),
        ("u5", json!({}), vec![]),
        ("u9", json!({}), vec![]),
        // unknown to the store: described by attributes, or not at all
        ("ghost", json!({"risk": 3}), vec![]),
        ("nobody", json!({}), vec![]),
        // supplied, overriding the store's u2, with a supplied group that
        // is itself in the store's org
        (
            "u2",
            json!({}),
            vec![
                supplied_user("u2", &["sg"], json!({})),
                group("sg", &[("T::Org", "o1")]),
            ],
        ),
        // supplied, in a chain of supplied groups
        (
            "s1",
            json!({}),
            vec![
                supplied_user("s1", &["sg1"], json!({})),
                group("sg1", &[("T::Group", "sg2")]),
                group("sg2", &[("T::Group", "g3"), ("T::Group", "g4")]),
            ],
        ),
        (
            "s2",
            json!({}),
            vec![supplied_user(
                "s2",
                &["g10", "g5"],
                json!({"quarantine": "x"}),
            )],
        ),
    ];
    let resources: Vec<(&str, &str, serde_json::Value)> = vec![
        ("T::Doc", "d1", json!({})),
        ("T::Doc", "d2", json!({})),
        ("T::Doc", "d3", json!({})),
        ("T::Folder", "f1", json!({})),
        ("T::Folder", "f2", json!({})),
        ("T::Folder", "f9", json!({})),
        (
            "T::Doc",
            "new",
            json!({"owner": {"__entity": {"type": "T::User", "id": "u4"}}, "secret": false}),
        ),
        ("T::Doc", "bare", json!({})),
    ];
    let mut out = Vec::new();
    for (p, p_attrs, supplied) in &principals {
        for a in ["view", "read", "list", "write", "delete", "fly"] {
            for (rt, r, r_attrs) in &resources {
                for context in [json!({}), json!({"hour": 12})] {
                    out.push(Query {
                        principal: Some(EntityRef::new("T::User", *p)),
                        principal_attrs: obj(p_attrs.clone()),
                        action: Some(EntityRef::new("T::Action", a)),
                        resource: Some(EntityRef::new(*rt, *r)),
                        resource_attrs: obj(r_attrs.clone()),
                        context: obj(context),
                        entities: supplied.clone(),
                    });
                }
            }
        }
    }
    out
}

/// A request carries only its own action entity unless some condition
/// names another action: both give Cedar's answer with every action.
#[test]
fn a_request_with_only_its_own_action_decides_as_with_all_actions() {
    for literal in [false, true] {
        let e = scopes_engine_with(literal);
        let mut allowed = 0;
        for q in &scopes_queries() {
            let d = e.decide(q);
            assert_eq!(d, e.decide_reference(q), "literal={literal} {q:?}");
            allowed += usize::from(d.allow);
        }
        assert!(allowed > 0);
    }
}

#[test]
fn the_index_agrees_with_evaluating_every_policy_for_every_kind_of_scope() {
    let e = scopes_engine();
    let queries = scopes_queries();
    let mut allowed = 0;
    for q in &queries {
        let fast = e.decide(q);
        let slow = e.decide_unindexed(q);
        // the same answer, the same deciding policies, the same errors
        assert_eq!(fast, slow, "{q:?}");
        // and again: nothing cached changes it
        assert_eq!(e.decide(q), fast, "{q:?}");
        allowed += usize::from(fast.allow);
    }
    // a mix of answers, not all one way
    assert!(
        allowed > queries.len() / 10,
        "{allowed} of {}",
        queries.len()
    );
    assert!(
        allowed < queries.len() / 2,
        "{allowed} of {}",
        queries.len()
    );

    let ask = |p: &str, a: &str, r: (&str, &str), hour: Option<i64>| {
        let mut q = Query {
            principal: Some(EntityRef::new("T::User", p)),
            action: Some(EntityRef::new("T::Action", a)),
            resource: Some(EntityRef::new(r.0, r.1)),
            ..Default::default()
        };
        if let Some(h) = hour {
            q.context.insert("hour".into(), json!(h));
        }
        e.decide(&q)
    };
    let doc = |d| ("T::Doc", d);
    // through a group of an org, and as the owner
    assert_eq!(
        ask("u1", "read", doc("d1"), None).policies,
        ["org-view", "owner"]
    );
    // action groups in the scope and in conditions
    assert_eq!(
        ask("u1", "list", ("T::Folder", "f1"), None).policies,
        ["org-view", "list-1"]
    );
    assert_eq!(ask("u4", "read", doc("d3"), None).policies, ["group-cond"]);
    assert!(!ask("u4", "write", doc("d3"), None).allow);
    assert_eq!(
        ask("u1", "write", ("T::Folder", "f9"), None).policies,
        ["literal"]
    );
    // forbids win and are named; an ancestor's attribute decides one
    let d = ask("u2", "delete", doc("d3"), None);
    assert_eq!(
        (d.allow, d.policies.as_slice()),
        (false, &["risky".to_owned()][..])
    );
    assert_eq!(ask("u4", "delete", doc("d1"), None).policies, ["level"]);
    assert_eq!(ask("u5", "write", doc("d1"), None).policies, ["tagged"]);
    assert_eq!(
        ask("u3", "delete", doc("d2"), None).policies,
        ["secret", "dept"]
    );
    // many cells: hour 12 passes the conditions of g10 and g11 only
    assert_eq!(
        ask("u9", "read", doc("d1"), Some(12)).policies,
        ["g10-read", "g11-read"]
    );
    assert!(!ask("u9", "read", doc("d1"), None).allow);
    // the cell too big to prebuild
    assert_eq!(ask("u9", "list", doc("d1"), None).policies, ["list-3"]);
    // an unknown principal without attributes: every policy reading them errs
    let d = ask("nobody", "list", doc("d1"), None);
    assert!(!d.allow && d.errors.len() > 1, "{d:?}");
}

#[test]
fn supplied_entities_reach_their_ancestors_through_each_other() {
    let e = scopes_engine();
    let group = |id: &str, parent: (&str, &str)| credence_policy::EntityData {
        uid: EntityRef::new("T::Group", id),
        parents: vec![EntityRef::new(parent.0, parent.1)],
        ..Default::default()
    };
    let q = Query {
        principal: Some(EntityRef::new("T::User", "s")),
        action: Some(EntityRef::new("T::Action", "read")),
        resource: Some(EntityRef::new("T::Folder", "f2")),
        entities: vec![
            credence_policy::EntityData {
                uid: EntityRef::new("T::User", "s"),
                attrs: json!({"risk": 0}).as_object().unwrap().clone(),
                parents: vec![EntityRef::new("T::Group", "a")],
                tags: Default::default(),
            },
            group("a", ("T::Group", "b")),
            group("b", ("T::Org", "o1")),
        ],
        ..Default::default()
    };
    // s in a in b in o1: the org's permit applies
    let d = e.decide(&q);
    assert_eq!(d, e.decide_unindexed(&q));
    assert!(d.allow, "{d:?}");
    assert_eq!(d.policies, ["org-view"]);

    // a stored principal whose stored group is supplied with another
    // parent: u1 in g1, now also in g4
    let q = Query {
        principal: Some(EntityRef::new("T::User", "u1")),
        action: Some(EntityRef::new("T::Action", "read")),
        resource: Some(EntityRef::new("T::Folder", "f2")),
        entities: vec![group("g1", ("T::Group", "g4"))],
        ..Default::default()
    };
    let d = e.decide(&q);
    assert_eq!(d, e.decide_unindexed(&q));
    // g1's stored parent o1 stays (Cedar keeps u1's stored ancestors)
    assert_eq!(d.policies, ["org-view", "group-cond"]);
}
