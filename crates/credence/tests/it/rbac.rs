//! Credence's own authorization end to end: a team administrator with its
//! own token is confined to its team by policy, the root token keeps a
//! way to fix policies that lock it out, token scopes stay within the
//! identity's, and the PDP answers services that present an X509-SVID.

use serde_json::json;

use crate::support::{Dev, have, reqwest::blocking_free::Http, run, wait_for};

/// The README's example set: agents read their team's documents, team
/// administrators manage their team's identities.
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/agent-docs");

/// Pushes and activates `policies` (a file's text) with the example schema.
fn push(dev: &Dev, policies: &str) -> String {
    let p = dev.path().join("p.cedar");
    std::fs::write(&p, policies).unwrap();
    dev.ok(&[
        "policy",
        "push",
        "--schema",
        &format!("{EXAMPLE}/schema.cedarschema"),
        p.to_str().unwrap(),
        "--activate",
    ])
}

fn example_policies() -> String {
    std::fs::read_to_string(format!("{EXAMPLE}/policies.cedar")).unwrap()
}

fn identity(http: &Http, path: &str, owner: &str) -> (u16, String) {
    let r = http.post(
        "/v1/identities",
        &json!({"spiffe_id": format!("spiffe://example.org/{path}"), "kind": "agent",
                "owner": owner, "scopes": ["docs:read"]}),
    );
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

#[test]
fn team_admin_is_confined_by_policy_and_root_can_always_fix_policies() {
    let dev = Dev::start();
    let root = dev.http();

    // a named administrator, created by root through the CLI
    let created = dev.json(&["admin", "create", "alice", "--team", "payments"]);
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("cadm_"));
    let listed = dev.ok(&["admin", "list"]);
    assert!(
        listed.contains("alice") && listed.contains("payments"),
        "{listed}"
    );
    let alice = Http::new(&dev.url, &token);

    // no policy grants alice anything yet
    let (st, body) = identity(&alice, "pay/api", "payments");
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("no policy permits it"), "{body}");

    push(&dev, &example_policies());
    assert_eq!(identity(&alice, "pay/api", "payments").0, 201);
    let (st, body) = identity(&alice, "search/api", "search");
    assert_eq!(st, 403, "{body}");
    assert_eq!(identity(&root, "search/api", "search").0, 201);

    // alice sees and manages only her team's identities
    let listed = alice.get("/v1/identities").json();
    let ids: Vec<&str> = listed["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["spiffe_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["spiffe://example.org/pay/api"]);
    let theirs = "/v1/identities/spiffe%3A%2F%2Fexample.org%2Fsearch%2Fapi";
    assert_eq!(alice.get(theirs).status, 403);
    assert_eq!(
        alice.post(&format!("{theirs}/disable"), &json!({})).status,
        403
    );
    assert_eq!(
        alice
            .post(
                "/v1/jwt/mint",
                &json!({"spiffe_id": "spiffe://example.org/search/api", "audience": "x"})
            )
            .status,
        403
    );
    assert_eq!(
        alice
            .post(
                "/v1/jwt/mint",
                &json!({"spiffe_id": "spiffe://example.org/pay/api", "audience": "x"})
            )
            .status,
        200
    );
    // ... and nothing server-wide: CA, nodes, policies, other admins
    for (path, body) in [
        ("/v1/ca/rotate", json!({})),
        ("/v1/nodes/tokens", json!({})),
        (
            "/v1/admins",
            json!({"name": "mallory", "teams": ["search"]}),
        ),
    ] {
        let r = alice.post(path, &body);
        assert_eq!(
            r.status,
            403,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.error_code(), "forbidden");
    }
    assert_eq!(alice.get("/v1/audit/entries").status, 403);
    // the refusals are audited under her name
    let found = dev.json(&["audit", "search", "--action", "admin.authorize"]);
    assert!(found.to_string().contains("\"alice\""), "{found}");

    // a policy that locks out even root: root can still replace it
    push(
        &dev,
        "@id(\"lockdown\") forbid (principal, action, resource);",
    );
    let (st, body) = identity(&root, "x", "ops");
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("lockdown"), "{body}");
    assert_eq!(root.get("/v1/ca").status, 403);
    push(&dev, &example_policies());
    assert_eq!(identity(&root, "x", "ops").0, 201);

    // deleting the administrator stops its token at once
    dev.ok(&["admin", "delete", "alice"]);
    assert_eq!(alice.get("/v1/identities").status, 401);
}

