//! The PDP over HTTP: a policy set pushed, validated and activated through
//! the admin API, entities loaded, and the AuthZEN interop Todo vectors
//! answered by `/access/v1/evaluation(s)`; versions roll back.

use serde_json::{Value, json};

use crate::support::Dev;

const TODO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../credence-policy/tests/data/authzen-todo"
);

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{TODO}/{name}")).unwrap()
}

#[test]
fn authzen_pdp_answers_the_todo_interop_vectors() {
    let dev = Dev::start();
    let http = dev.http();

    // nothing active yet: everything is denied
    let q = json!({"subject": {"type": "user", "id": "x"}, "action": {"name": "can_read_todos"},
                   "resource": {"type": "todo", "id": "1"}});
    let r = http.post("/access/v1/evaluation", &q);
    assert_eq!((r.status, r.json()), (200, json!({"decision": false})));
    // ... and malformed questions are still refused as such
    let r = http.post(
        "/access/v1/evaluation",
        &json!({"subject": {"type": "user"}}),
    );
    assert_eq!(r.status, 400);

    // an invalid set is refused with every problem listed
    let bad = http.post(
        "/v1/policies",
        &json!({"schema": read("schema.cedarschema"),
                "policies": "@id(\"a\") permit(principal, action == Todo::Action::\"nope\", resource);\n@id(\"b\") permit(principal, action, resource) when { principal.nope };",
                "namespace": "Todo", "activate": true}),
    );
    assert_eq!(bad.status, 400, "{}", String::from_utf8_lossy(&bad.body));
    assert_eq!(bad.error_code(), "invalid_policy_set");
    assert!(
        bad.json()["details"].as_array().unwrap().len() >= 2,
        "{}",
        bad.json()
    );

    let created = http.post(
        "/v1/policies",
        &json!({"schema": read("schema.cedarschema"), "policies": read("policies.cedar"),
                "namespace": "Todo", "note": "todo app", "activate": true}),
    );
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    assert_eq!(created.json()["version"], 1);
    let entities: Value = serde_json::from_str(&read("entities.json")).unwrap();
    let a = format!("Bearer {}", dev.token);
    let r = http.req(
        "PUT",
        "/v1/policies/entities",
        Some(&a),
        Some("application/json"),
        serde_json::to_vec(&entities).unwrap(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let vectors: Value =
        serde_json::from_str(&read("decisions-authorization-api-1_0-02.json")).unwrap();
    for case in vectors["evaluation"].as_array().unwrap() {
        let r = http.post("/access/v1/evaluation", &case["request"]);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json(),
            json!({"decision": case["expected"]}),
            "{}",
            case["request"]
        );
    }
    for case in vectors["evaluations"].as_array().unwrap() {
        let r = http.post("/access/v1/evaluations", &case["request"]);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json()["evaluations"],
            case["expected"],
            "{}",
            case["request"]
        );
    }

    // the metadata document
    let meta = http.get_public("/.well-known/authzen-configuration").json();
    assert_eq!(meta["policy_decision_point"], dev.url.as_str());
    assert_eq!(
        meta["access_evaluations_endpoint"],
        format!("{}/access/v1/evaluations", dev.url)
    );
    // AuthZEN's error conventions: 400, not 415; unknown fields ignored
    let r = http.post_raw("/access/v1/evaluation", "text/plain", b"{}".to_vec());
    assert_eq!(r.status, 400);
    let r = http.post(
        "/access/v1/evaluation",
        &json!({"subject": {"type": "user"}}),
    );
    assert_eq!(r.status, 400);
    let r = http.post_raw(
        "/access/v1/evaluation",
        "application/json",
        b"{not json".to_vec(),
    );
    assert_eq!(r.status, 400);
    // unauthenticated callers get 401
    let r = http.req(
        "POST",
        "/access/v1/evaluation",
        None,
        Some("application/json"),
        b"{}".to_vec(),
    );
    assert_eq!(r.status, 401);

    // the request id comes back
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let echoed = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{}/access/v1/evaluation", dev.url))
            .bearer_auth(&dev.token)
            .header("x-request-id", "req-42")
            .json(&q)
            .send()
            .await
            .unwrap()
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned())
    });
    assert_eq!(echoed.as_deref(), Some("req-42"));

    // version 2 denies everything; rolling back to 1 restores the answers
    let v2 = http.post(
        "/v1/policies",
        &json!({"schema": read("schema.cedarschema"), "policies": "@id(\"nobody\") forbid(principal, action, resource);",
                "namespace": "Todo", "activate": true}),
    );
    assert_eq!(v2.json()["version"], 2);
    let first = &vectors["evaluation"][0];
    assert_eq!(first["expected"], true);
    assert_eq!(
        http.post("/access/v1/evaluation", &first["request"]).json(),
        json!({"decision": false})
    );
    let r = http.post("/v1/policies/1/activate", &json!({}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        http.post("/access/v1/evaluation", &first["request"]).json(),
        json!({"decision": true})
    );
    let list = http.get("/v1/policies").json();
    assert_eq!(list["items"][0]["version"], 2);
    assert_eq!(list["items"][0]["active"], false);
    assert_eq!(list["items"][1]["active"], true);
    // every change is in the audit log, with its diff
    let found = http.get("/v1/audit/search?action=policy.activate").json();
    let ev = &found["entries"][0]["event"];
    assert_eq!(ev["details"]["from"], 2, "{found}");
    assert_eq!(
        ev["details"]["diff"]["added"],
        json!(
            [
                "viewers-read",
                "editors-create",
                "editors-change-their-own",
                "evil-genius-updates-any",
                "admin-deletes-any"
            ]
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
        )
    );
    // denies are audited
    let denies = http.get("/v1/audit/search?action=authz.decision").json();
    assert!(
        !denies["entries"].as_array().unwrap().is_empty(),
        "{denies}"
    );
}

