//! The OpenID AuthZEN interop "Todo" scenario: its 1.0 decision vectors,
//! with its users loaded as entities and its rules written as Cedar.

use credence_policy::Engine;
use credence_policy::authzen::{Mapping, evaluation, evaluations};
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/authzen-todo");

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{DIR}/{name}")).unwrap()
}

pub fn todo_engine() -> Engine {
    let mut e = Engine::compile(&read("schema.cedarschema"), &read("policies.cedar")).unwrap();
    let entities: Value = serde_json::from_str(&read("entities.json")).unwrap();
    e.set_entities(&entities).unwrap();
    e
}

#[test]
fn every_interop_decision_matches() {
    let engine = todo_engine();
    let map = Mapping {
        namespace: Some("Todo".into()),
    };
    let vectors: Value =
        serde_json::from_str(&read("decisions-authorization-api-1_0-02.json")).unwrap();
    let singles = vectors["evaluation"].as_array().unwrap();
    assert_eq!(singles.len(), 40);
    for case in singles {
        let out = evaluation(&engine, &map, &case["request"]).unwrap();
        assert_eq!(
            out.body,
            serde_json::json!({"decision": case["expected"]}),
            "{}",
            case["request"]
        );
        assert!(out.items[0].decision.errors.is_empty(), "{:?}", out.items);
    }
    let batches = vectors["evaluations"].as_array().unwrap();
    assert_eq!(batches.len(), 3);
    for case in batches {
        let out = evaluations(&engine, &map, &case["request"], 100).unwrap();
        // the interop runner compares the evaluations array exactly
        assert_eq!(
            out.body["evaluations"], case["expected"],
            "{}",
            case["request"]
        );
    }
}