#[test]
fn jwt_scopes_stay_within_the_identity_and_the_pdp_accepts_svid_clients() {
    let dev = Dev::start();
    dev.ok(&[
        "identity",
        "create",
        "--spiffe-id",
        "spiffe://example.org/reader",
        "--kind",
        "agent",
        "--owner",
        "docs",
        "--scope",
        "docs:read",
        "--scope",
        "docs:list",
    ]);
    let shown = dev.ok(&["identity", "show", "spiffe://example.org/reader"]);
    assert!(
        shown.contains("scopes:         docs:read docs:list"),
        "{shown}"
    );
    let token = dev.ok(&[
        "jwt",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/reader",
        "--audience",
        "docs-api",
        "--scope",
        "docs:read",
    ]);
    let claims = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(token.trim())
        .unwrap()
        .claims;
    assert_eq!(claims["scope"], "docs:read");
    let o = dev.cli(&[
        "jwt",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/reader",
        "--audience",
        "docs-api",
        "--scope",
        "docs:delete",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("credence.scopes-within-identity"), "{err}");

    // a service asks the PDP over mutual TLS with its X509-SVID, using
    // Python's ssl (OpenSSL) as the client
    if !have("python3") {
        return;
    }
    let svid = dev.path().join("svid");
    dev.ok(&[
        "x509",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/reader",
        "--out",
        svid.to_str().unwrap(),
    ]);
    let addr_file = dev.path().join("agent-addr");
    wait_for(&addr_file, "agent-addr");
    let agent_addr = std::fs::read_to_string(addr_file).unwrap();
    let script = r#"
import http.client, json, ssl, sys
d, addr, cert = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=d + "/bundle.pem")
ctx.check_hostname = False  # SPIFFE servers are named by URI SAN, not DNS
if cert == "yes":
    ctx.load_cert_chain(d + "/svid/svid.pem", d + "/svid/svid.key")
host, port = addr.strip().rsplit(":", 1)
try:
    c = http.client.HTTPSConnection(host, int(port), context=ctx)
    c.request("POST", "/access/v1/evaluation", body=json.dumps({
        "subject": {"type": "Credence::Identity", "id": "spiffe://example.org/reader"},
        "action": {"name": "read"}, "resource": {"type": "doc", "id": "1"}}),
        headers={"Content-Type": "application/json"})
    r = c.getresponse()
    print(r.status, r.read().decode())
except Exception as e:
    print("error", e)
"#;
    let dir = dev.path().to_str().unwrap().to_owned();
    let with = run("python3", &["-c", script, &dir, &agent_addr, "yes"]);
    let out = String::from_utf8_lossy(&with.stdout);
    assert!(
        out.starts_with("200 "),
        "{out} {}",
        String::from_utf8_lossy(&with.stderr)
    );
    assert!(out.contains("\"decision\":false"), "{out}");
    let without = run("python3", &["-c", script, &dir, &agent_addr, "no"]);
    let out = String::from_utf8_lossy(&without.stdout);
    assert!(out.starts_with("403 "), "{out}");
    // the deny is audited (off the request path) under the SVID's SPIFFE ID
    let t0 = std::time::Instant::now();
    loop {
        let found = dev.json(&["audit", "search", "--action", "authz.decision"]);
        if found.to_string().contains("spiffe://example.org/reader") {
            break;
        }
        assert!(t0.elapsed().as_secs() < 10, "{found}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The README's worked example, command for command, with its files.
#[test]
fn readme_worked_example() {
    let dev = Dev::start();
    let e = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/agent-docs");
    let schema = format!("{e}/schema.cedarschema");
    let policies = format!("{e}/policies.cedar");
    let out = dev.ok(&["policy", "validate", "--schema", &schema, &policies]);
    assert!(out.contains("valid: 5 policies"), "{out}");
    dev.ok(&[
        "policy",
        "push",
        "--schema",
        &schema,
        &policies,
        "--namespace",
        "Docs",
        "--activate",
    ]);
    dev.ok(&[
        "identity",
        "create",
        "--spiffe-id",
        "spiffe://example.org/agents/researcher",
        "--kind",
        "agent",
        "--owner",
        "payments",
    ]);
    let http = dev.http();
    let ask = |action: &str, team: &str| {
        http.post(
            "/access/v1/evaluation",
            &json!({"subject": {"type": "Credence::Identity", "id": "spiffe://example.org/agents/researcher"},
                    "action": {"name": action},
                    "resource": {"type": "Document", "id": "q3", "properties": {"team": team}},
                    "context": {"explain": true}}),
        )
        .json()
    };
    let read = ask("read", "payments");
    assert_eq!(read["decision"], true, "{read}");
    assert_eq!(
        read["context"]["reason"]["policies"],
        json!(["agents-read-their-team-docs"])
    );
    let delete = ask("delete", "payments");
    assert_eq!(delete["decision"], false, "{delete}");
    assert_eq!(
        delete["context"]["reason"]["policies"],
        json!(["agents-never-delete"])
    );
    assert_eq!(ask("read", "search")["decision"], false);
    // properties cannot disguise a registered identity
    let r = http.post(
        "/access/v1/evaluation",
        &json!({"subject": {"type": "Credence::Identity", "id": "spiffe://example.org/agents/researcher",
                            "properties": {"kind": "service"}},
                "action": {"name": "delete"}, "resource": {"type": "Document", "id": "q3", "properties": {"team": "payments"}}}),
    );
    assert_eq!(r.json()["decision"], false);

    let alice = dev.ok(&["admin", "create", "alice", "--team", "payments"]);
    let alice = alice.trim();
    assert!(
        alice.starts_with("cadm_") && !alice.contains(' '),
        "{alice}"
    );
    let as_alice = |args: &[&str]| {
        let mut a = vec!["--token", alice];
        a.extend_from_slice(args);
        dev.cli(&a)
    };
    let o = as_alice(&[
        "identity",
        "create",
        "--spiffe-id",
        "spiffe://example.org/pay/api",
        "--kind",
        "service",
        "--owner",
        "payments",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = as_alice(&[
        "identity",
        "create",
        "--spiffe-id",
        "spiffe://example.org/search/api",
        "--kind",
        "service",
        "--owner",
        "search",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "alice may not create_identity spiffe://example.org/search/api (no policy permits it)"
        ),
        "{err}"
    );
    let o = as_alice(&["ca", "rotate"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("alice may not manage_ca server"), "{err}");
    let o = dev.cli(&[
        "jwt",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/agents/researcher",
        "--audience",
        "docs",
        "--ttl",
        "1h",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("forbidden by agents-short-jwts"), "{err}");
    dev.ok(&[
        "jwt",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/agents/researcher",
        "--audience",
        "docs",
        "--ttl",
        "10m",
    ]);

    // dry-run, a candidate version made with the README's sed, the diff, rollback
    let read_json = dev.path().join("read.json");
    std::fs::write(
        &read_json,
        r#"{"subject": {"type": "Credence::Identity", "id": "spiffe://example.org/agents/researcher"},
  "action": {"name": "read"}, "resource": {"type": "Document", "id": "q3", "properties": {"team": "payments"}}}"#,
    )
    .unwrap();
    let rj = read_json.to_str().unwrap();
    let out = dev.ok(&["policy", "test", "--request", rj]);
    assert!(
        out.contains("decision: allow") && out.contains("agents-read-their-team-docs"),
        "{out}"
    );
    let v2 = crate::support::run("sed", &["/agents-read-their-team-docs/,/};$/d", &policies]);
    assert!(v2.status.success());
    let v2_text = String::from_utf8(v2.stdout).unwrap();
    assert!(
        !v2_text.contains("agents-read-their-team-docs"),
        "{v2_text}"
    );
    assert!(v2_text.contains("agents-never-delete"), "{v2_text}");
    let v2_file = dev.path().join("v2.cedar");
    std::fs::write(&v2_file, v2_text).unwrap();
    let out = dev.ok(&[
        "policy",
        "push",
        "--schema",
        &schema,
        v2_file.to_str().unwrap(),
        "--namespace",
        "Docs",
    ]);
    assert!(out.contains("version 2"), "{out}");
    let out = dev.ok(&["policy", "diff", "1", "2", "--requests", rj]);
    assert!(
        out.contains("read Document:q3  allow (agents-read-their-team-docs) -> deny (default)"),
        "{out}"
    );
    dev.ok(&["policy", "activate", "2"]);
    assert_eq!(ask("read", "payments")["decision"], false);
    dev.ok(&["policy", "activate", "1"]);
    assert_eq!(ask("read", "payments")["decision"], true);
}
