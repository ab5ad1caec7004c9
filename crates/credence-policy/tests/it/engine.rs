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