#[test]
fn policy_cli_validates_pushes_loads_and_explains() {
    let dev = Dev::start();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.cedar");
    std::fs::write(
        &bad,
        "@id(\"a\") permit(principal, action == Todo::Action::\"nope\", resource);\n@id(\"b\") permit(principal, action, resource) when { principal.nope };\n",
    )
    .unwrap();
    let schema = format!("{TODO}/schema.cedarschema");
    // offline: no server address needed
    let o = std::process::Command::new(crate::support::BIN)
        .args(["policy", "validate", "--schema", &schema])
        .arg(&bad)
        .env_remove("CREDENCE_DATA_DIR")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("policy a") && err.contains("policy b"),
        "{err}"
    );
    let good = format!("{TODO}/policies.cedar");
    let out = dev.ok(&["policy", "validate", "--schema", &schema, &good]);
    assert!(
        out.contains("valid: 5 policies") && out.contains("plus 4 built-in"),
        "{out}"
    );

    let out = dev.ok(&[
        "policy",
        "push",
        "--schema",
        &schema,
        &good,
        "--namespace",
        "Todo",
        "--activate",
    ]);
    assert!(out.contains("version 1 (active)"), "{out}");
    let loaded = dev.ok(&[
        "policy",
        "entities",
        "load",
        &format!("{TODO}/entities.json"),
    ]);
    assert!(loaded.contains("loaded 9 entities"), "{loaded}");
    let req = dir.path().join("req.json");
    std::fs::write(
        &req,
        r#"{"subject": {"type": "user", "id": "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"},
            "action": {"name": "can_update_todo"},
            "resource": {"type": "todo", "id": "t1", "properties": {"ownerID": "morty@the-citadel.com"}}}"#,
    )
    .unwrap();
    let out = dev.ok(&["policy", "test", "--request", req.to_str().unwrap()]);
    assert!(out.contains("decision: allow"), "{out}");
    assert!(out.contains("editors-change-their-own"), "{out}");
    let listed = dev.ok(&["policy", "list"]);
    assert!(listed.contains("active"), "{listed}");
    // a failed push lists every problem
    let o = dev.cli(&["policy", "push", "--schema", &schema, bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("  - "), "{err}");
}

