//! The OpenID AuthZEN Authorization API 1.0 certification scenario: its
//! Basic and Batch levels (Core and Properties), with its fixture written
//! as Cedar. Test ids (`c-2-2-1`, ...) are the scenario's section anchors.
//! Search is not implemented; Discovery and the HTTP-only checks (content
//! type, malformed bodies, `X-Request-ID`) are in the `credence` crate's
//! end-to-end `authzen_cert` test.

use credence_policy::Engine;
use credence_policy::authzen::{Mapping, Outcome, evaluation, evaluations};
use serde_json::{Value, json};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/authzen-cert");

/// Most items of one batch here (the server's limit is larger).
const MAX: usize = 100;

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{DIR}/{name}")).unwrap()
}

pub fn cert_engine() -> Engine {
    let mut e = Engine::compile(&read("schema.cedarschema"), &read("policies.cedar")).unwrap();
    let entities: Value = serde_json::from_str(&read("entities.json")).unwrap();
    assert_eq!(e.set_entities(&entities).unwrap(), 4);
    e
}

fn map() -> Mapping {
    Mapping {
        namespace: Some("Cert".into()),
    }
}

/// c-2-3: a JSON object with a boolean `decision`, and a `context` only
/// if it is an object. Returns the decision.
fn decision_of(v: &Value, case: &str) -> bool {
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("{case}: not a JSON object: {v}"));
    if let Some(c) = o.get("context") {
        assert!(c.is_object(), "{case}: context is not an object: {v}");
    }
    o.get("decision")
        .and_then(Value::as_bool)
        .unwrap_or_else(|| panic!("{case}: no boolean decision: {v}"))
}

/// c-3-3: an `evaluations` array of decisions (and no top-level
/// `decision`, which the specification recommends omitting).
fn decisions_of(out: &Outcome, case: &str) -> Vec<bool> {
    let body = out
        .body
        .as_object()
        .unwrap_or_else(|| panic!("{case}: not a JSON object: {}", out.body));
    assert!(!body.contains_key("decision"), "{case}: {}", out.body);
    let items = body
        .get("evaluations")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{case}: no evaluations array: {}", out.body));
    assert_eq!(items.len(), out.items.len(), "{case}");
    items
        .iter()
        .enumerate()
        .map(|(i, v)| decision_of(v, &format!("{case} item {i}")))
        .collect()
}

/// A single evaluation of a fixture request: exactly `{"decision": ...}`
/// and nothing went wrong.
fn assert_single(engine: &Engine, case: &str, req: &Value, expected: bool) {
    let out = evaluation(engine, &map(), req).unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_eq!(out.body, json!({ "decision": expected }), "{case}: {req}");
    assert!(
        out.items[0].decision.errors.is_empty(),
        "{case}: {:?}",
        out.items
    );
}

fn user(id: &str) -> Value {
    json!({"type": "user", "id": id})
}

fn record(id: &str) -> Value {
    json!({"type": "record", "id": id})
}

fn act(name: &str) -> Value {
    json!({ "name": name })
}

fn req(subject: Value, action: Value, resource: Value) -> Value {
    json!({"subject": subject, "action": action, "resource": resource})
}

/// c-1-4: the eight decisions the harness checks, as (rule, request,
/// decision).
fn required_decisions() -> Vec<(u8, Value, bool)> {
    let archived =
        json!({"type": "record", "id": "record-2", "properties": {"status": "archived"}});
    let admin_bob = json!({"type": "user", "id": "bob", "properties": {"role": "admin"}});
    vec![
        (1, req(user("alice"), act("read"), record("record-1")), true),
        (
            2,
            req(user("alice"), act("write"), record("record-1")),
            true,
        ),
        (3, req(user("bob"), act("read"), record("record-1")), true),
        (4, req(user("bob"), act("write"), record("record-1")), false),
        (5, req(user("alice"), act("write"), archived.clone()), false),
        (6, req(admin_bob, act("write"), archived), true),
        (
            7,
            req(
                user("alice"),
                json!({"name": "delete", "properties": {"soft": true}}),
                record("record-1"),
            ),
            true,
        ),
        (
            8,
            req(
                user("alice"),
                json!({"name": "delete", "properties": {"soft": false}}),
                record("record-1"),
            ),
            false,
        ),
    ]
}

