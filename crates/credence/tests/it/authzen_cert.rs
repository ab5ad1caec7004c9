//! The OpenID AuthZEN Authorization API 1.0 certification scenario over
//! HTTP: the `credence dev` binary with the scenario's fixture
//! (`credence-policy/tests/data/authzen-cert`) pushed as a policy set,
//! answering the Basic and Batch requests (Core and Properties) at the
//! endpoints its Discovery document names, with the scenario's transport,
//! header, error and idempotency requirements. Test ids (`c-2-2-1`, ...)
//! are the scenario's section anchors. Search is not implemented. One
//! server for the whole scenario.

use serde_json::{Value, json};

use crate::support::Dev;

const CERT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../credence-policy/tests/data/authzen-cert"
);

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{CERT}/{name}")).unwrap()
}

/// What the harness looks at in an answer.
struct Answer {
    status: u16,
    content_type: String,
    request_id: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// c-5: a success is a 200 with a JSON body.
    fn ok(&self, case: &str) -> Value {
        assert_eq!(
            self.status,
            200,
            "{case}: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_json_type(&self.content_type, case);
        self.json()
    }
}

fn assert_json_type(ct: &str, case: &str) {
    let mime = ct.split(';').next().unwrap_or("").trim();
    assert!(
        mime.eq_ignore_ascii_case("application/json"),
        "{case}: Content-Type {ct:?}"
    );
}

/// An AuthZEN client: absolute URLs, any content type and headers.
struct Pep {
    token: String,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Pep {
    fn new(token: &str) -> Self {
        Self {
            token: token.to_owned(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        }
    }

    fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        content_type: Option<&str>,
        request_id: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        let mut rb = self
            .client
            .request(method, url)
            .bearer_auth(&self.token)
            .body(body);
        if let Some(ct) = content_type {
            rb = rb.header("content-type", ct);
        }
        if let Some(id) = request_id {
            rb = rb.header("x-request-id", id);
        }
        self.rt.block_on(async {
            let r = rb.send().await.unwrap();
            let header = |name: &str| {
                r.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            let content_type = header("content-type").unwrap_or_default();
            let request_id = header("x-request-id");
            Answer {
                status: r.status().as_u16(),
                content_type,
                request_id,
                body: r.bytes().await.unwrap().to_vec(),
            }
        })
    }

    fn post(&self, url: &str, body: &Value) -> Answer {
        self.post_with(url, body, None)
    }

    fn post_with(&self, url: &str, body: &Value, request_id: Option<&str>) -> Answer {
        self.send(
            reqwest::Method::POST,
            url,
            Some("application/json"),
            request_id,
            serde_json::to_vec(body).unwrap(),
        )
    }

    fn get(&self, url: &str) -> Answer {
        self.send(reqwest::Method::GET, url, None, None, Vec::new())
    }
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

/// The scenario's Access Evaluation requests with a required decision:
/// (test id, request, decision).
fn basic_cases() -> Vec<(&'static str, Value, bool)> {
    let archived =
        json!({"type": "record", "id": "record-2", "properties": {"status": "archived"}});
    let mut with_context = req(user("alice"), act("read"), record("record-1"));
    with_context["context"] = json!({"time": "2025-06-27T18:03-07:00", "ip": "192.168.1.1"});
    let mut unknown = req(user("alice"), act("read"), record("record-1"));
    unknown["foo"] = json!("bar");
    unknown["futureField"] = json!({"nested": true});
    vec![
        // Basic Core
        (
            "c-2-2-1",
            req(user("alice"), act("read"), record("record-1")),
            true,
        ),
        (
            "c-2-2-2",
            req(user("bob"), act("write"), record("record-1")),
            false,
        ),
        ("c-2-2-3", with_context, true),
        (
            "c-2-2-8",
            json!({
                "subject": {"type": "user", "id": "alice",
                            "properties": {"department": "Sales", "role": "manager"}},
                "action": {"name": "read", "properties": {"method": "GET"}},
                "resource": {"type": "record", "id": "record-1",
                             "properties": {"status": "active", "owner": "bob"}},
            }),
            true,
        ),
        ("c-2-2-9", unknown, true),
        (
            "rule 2",
            req(user("alice"), act("write"), record("record-1")),
            true,
        ),
        (
            "rule 3",
            req(user("bob"), act("read"), record("record-1")),
            true,
        ),
        // Basic Properties
        (
            "c-2-2-4",
            req(user("alice"), act("write"), archived.clone()),
            false,
        ),
        (
            "c-2-2-5",
            req(
                json!({"type": "user", "id": "bob", "properties": {"role": "admin"}}),
                act("write"),
                archived,
            ),
            true,
        ),
        (
            "c-2-2-6",
            req(
                user("alice"),
                json!({"name": "delete", "properties": {"soft": true}}),
                record("record-1"),
            ),
            true,
        ),
        (
            "c-2-2-7",
            req(
                user("alice"),
                json!({"name": "delete", "properties": {"soft": false}}),
                record("record-1"),
            ),
            false,
        ),
    ]
}

/// The scenario's Access Evaluations requests: (test id, request, the
/// decisions, `None` where the scenario leaves them to the implementer).
fn batch_cases() -> Vec<(&'static str, Value, Vec<Option<bool>>)> {
    let with_status = |id: &str, status: &str| json!({"type": "record", "id": id, "properties": {"status": status}});
    vec![
        // Batch Core
        (
            "c-3-2-1",
            json!({
                "subject": user("alice"),
                "action": act("read"),
                "evaluations": [{"resource": record("record-1")}, {"resource": record("record-2")}],
            }),
            vec![None, None],
        ),
        (
            "c-3-2-2",
            json!({
                "subject": user("bob"),
                "resource": record("record-1"),
                "evaluations": [{"action": act("read")}, {"action": act("write")}],
            }),
            vec![Some(true), Some(false)],
        ),
        (
            "c-3-2-5",
            json!({"evaluations": [
                req(user("alice"), act("read"), record("record-1")),
                req(user("bob"), act("write"), record("record-1")),
            ]}),
            vec![Some(true), Some(false)],
        ),
        (
            "c-3-2-6",
            json!({
                "subject": user("alice"),
                "action": act("read"),
                "context": {"time": "2025-06-27T18:03-07:00"},
                "evaluations": [
                    {"resource": record("record-1")},
                    {"resource": record("record-2"),
                     "context": {"time": "2025-06-27T19:00-07:00", "source": "batch-override"}},
                ],
            }),
            vec![None, None],
        ),
        (
            "c-3-4-1",
            json!({
                "subject": user("alice"),
                "action": act("read"),
                "options": {"evaluations_semantic": "execute_all"},
                "evaluations": [{"resource": record("record-1")}, {}],
            }),
            vec![Some(true), Some(false)],
        ),
        // Batch Properties
        (
            "c-3-2-3",
            json!({
                "subject": user("alice"),
                "action": act("write"),
                "evaluations": [
                    {"resource": with_status("record-1", "active")},
                    {"resource": with_status("record-2", "archived")},
                ],
            }),
            vec![Some(true), Some(false)],
        ),
        (
            "c-3-2-4",
            json!({
                "action": act("write"),
                "resource": with_status("record-2", "archived"),
                "evaluations": [
                    {"subject": user("alice")},
                    {"subject": {"type": "user", "id": "bob", "properties": {"role": "admin"}}},
                ],
            }),
            vec![Some(false), Some(true)],
        ),
        (
            "c-3-2-7",
            json!({
                "subject": user("alice"),
                "action": act("write"),
                "resource": with_status("record-1", "active"),
                "evaluations": [{}, {"resource": with_status("record-2", "archived")}],
            }),
            vec![Some(true), Some(false)],
        ),
        // the short-circuit semantics
        (
            "deny_on_first_deny",
            json!({
                "subject": user("bob"),
                "resource": record("record-1"),
                "options": {"evaluations_semantic": "deny_on_first_deny"},
                "evaluations": [{"action": act("read")}, {"action": act("write")}, {"action": act("read")}],
            }),
            vec![Some(true), Some(false)],
        ),
        (
            "permit_on_first_permit",
            json!({
                "subject": user("bob"),
                "resource": record("record-1"),
                "options": {"evaluations_semantic": "permit_on_first_permit"},
                "evaluations": [{"action": act("write")}, {"action": act("read")}, {"action": act("write")}],
            }),
            vec![Some(false), Some(true)],
        ),
    ]
}

/// The c-2-4 requests that must be refused with a 400, as (case, body).
fn malformed_bodies() -> Vec<(&'static str, Value)> {
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
    vec![
        ("c-2-4-1 no subject", without("subject")),
        ("c-2-4-1 no action", without("action")),
        ("c-2-4-1 no resource", without("resource")),
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
        (
            "c-2-4-6 subject is a string",
            with("subject", json!("alice")),
        ),
        (
            "c-2-4-6 action.name is a number",
            with("action", json!({"name": 123})),
        ),
        ("the body is an array", json!([good])),
    ]
}

#[test]
fn authzen_cert_scenario_over_http() {
    let dev = Dev::start();
    let admin = dev.http();
    let created = admin.post(
        "/v1/policies",
        &json!({"schema": read("schema.cedarschema"), "policies": read("policies.cedar"),
                "namespace": "Cert", "note": "AuthZEN certification fixture", "activate": true}),
    );
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let entities: Value = serde_json::from_str(&read("entities.json")).unwrap();
    let loaded = admin.req(
        "PUT",
        "/v1/policies/entities",
        Some(&format!("Bearer {}", dev.token)),
        Some("application/json"),
        serde_json::to_vec(&entities).unwrap(),
    );
    assert_eq!(
        loaded.status,
        200,
        "{}",
        String::from_utf8_lossy(&loaded.body)
    );
    let pep = Pep::new(&dev.token);

    // ---- Discovery (c-6) ----
    // the metadata document, unauthenticated, at the well-known URI of a
    // base URL without a path
    let meta = pep.send(
        reqwest::Method::GET,
        &format!("{}/.well-known/authzen-configuration", dev.url),
        None,
        None,
        Vec::new(),
    );
    let meta = meta.ok("c-6-2");
    // c-6-3: the required fields; the PDP is the base URL used for discovery
    let pdp = meta["policy_decision_point"].as_str().unwrap();
    assert_eq!(pdp, dev.url);
    assert!(!pdp.contains('?') && !pdp.contains('#'), "{pdp}");
    let one = meta["access_evaluation_endpoint"].as_str().unwrap();
    assert_eq!(one, format!("{pdp}/access/v1/evaluation"));
    // c-6-4: the optional fields Credence has; no search endpoints, since it
    // implements none
    let many = meta["access_evaluations_endpoint"].as_str().unwrap();
    assert_eq!(many, format!("{pdp}/access/v1/evaluations"));
    for absent in [
        "search_subject_endpoint",
        "search_resource_endpoint",
        "search_action_endpoint",
    ] {
        assert!(meta.get(absent).is_none(), "{absent}: {meta}");
    }
    if let Some(caps) = meta.get("capabilities") {
        assert!(
            caps.as_array().unwrap().iter().all(Value::is_string),
            "{meta}"
        );
    }
    // the endpoints are URLs of this PDP, over the scheme it serves
    // (`credence dev` is plain HTTP on loopback; `credence server` is HTTPS)
    for url in [pdp, one, many] {
        let u = reqwest::Url::parse(url).unwrap();
        assert_eq!(u.scheme(), "http", "{url}");
        assert!(u.query().is_none() && u.fragment().is_none(), "{url}");
    }
    // the same document again, and no 404 at the well-known path (c-6-6)
    assert_eq!(
        pep.get(&format!("{pdp}/.well-known/authzen-configuration"))
            .ok("c-6-1"),
        meta
    );

    // From here on, the endpoints the metadata names (c-2-1, c-3-1).

    // ---- Basic (c-2-2, c-2-3) ----
    for (case, body, decision) in basic_cases() {
        let out = pep.post(one, &body).ok(case);
        assert_eq!(out, json!({ "decision": decision }), "{case}: {body}");
        // c-3-4-2: the batch endpoint without `evaluations` answers alike
        let out = pep.post(many, &body).ok(case);
        assert_eq!(
            out,
            json!({ "decision": decision }),
            "{case} (batch endpoint)"
        );
    }
    // c-3-4-3: an empty `evaluations` too
    let mut empty = req(user("alice"), act("read"), record("record-1"));
    empty["evaluations"] = json!([]);
    assert_eq!(
        pep.post(many, &empty).ok("c-3-4-3"),
        json!({"decision": true})
    );
    // c-2-3: a decision outside the fixture's rules is still a boolean
    for body in [
        req(user("alice"), act("read"), record("record-2")),
        req(user("bob"), act("delete"), record("record-2")),
        req(user("alice"), act("archive"), record("record-1")),
        req(
            json!({"type": "spaceship", "id": "x"}),
            act("read"),
            record("record-1"),
        ),
    ] {
        let out = pep.post(one, &body).ok("c-2-3-1");
        assert!(out["decision"].is_boolean(), "{body}: {out}");
        assert!(out.get("context").is_none_or(Value::is_object), "{out}");
    }
    // c-2-3-2: a response context is an object (Credence adds one on request)
    let mut explained = req(user("alice"), act("read"), record("record-1"));
    explained["context"] = json!({"explain": true});
    let out = pep.post(one, &explained).ok("c-2-3-2");
    assert_eq!(out["decision"], true);
    assert!(out["context"].is_object(), "{out}");

    // ---- Batch (c-3-2, c-3-3, c-3-4-1) ----
    for (case, body, expected) in batch_cases() {
        let out = pep.post(many, &body).ok(case);
        // c-3-3-4: no top-level decision next to `evaluations`
        assert!(out.get("decision").is_none(), "{case}: {out}");
        let items = out["evaluations"].as_array().unwrap();
        // c-3-3-1 (or shorter, by the short-circuit semantics)
        assert_eq!(items.len(), expected.len(), "{case}: {out}");
        for (i, (item, want)) in items.iter().zip(&expected).enumerate() {
            // c-3-3-3
            let got = item["decision"]
                .as_bool()
                .unwrap_or_else(|| panic!("{case} item {i}: {out}"));
            assert!(item.get("context").is_none_or(Value::is_object), "{out}");
            // c-3-3-2: in request order
            if let Some(want) = want {
                assert_eq!(got, *want, "{case} item {i}: {out}");
            }
        }
    }
    // c-3-4-1: the failed item says why, in an object
    let (_, body, _) = batch_cases()
        .into_iter()
        .find(|c| c.0 == "c-3-4-1")
        .unwrap();
    let out = pep.post(many, &body).ok("c-3-4-1");
    assert!(out["evaluations"][1]["context"].is_object(), "{out}");

    // ---- Error handling (c-2-4): 400, on both endpoints ----
    for (case, body) in malformed_bodies() {
        for url in [one, many] {
            let r = pep.post(url, &body);
            assert_eq!(r.status, 400, "{case} at {url}");
            assert_json_type(&r.content_type, case);
        }
    }
    let good = serde_json::to_vec(&req(user("alice"), act("read"), record("record-1"))).unwrap();
    let raw: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        // c-2-4-3
        ("c-2-4-3 text/plain", Some("text/plain"), good.clone()),
        (
            "c-2-4-3 form",
            Some("application/x-www-form-urlencoded"),
            good.clone(),
        ),
        ("c-2-4-3 no content type", None, good.clone()),
        // c-2-4-4
        (
            "c-2-4-4",
            Some("application/json"),
            b"{\"subject\": {\"type\": \"user\", \"id\": \"alice\"".to_vec(),
        ),
        (
            "c-2-4-4 not JSON at all",
            Some("application/json"),
            b"decision=true".to_vec(),
        ),
        // c-2-4-5
        ("c-2-4-5", Some("application/json"), Vec::new()),
    ];
    for (case, ct, body) in raw {
        for url in [one, many] {
            let r = pep.send(reqwest::Method::POST, url, ct, Some(case), body.clone());
            assert_eq!(r.status, 400, "{case} at {url}");
            assert_json_type(&r.content_type, case);
            // c-2-5-1 holds for refusals too
            assert_eq!(r.request_id.as_deref(), Some(case), "{case}");
        }
    }
    // c-5: a JSON media type with parameters is JSON
    let r = pep.send(
        reqwest::Method::POST,
        one,
        Some("application/json; charset=utf-8"),
        None,
        good.clone(),
    );
    assert_eq!(r.ok("c-5 charset"), json!({"decision": true}));

    // ---- Header handling (c-2-5) ----
    let permit = req(user("alice"), act("read"), record("record-1"));
    for id in ["req-1", "7f1c0a52-58c4-4f0e-9a8d-2b9b1e0c3d11"] {
        let r = pep.post_with(one, &permit, Some(id));
        assert_eq!(r.ok("c-2-5-1"), json!({"decision": true}));
        assert_eq!(r.request_id.as_deref(), Some(id), "c-2-5-1");
        let r = pep.post_with(many, &batch_cases()[1].1, Some(id));
        assert_eq!(
            r.ok("c-2-5-1 batch"),
            json!({"evaluations": [{"decision": true}, {"decision": false}]})
        );
        assert_eq!(r.request_id.as_deref(), Some(id), "c-2-5-1 batch");
    }
    // c-2-5-2: without one, nothing fails
    let r = pep.post(one, &permit);
    assert_eq!(r.ok("c-2-5-2"), json!({"decision": true}));

    // ---- Idempotency (c-2-6) ----
    for (case, body, decision) in basic_cases().into_iter().take(2) {
        for _ in 0..5 {
            assert_eq!(
                pep.post(one, &body).ok(case),
                json!({ "decision": decision }),
                "c-2-6 {case}"
            );
        }
    }
    let (_, batch, _) = batch_cases().swap_remove(1);
    let first = pep.post(many, &batch).ok("c-2-6 batch");
    for _ in 0..5 {
        assert_eq!(pep.post(many, &batch).ok("c-2-6 batch"), first);
    }
}
