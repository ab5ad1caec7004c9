//! Delegation end to end, driven by an independent client (Python
//! `requests`; `pyjwt` verifies tokens from the JWKS alone): an
//! administrator grants an agent a mandate, the agent hands a narrower
//! part to a sub-agent, which hands on again; the last exchanges its grant
//! token for an on-behalf-of token with the whole `act` chain; a PDP
//! question naming the grant is allowed; revoking the second link stops
//! everything below it within a second while the first keeps working.

use std::process::Command;

use crate::support::{Dev, have_py};

const PY_DELEGATION: &str = r#"
import json, sys, time
import jwt, requests

base, admin, *svids = sys.argv[1:]
# per agent: a JWT-SVID for this server's API and one for its token endpoint
api = {f"a{i}": svids[2 * i] for i in range(3)}
tok = {f"a{i}": svids[2 * i + 1] for i in range(3)}
TD = "spiffe://example.org/"
TX = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"
meta = requests.get(base + "/.well-known/oauth-authorization-server").json()
jwks = jwt.PyJWKClient(meta["jwks_uri"])

def grant(bearer, body):
    r = requests.post(base + "/v1/delegations", json=body,
                      headers={"Authorization": "Bearer " + bearer})
    return r.status_code, r.json()

def exchange(agent, grant_token, **extra):
    r = requests.post(meta["token_endpoint"], data=dict(
        grant_type=TX, subject_token=grant_token, subject_token_type=JWT,
        actor_token=tok[agent], actor_token_type=JWT, **extra))
    return r.status_code, r.json()