#[test]
fn the_eight_required_decisions_hold_with_and_without_context() {
    let engine = cert_engine();
    for (rule, request, expected) in required_decisions() {
        assert_single(&engine, &format!("rule {rule}"), &request, expected);
        // c-1-6: a context never changes a fixture decision
        let mut with_context = request.clone();
        with_context["context"] = json!({"time": "2025-06-27T18:03-07:00", "ip": "192.168.1.1"});
        assert_single(
            &engine,
            &format!("rule {rule} with context"),
            &with_context,
            expected,
        );
        let mut empty_context = request;
        empty_context["context"] = json!({});
        assert_single(
            &engine,
            &format!("rule {rule} with an empty context"),
            &empty_context,
            expected,
        );
    }
}

#[test]
fn basic_core_requests_are_accepted_and_decided() {
    let engine = cert_engine();
    // c-2-2-1, rule 1
    let permit = req(user("alice"), act("read"), record("record-1"));
    assert_single(&engine, "c-2-2-1", &permit, true);
    // c-2-2-2, rule 4
    assert_single(
        &engine,
        "c-2-2-2",
        &req(user("bob"), act("write"), record("record-1")),
        false,
    );
    // c-2-2-3: an optional context is accepted
    let mut with_context = permit.clone();
    with_context["context"] = json!({"time": "2025-06-27T18:03-07:00", "ip": "192.168.1.1"});
    assert_single(&engine, "c-2-2-3", &with_context, true);
    // c-2-2-8: properties beyond the fixture's
    let extra = json!({
        "subject": {"type": "user", "id": "alice",
                    "properties": {"department": "Sales", "role": "manager"}},
        "action": {"name": "read", "properties": {"method": "GET"}},
        "resource": {"type": "record", "id": "record-1",
                     "properties": {"status": "active", "owner": "bob"}},
    });
    assert_single(&engine, "c-2-2-8", &extra, true);
    // c-2-2-9: unknown fields are ignored
    let mut unknown = permit.clone();
    unknown["foo"] = json!("bar");
    unknown["futureField"] = json!({"nested": true});
    assert_single(&engine, "c-2-2-9", &unknown, true);
    // ... at every level, and explicit nulls too
    let nested = json!({
        "subject": {"type": "user", "id": "alice", "extra": 1, "properties": null},
        "action": {"name": "read", "future": [1, 2]},
        "resource": {"type": "record", "id": "record-1", "x": {"y": "z"}},
        "context": null,
    });
    assert_single(&engine, "c-2-2-9 nested", &nested, true);

    // c-2-3-1: a boolean decision, for requests outside the fixture's
    // rules too (their values are the implementer's)
    for (case, r) in [
        (
            "alice reads record-2",
            req(user("alice"), act("read"), record("record-2")),
        ),
        (
            "bob deletes record-2",
            req(user("bob"), act("delete"), record("record-2")),
        ),
        (
            "an unknown action",
            req(user("alice"), act("archive"), record("record-1")),
        ),
        (
            "an unknown subject type",
            req(
                json!({"type": "spaceship", "id": "x"}),
                act("read"),
                record("record-1"),
            ),
        ),
    ] {
        let out = evaluation(&engine, &map(), &r).unwrap_or_else(|e| panic!("{case}: {e}"));
        decision_of(&out.body, case);
    }
    // c-2-3-2: a response context, when there is one, is an object
    let mut explained = permit.clone();
    explained["context"] = json!({"explain": true});
    let out = evaluation(&engine, &map(), &explained).unwrap();
    assert!(decision_of(&out.body, "c-2-3-2"));
    assert!(out.body["context"].is_object(), "{}", out.body);

    // c-2-6: the same request, the same answer
    for r in [&permit, &req(user("bob"), act("write"), record("record-1"))] {
        let first = evaluation(&engine, &map(), r).unwrap().body;
        for _ in 0..5 {
            assert_eq!(evaluation(&engine, &map(), r).unwrap().body, first, "c-2-6");
        }
    }
}