#[test]
fn a_workload_calls_the_pdp_with_its_jwt_svid() {
    let dev = Dev::start();
    dev.ok(&[
        "identity",
        "create",
        "--spiffe-id",
        "spiffe://example.org/pep",
        "--kind",
        "service",
        "--owner",
        "o",
    ]);
    let mint = |aud: &str| {
        dev.json(&[
            "jwt",
            "mint",
            "--spiffe-id",
            "spiffe://example.org/pep",
            "--audience",
            aud,
        ])
    };
    let good = mint(&dev.url);
    let wrong = mint("someone-else");
    let http = dev.http();
    let q = serde_json::to_vec(
        &json!({"subject": {"type": "user", "id": "x"}, "action": {"name": "a"},
                                        "resource": {"type": "todo", "id": "1"}}),
    )
    .unwrap();
    let call = |token: &str| {
        http.req(
            "POST",
            "/access/v1/evaluation",
            Some(&format!("Bearer {token}")),
            Some("application/json"),
            q.clone(),
        )
    };
    let r = call(good["token"].as_str().unwrap());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({"decision": false}));
    assert_eq!(call(wrong["token"].as_str().unwrap()).status, 401);
    assert_eq!(call("not.a.jwt").status, 401);
    // a revoked JWT-SVID is refused at once
    dev.ok(&["revoke", "--jti", good["jti"].as_str().unwrap()]);
    assert_eq!(call(good["token"].as_str().unwrap()).status, 401);
}

#[test]
fn policy_diff_replays_recorded_questions_against_two_versions() {
    // every allow recorded too, so the diff has both outcomes to replay
    let dev = Dev::start_with(tempfile::tempdir().unwrap(), &["--pdp-allow-sample", "1"]);
    let http = dev.http();
    let schema = format!("{TODO}/schema.cedarschema");
    let v1 = format!("{TODO}/policies.cedar");
    dev.ok(&[
        "policy",
        "push",
        "--schema",
        &schema,
        &v1,
        "--namespace",
        "Todo",
        "--activate",
    ]);
    dev.ok(&[
        "policy",
        "entities",
        "load",
        &format!("{TODO}/entities.json"),
    ]);
    // version 2 drops the admin's right to delete anyone's todo
    let v2 = dev.path().join("v2.cedar");
    let text = read("policies.cedar");
    let cut = text.find("@id(\"admin-deletes-any\")").unwrap();
    std::fs::write(&v2, &text[..cut]).unwrap();
    dev.ok(&[
        "policy",
        "push",
        "--schema",
        &schema,
        v2.to_str().unwrap(),
        "--namespace",
        "Todo",
    ]);

    let rick = "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs";
    let beth = "CiRmZDM2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs";
    let ask = |who: &str, action: &str| {
        let r = http.post(
            "/access/v1/evaluation",
            &json!({"subject": {"type": "user", "id": who}, "action": {"name": action},
                    "resource": {"type": "todo", "id": "t9", "properties": {"ownerID": "beth@the-smiths.com"}}}),
        );
        assert_eq!(r.status, 200);
        r.json()["decision"] == true
    };
    assert!(ask(rick, "can_delete_todo"));
    assert!(ask(rick, "can_read_todos"));
    assert!(!ask(beth, "can_delete_todo"));
    // a question given in a file is replayed as well
    let extra = dev.path().join("extra.json");
    std::fs::write(
        &extra,
        json!([{"subject": {"type": "Todo::user", "id": rick}, "action": {"name": "can_delete_todo"},
                "resource": {"type": "Todo::todo", "id": "t1", "properties": {"ownerID": "x@y"}}}])
        .to_string(),
    )
    .unwrap();

    // decisions reach the audit log off the request path
    let t0 = std::time::Instant::now();
    let diff = loop {
        let d = dev.json(&[
            "policy",
            "diff",
            "1",
            "2",
            "--requests",
            extra.to_str().unwrap(),
        ]);
        if d["compared"].as_u64().unwrap_or(0) >= 4 {
            break d;
        }
        assert!(t0.elapsed().as_secs() < 10, "{d}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(diff["invalid"], 0, "{diff}");
    let changed = diff["changed"].as_array().unwrap();
    assert_eq!(changed.len(), 2, "{diff}");
    for c in changed {
        assert_eq!(c["request"]["subject"]["id"], rick);
        assert_eq!(c["request"]["action"]["name"], "can_delete_todo");
        assert_eq!(c["from"]["decision"], true);
        assert_eq!(c["from"]["policies"], json!(["admin-deletes-any"]));
        assert_eq!(c["to"]["decision"], false);
    }
    let text = dev.ok(&["policy", "diff", "1", "2"]);
    assert!(text.contains("1 of 3 questions change outcome"), "{text}");
    assert!(
        text.contains("allow (admin-deletes-any) -> deny (default)"),
        "{text}"
    );
    // unknown versions are refused
    let o = dev.cli(&["policy", "diff", "1", "9"]);
    assert!(!o.status.success());
}