def introspect(agent, token):
    r = requests.post(meta["introspection_endpoint"], data={
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": tok[agent], "token": token})
    return r.json()

def pdp(grant_id):
    r = requests.post(base + "/access/v1/evaluation", headers={"Authorization": "Bearer " + admin},
                      json={"subject": {"type": "Credence::Identity", "id": TD + "a2"},
                            "action": {"name": "read"}, "resource": {"type": "Doc", "id": "d1"},
                            "context": {"delegation": {"__entity": {"type": "Credence::Delegation",
                                                                    "id": grant_id}}}})
    return r.json()["decision"]

s, g0 = grant(admin, {"grantee": TD + "a0", "scopes": ["docs:read", "docs:write"],
                      "audiences": ["https://docs.example"], "max_depth": 2})
print("root", s, g0["depth"], g0["principal"], g0["status"])
s, g1 = grant(api["a0"], {"grantee": TD + "a1", "parent": g0["id"], "scopes": ["docs:read"],
                          "max_depth": 1})
print("child", s, g1["depth"], g1["scopes"], g1["audiences"])
s, e = grant(api["a1"], {"grantee": TD + "a2", "parent": g1["id"], "scopes": ["docs:write"]})
print("widen", s, e["error"], "scope docs:write is not in the parent grant" in e["message"])
s, e = grant(api["a2"], {"grantee": TD + "a2", "parent": g1["id"]})
print("not-holder", s, e["error"])
s, g2 = grant(api["a1"], {"grantee": TD + "a2", "parent": g1["id"]})
print("grandchild", s, g2["depth"], g2["scopes"])

# the sub-sub-agent acts for the administrator, with the chain of actors
s, t = exchange("a2", g2["grant_token"])
token = t["access_token"]
key = jwks.get_signing_key_from_jwt(token)
c = jwt.decode(token, key.key, algorithms=["ES256"], audience="https://docs.example", issuer=base)
print("obo", s, jwt.get_unverified_header(token)["typ"], c["sub"], c["scope"],
      json.dumps(c["act"], sort_keys=True), c["delegation"]["depth"], c["exp"] - c["iat"] <= 600)
s, e = exchange("a1", g2["grant_token"])
print("wrong-actor", s, e["error"])
s, e = exchange("a2", g2["grant_token"], scope="docs:write")
print("wide-scope", s, e["error"])
s, e = exchange("a2", g2["grant_token"], audience="https://mail.example")
print("wide-aud", s, e["error"])
s, e = exchange("a2", "not.a.token")
print("bad-grant-token", s, e["error"])
i = introspect("a2", token)
print("introspect", i["active"], i["sub"], i["act"]["sub"] == TD + "a2")
print("pdp-before", pdp(g2["id"]), pdp("dlg_" + "0" * 32))

# a0 takes back what it handed on: g1 and g2 stop, g0 keeps working
t0 = time.time()
r = requests.post(base + "/v1/delegations/" + g1["id"] + "/revoke",
                  headers={"Authorization": "Bearer " + api["a0"]}, json={"reason": "task done"})
revoked = r.json()
stopped = (not introspect("a2", token)["active"] and not pdp(g2["id"])
           and exchange("a2", g2["grant_token"])[0] == 400)
print("revoke", r.status_code, sorted(revoked["revoked"]) == sorted([g1["id"], g2["id"]]),
      revoked["credentials_revoked"], stopped, time.time() - t0 < 1.0)
s, _ = exchange("a0", g0["grant_token"])
print("root-still", s)
r = requests.get(base + "/v1/delegations/" + g2["id"], headers={"Authorization": "Bearer " + admin})
print("show", r.json()["status"], r.json()["revocation_reason"])
"#;

const SCHEMA: &str = "namespace Docs {
  entity Doc;
  action read appliesTo {
    principal: [Credence::Identity], resource: [Doc],
    context: { delegation: Credence::Delegation }
  };
}";

const POLICY: &str = "@id(\"delegated-read\")
permit (principal, action == Docs::Action::\"read\", resource)
when { context.delegation.active && context.delegation.scopes.contains(\"docs:read\")
       && context.delegation.grantee == principal.spiffe_id };";

#[test]
fn a_delegation_chain_narrows_acts_and_is_revoked_below_a_link() {
    if !have_py("jwt") || !have_py("requests") || !have_py("cryptography") {
        return;
    }
    let dev = Dev::start();
    for i in 0..3 {
        let id = format!("spiffe://example.org/a{i}");
        dev.ok(&[
            "identity",
            "create",
            "--spiffe-id",
            &id,
            "--kind",
            "agent",
            "--owner",
            "team-a",
            "--scope",
            "docs:read",
            "--scope",
            "docs:write",
        ]);
    }
    let dir = tempfile::tempdir().unwrap();
    let (schema, policies) = (dir.path().join("s.cedarschema"), dir.path().join("p.cedar"));
    std::fs::write(&schema, SCHEMA).unwrap();
    std::fs::write(&policies, POLICY).unwrap();
    dev.ok(&[
        "policy",
        "push",
        "--schema",
        schema.to_str().unwrap(),
        "--namespace",
        "Docs",
        "--activate",
        policies.to_str().unwrap(),
    ]);
    let token_url = format!("{}/oauth2/token", dev.url);
    let mut args = vec![
        "-c".to_owned(),
        PY_DELEGATION.to_owned(),
        dev.url.clone(),
        dev.token.clone(),
    ];
    for i in 0..3 {
        let id = format!("spiffe://example.org/a{i}");
        for aud in [dev.url.as_str(), token_url.as_str()] {
            args.push(
                dev.ok(&["jwt", "mint", "--spiffe-id", &id, "--audience", aud])
                    .trim()
                    .to_owned(),
            );
        }
    }
    let o = Command::new("python3").args(&args).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let act = r#"{"act": {"act": {"sub": "spiffe://example.org/a0"}, "sub": "spiffe://example.org/a1"}, "sub": "spiffe://example.org/a2"}"#;
    for want in [
        "root 201 1 admin:root active".to_owned(),
        "child 201 2 ['docs:read'] ['https://docs.example']".to_owned(),
        "widen 403 delegation_exceeds_parent True".to_owned(),
        "not-holder 403 forbidden".to_owned(),
        "grandchild 201 3 ['docs:read']".to_owned(),
        format!("obo 200 at+jwt admin:root docs:read {act} 3 True"),
        "wrong-actor 400 invalid_grant".to_owned(),
        "wide-scope 400 invalid_scope".to_owned(),
        "wide-aud 400 invalid_target".to_owned(),
        "bad-grant-token 400 invalid_grant".to_owned(),
        "introspect True admin:root True".to_owned(),
        "pdp-before True False".to_owned(),
        "revoke 200 True 1 True True".to_owned(),
        "root-still 200".to_owned(),
        "show revoked task done".to_owned(),
    ] {
        assert!(
            out.lines().any(|l| l == want),
            "missing {want:?} in:\n{out}"
        );
    }
    let found = dev.ok(&["audit", "search", "--action", "delegation.revoke"]);
    assert!(found.contains("success"), "{found}");
}