#[test]
fn basic_core_malformed_requests_are_refused() {
    let engine = cert_engine();
    let good = req(user("alice"), act("read"), record("record-1"));
    let without = |key: &str| {
        let mut r = good.clone();
        r.as_object_mut().unwrap().remove(key);
        r
    };
    let with = |key: &str, v: Value| {
        let mut r = good.clone();
        r[key] = v;
        r
    };
    let cases = [
        // c-2-4-1: missing required fields
        ("c-2-4-1 no subject", without("subject")),
        ("c-2-4-1 no action", without("action")),
        ("c-2-4-1 no resource", without("resource")),
        // c-2-4-2: missing required sub-fields
        (
            "c-2-4-2 subject.type",
            with("subject", json!({"id": "alice"})),
        ),
        (
            "c-2-4-2 subject.id",
            with("subject", json!({"type": "user"})),
        ),
        ("c-2-4-2 action.name", with("action", json!({}))),
        (
            "c-2-4-2 resource.type",
            with("resource", json!({"id": "record-1"})),
        ),
        (
            "c-2-4-2 resource.id",
            with("resource", json!({"type": "record"})),
        ),
        // c-2-4-6: invalid field types
        (
            "c-2-4-6 subject is a string",
            with("subject", json!("alice")),
        ),
        (
            "c-2-4-6 action.name is a number",
            with("action", json!({"name": 123})),
        ),
        (
            "subject.id is a number",
            with("subject", json!({"type": "user", "id": 7})),
        ),
        (
            "resource is an array",
            with("resource", json!(["record", "record-1"])),
        ),
        ("context is a string", with("context", json!("now"))),
        (
            "properties is a string",
            with(
                "subject",
                json!({"type": "user", "id": "alice", "properties": "x"}),
            ),
        ),
        ("the body is not an object", json!([good.clone()])),
        ("the body is null", Value::Null),
    ];
    for (case, body) in cases {
        let e = evaluation(&engine, &map(), &body).unwrap_err();
        assert!(!e.0.is_empty(), "{case}");
        // the Access Evaluations endpoint without `evaluations` is the same
        assert!(evaluations(&engine, &map(), &body, MAX).is_err(), "{case}");
    }
}

#[test]
fn basic_properties_are_evaluated() {
    let engine = cert_engine();
    // c-2-2-4, rule 5
    let archived =
        json!({"type": "record", "id": "record-2", "properties": {"status": "archived"}});
    assert_single(
        &engine,
        "c-2-2-4",
        &req(user("alice"), act("write"), archived.clone()),
        false,
    );
    // c-2-2-5, rule 6
    let admin = json!({"type": "user", "id": "bob", "properties": {"role": "admin"}});
    assert_single(
        &engine,
        "c-2-2-5",
        &req(admin, act("write"), archived),
        true,
    );
    // c-2-2-6, rule 7
    let soft = |v: bool| json!({"name": "delete", "properties": {"soft": v}});
    assert_single(
        &engine,
        "c-2-2-6",
        &req(user("alice"), soft(true), record("record-1")),
        true,
    );
    // c-2-2-7, rule 8
    assert_single(
        &engine,
        "c-2-2-7",
        &req(user("alice"), soft(false), record("record-1")),
        false,
    );
    // a delete without the property is not a soft one
    assert_single(
        &engine,
        "delete without soft",
        &req(user("alice"), act("delete"), record("record-1")),
        false,
    );

    // Rules 5 and 6 speak of any resource with `status` "archived" and any
    // subject with `role` "admin": for subjects and resources the store does
    // not know, the request's properties alone decide.
    let carol = |role: Option<&str>| match role {
        Some(r) => json!({"type": "user", "id": "carol", "properties": {"role": r}}),
        None => user("carol"),
    };
    let record9 = |status: &str| json!({"type": "record", "id": "record-9", "properties": {"status": status}});
    for (case, r, expected) in [
        (
            "rule 5, unknown record",
            req(user("alice"), act("write"), record9("archived")),
            false,
        ),
        (
            "rule 2, unknown active record",
            req(user("alice"), act("write"), record9("active")),
            true,
        ),
        (
            "rule 6, unknown admin",
            req(carol(Some("admin")), act("write"), record9("archived")),
            true,
        ),
        (
            "rule 6, unknown admin, stored record",
            req(carol(Some("admin")), act("write"), record("record-2")),
            true,
        ),
        (
            "unknown non-admin, archived",
            req(carol(Some("manager")), act("write"), record9("archived")),
            false,
        ),
        (
            "unknown user without properties, archived",
            req(carol(None), act("write"), record9("archived")),
            false,
        ),
        (
            "rule 4, unknown admin, active record",
            req(carol(Some("admin")), act("write"), record("record-1")),
            false,
        ),
    ] {
        assert_single(&engine, case, &r, expected);
    }
}

#[test]
fn batch_core_requests_are_accepted_and_decided() {
    let engine = cert_engine();
    let batch = |body: &Value, case: &str| {
        let out = evaluations(&engine, &map(), body, MAX).unwrap_or_else(|e| panic!("{case}: {e}"));
        let d = decisions_of(&out, case);
        (out, d)
    };

    // c-3-2-1: two items, each a decision (values not checked; the first
    // is rule 1)
    let body = json!({
        "subject": user("alice"),
        "action": act("read"),
        "evaluations": [{"resource": record("record-1")}, {"resource": record("record-2")}],
    });
    let (_, d) = batch(&body, "c-3-2-1");
    assert_eq!(d.len(), 2, "c-3-2-1");
    assert!(d[0], "c-3-2-1, rule 1");

    // c-3-2-2: rules 3 and 4, in request order
    let body = json!({
        "subject": user("bob"),
        "resource": record("record-1"),
        "evaluations": [{"action": act("read")}, {"action": act("write")}],
    });
    let (out, _) = batch(&body, "c-3-2-2");
    assert_eq!(
        out.body,
        json!({"evaluations": [{"decision": true}, {"decision": false}]}),
        "c-3-2-2"
    );
    // c-3-3-2: the order is the request's
    let body = json!({
        "subject": user("bob"),
        "resource": record("record-1"),
        "evaluations": [{"action": act("write")}, {"action": act("read")}],
    });
    let (out, _) = batch(&body, "c-3-3-2");
    assert_eq!(
        out.body,
        json!({"evaluations": [{"decision": false}, {"decision": true}]}),
        "c-3-3-2"
    );

    // c-3-2-5: every item complete, no defaults
    let body = json!({"evaluations": [
        req(user("alice"), act("read"), record("record-1")),
        req(user("bob"), act("write"), record("record-1")),
    ]});
    let (out, _) = batch(&body, "c-3-2-5");
    assert_eq!(
        out.body,
        json!({"evaluations": [{"decision": true}, {"decision": false}]}),
        "c-3-2-5"
    );

    // c-3-2-6: the top-level context applies unless an item has its own,
    // which replaces it whole
    let body = json!({
        "subject": user("alice"),
        "action": act("read"),
        "context": {"time": "2025-06-27T18:03-07:00"},
        "evaluations": [
            {"resource": record("record-1")},
            {"resource": record("record-2"),
             "context": {"time": "2025-06-27T19:00-07:00", "source": "batch-override"}},
        ],
    });
    let (out, d) = batch(&body, "c-3-2-6");
    assert_eq!(d.len(), 2, "c-3-2-6");
    let contexts: Vec<Value> = out
        .items
        .iter()
        .map(|i| Value::Object(i.query.as_ref().unwrap().context.clone()))
        .collect();
    assert_eq!(
        contexts,
        [
            json!({"time": "2025-06-27T18:03-07:00"}),
            json!({"time": "2025-06-27T19:00-07:00", "source": "batch-override"}),
        ],
        "c-3-2-6"
    );

    // c-3-3-1: as many answers as questions, in order, for a larger batch
    let cases = required_decisions();
    let body = json!({
        "evaluations": cases.iter().map(|(_, r, _)| r.clone()).collect::<Vec<_>>(),
    });
    let (_, d) = batch(&body, "c-3-3-1");
    assert_eq!(
        d,
        cases.iter().map(|(_, _, e)| *e).collect::<Vec<_>>(),
        "c-3-3-1"
    );

    // c-3-4-1: under execute_all a malformed item is a deny in its place
    let body = json!({
        "subject": user("alice"),
        "action": act("read"),
        "options": {"evaluations_semantic": "execute_all"},
        "evaluations": [{"resource": record("record-1")}, {}],
    });
    let (out, d) = batch(&body, "c-3-4-1");
    assert_eq!(d, [true, false], "c-3-4-1");
    assert!(
        out.body["evaluations"][1]["context"].is_object(),
        "{}",
        out.body
    );
    assert!(out.items[1].query.is_none(), "c-3-4-1");
    // ... wherever it is, and whatever is wrong with it
    let body = json!({
        "subject": user("alice"),
        "action": act("read"),
        "evaluations": [
            {"resource": {"type": "record"}},
            {"resource": record("record-1")},
            {"subject": "alice"},
            "not an object",
            {"action": {"name": 7}},
        ],
    });
    let (_, d) = batch(&body, "c-3-4-1, many");
    assert_eq!(d, [false, true, false, false, false], "c-3-4-1, many");

    // c-3-4-2 and c-3-4-3: without `evaluations`, or with an empty array,
    // the answer is a single evaluation's
    let single = req(user("alice"), act("read"), record("record-1"));
    let mut empty = single.clone();
    empty["evaluations"] = json!([]);
    for (case, body) in [("c-3-4-2", &single), ("c-3-4-3", &empty)] {
        let out = evaluations(&engine, &map(), body, MAX).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(out.body, json!({"decision": true}), "{case}");
    }
    // ... and missing fields there are still refused (c-2-4)
    let mut broken = empty.clone();
    broken.as_object_mut().unwrap().remove("subject");
    assert!(evaluations(&engine, &map(), &broken, MAX).is_err());

    // unknown fields are ignored in a batch too, at the top and per item
    let body = json!({
        "subject": user("alice"),
        "action": act("read"),
        "foo": "bar",
        "options": {"another_option": "value"},
        "evaluations": [{"resource": record("record-1"), "futureField": {"nested": true}}],
    });
    let (out, _) = batch(&body, "unknown fields");
    assert_eq!(out.body, json!({"evaluations": [{"decision": true}]}));

    // whole-payload failures are refused as a whole
    for (case, body) in [
        (
            "evaluations is not an array",
            json!({"evaluations": {"a": 1}}),
        ),
        (
            "options is not an object",
            json!({"options": "execute_all", "evaluations": [single.clone()]}),
        ),
        ("the body is not an object", json!([single.clone()])),
    ] {
        assert!(evaluations(&engine, &map(), &body, MAX).is_err(), "{case}");
    }
    // c-2-6: the same batch, the same answers
    let first = evaluations(&engine, &map(), &body_of_rules(), MAX)
        .unwrap()
        .body;
    for _ in 0..5 {
        assert_eq!(
            evaluations(&engine, &map(), &body_of_rules(), MAX)
                .unwrap()
                .body,
            first
        );
    }
}

/// The eight required decisions as one batch.
fn body_of_rules() -> Value {
    json!({
        "evaluations": required_decisions().into_iter().map(|(_, r, _)| r).collect::<Vec<_>>(),
    })
}

#[test]
fn batch_properties_are_evaluated_per_item_with_defaults_merged() {
    let engine = cert_engine();
    let with_status = |id: &str, status: &str| json!({"type": "record", "id": id, "properties": {"status": status}});

    // c-3-2-3: rules 2 and 5, resource properties per item
    let body = json!({
        "subject": user("alice"),
        "action": act("write"),
        "evaluations": [
            {"resource": with_status("record-1", "active")},
            {"resource": with_status("record-2", "archived")},
        ],
    });
    let out = evaluations(&engine, &map(), &body, MAX).unwrap();
    assert_eq!(
        out.body,
        json!({"evaluations": [{"decision": true}, {"decision": false}]}),
        "c-3-2-3"
    );

    // c-3-2-4: rules 5 and 6, subject properties per item
    let body = json!({
        "action": act("write"),
        "resource": with_status("record-2", "archived"),
        "evaluations": [
            {"subject": user("alice")},
            {"subject": {"type": "user", "id": "bob", "properties": {"role": "admin"}}},
        ],
    });
    let out = evaluations(&engine, &map(), &body, MAX).unwrap();
    assert_eq!(
        out.body,
        json!({"evaluations": [{"decision": false}, {"decision": true}]}),
        "c-3-2-4"
    );

    // c-3-2-7: an empty item takes every default; an item's resource
    // replaces the default resource whole
    let body = json!({
        "subject": user("alice"),
        "action": act("write"),
        "resource": with_status("record-1", "active"),
        "evaluations": [{}, {"resource": with_status("record-2", "archived")}],
    });
    let out = evaluations(&engine, &map(), &body, MAX).unwrap();
    assert_eq!(
        out.body,
        json!({"evaluations": [{"decision": true}, {"decision": false}]}),
        "c-3-2-7"
    );
    let q: Vec<_> = out.items.iter().map(|i| i.query.clone().unwrap()).collect();
    assert_eq!(q[0].resource.as_ref().unwrap().id, "record-1");
    assert_eq!(
        Value::Object(q[0].resource_attrs.clone()),
        json!({"status": "active"})
    );
    assert_eq!(q[1].resource.as_ref().unwrap().id, "record-2");
    assert_eq!(
        Value::Object(q[1].resource_attrs.clone()),
        json!({"status": "archived"})
    );
    for x in &q {
        assert_eq!(x.principal.as_ref().unwrap().id, "alice");
        assert_eq!(x.action.as_ref().unwrap().id, "write");
    }
    // no sub-field merging: an item's incomplete resource is not completed
    // from the default's fields
    let body = json!({
        "subject": user("alice"),
        "action": act("write"),
        "resource": with_status("record-1", "active"),
        "evaluations": [{"resource": {"type": "record", "properties": {"status": "active"}}}],
    });
    let out = evaluations(&engine, &map(), &body, MAX).unwrap();
    assert_eq!(decisions_of(&out, "no sub-field merging"), [false]);
    assert!(out.items[0].query.is_none());
    // ... nor are an item's properties merged with the default's
    let body = json!({
        "subject": {"type": "user", "id": "carol", "properties": {"role": "admin"}},
        "action": act("write"),
        "resource": with_status("record-9", "archived"),
        "evaluations": [{}, {"subject": {"type": "user", "id": "carol"}}],
    });
    let out = evaluations(&engine, &map(), &body, MAX).unwrap();
    assert_eq!(
        out.body,
        json!({"evaluations": [{"decision": true}, {"decision": false}]}),
        "whole-object subject replacement"
    );
    // action properties per item (rules 7 and 8)
    let body = json!({
        "subject": user("alice"),
        "resource": record("record-1"),
        "evaluations": [
            {"action": {"name": "delete", "properties": {"soft": true}}},
            {"action": {"name": "delete", "properties": {"soft": false}}},
        ],
    });
    let out = evaluations(&engine, &map(), &body, MAX).unwrap();
    assert_eq!(
        out.body,
        json!({"evaluations": [{"decision": true}, {"decision": false}]}),
        "rules 7 and 8 in a batch"
    );
}

#[test]
fn evaluations_semantic_options() {
    let engine = cert_engine();
    let permit = req(user("alice"), act("read"), record("record-1"));
    let deny = req(user("bob"), act("write"), record("record-1"));
    let broken = json!({"subject": user("alice"), "action": act("read")});
    let run = |semantic: Option<&str>, items: &[&Value]| {
        let mut body = json!({ "evaluations": items });
        if let Some(s) = semantic {
            body["options"] = json!({ "evaluations_semantic": s });
        }
        let out = evaluations(&engine, &map(), &body, MAX).unwrap_or_else(|e| panic!("{e}"));
        decisions_of(&out, semantic.unwrap_or("default"))
    };
    // execute_all, the default: every item, in order
    for s in [None, Some("execute_all")] {
        assert_eq!(
            run(s, &[&permit, &deny, &broken, &permit]),
            [true, false, false, true],
            "{s:?}"
        );
    }
    // deny_on_first_deny: stops after the first deny (or failure)
    let s = Some("deny_on_first_deny");
    assert_eq!(run(s, &[&permit, &deny, &permit]), [true, false]);
    assert_eq!(run(s, &[&permit, &broken, &permit]), [true, false]);
    assert_eq!(run(s, &[&permit, &permit]), [true, true]);
    // permit_on_first_permit: stops after the first permit
    let s = Some("permit_on_first_permit");
    assert_eq!(run(s, &[&deny, &permit, &deny]), [false, true]);
    assert_eq!(
        run(s, &[&broken, &deny, &permit, &permit]),
        [false, false, true]
    );
    assert_eq!(run(s, &[&deny, &deny]), [false, false]);
    // an unknown semantic is refused, not guessed
    let body =
        json!({"options": {"evaluations_semantic": "first_of_all"}, "evaluations": [permit]});
    assert!(evaluations(&engine, &map(), &body, MAX).is_err());
}
