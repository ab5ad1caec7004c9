//! The OAuth 2.0 token endpoint driven by an independent client (Python
//! `requests` for the HTTP, `pyjwt` to verify the tokens from the JWKS):
//! client credentials with a JWT-SVID as `private_key_jwt` assertion,
//! token exchange narrowing scope and audience, introspection, revocation,
//! and the errors RFC 6749 names.

use std::process::Command;

use crate::support::{BIN, Dev, have, have_py, wait_for};

const PY_OAUTH: &str = r#"
import base64, json, sys, time
import jwt, requests

base, assertion, other_assertion = sys.argv[1:4]
meta = requests.get(base + "/.well-known/oauth-authorization-server").json()
tok_url = meta["token_endpoint"]
print("meta", meta["issuer"] == base, "client_credentials" in meta["grant_types_supported"])
jwks = jwt.PyJWKClient(meta["jwks_uri"])
JB = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
auth = {"client_assertion_type": JB, "client_assertion": assertion}

def post(url, **data):
    r = requests.post(url, data=dict(auth, **data))
    return r.status_code, (r.json() if r.content else {}), r.headers

def check(token, aud):
    key = jwks.get_signing_key_from_jwt(token)
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    return jwt.decode(token, key.key, algorithms=["ES256"], audience=aud, issuer=base)

s, b, h = post(tok_url, grant_type="client_credentials", scope="docs:read docs:write",
               resource="https://api.example")
c = check(b["access_token"], "https://api.example")
print("cc", s, b["token_type"], b["expires_in"], b["scope"], h.get("Cache-Control"),
      c["sub"], c["client_id"], c["scope"], c["exp"] - c["iat"])

# token exchange: narrower scope, another audience
s, b2, _ = post(tok_url, grant_type="urn:ietf:params:oauth:grant-type:token-exchange",
                subject_token=b["access_token"],
                subject_token_type="urn:ietf:params:oauth:token-type:access_token",
                scope="docs:read", audience="https://reports.example")
c2 = check(b2["access_token"], "https://reports.example")
print("exchange", s, b2["issued_token_type"], c2["scope"], c2["sub"])

# wider than the subject token: refused
s, e, _ = post(tok_url, grant_type="urn:ietf:params:oauth:grant-type:token-exchange",
               subject_token=b2["access_token"],
               subject_token_type="urn:ietf:params:oauth:token-type:access_token",
               scope="docs:write")
print("widen", s, e["error"])

# another identity's token is not the client's to exchange
s, e, _ = post(tok_url, grant_type="urn:ietf:params:oauth:grant-type:token-exchange",
               subject_token=other_assertion,
               subject_token_type="urn:ietf:params:oauth:token-type:jwt")
print("foreign", s, e["error"])

intro = meta["introspection_endpoint"]
s, i, _ = post(intro, token=b["access_token"])
print("introspect", s, i["active"], i.get("scope"), i.get("sub"))
s, _, _ = post(meta["revocation_endpoint"], token=b["access_token"])
s2, i, _ = post(intro, token=b["access_token"])
print("revoked", s, i["active"])
# a revoked subject token cannot be exchanged
s, e, _ = post(tok_url, grant_type="urn:ietf:params:oauth:grant-type:token-exchange",
               subject_token=b["access_token"],
               subject_token_type="urn:ietf:params:oauth:token-type:access_token")
print("revoked-exchange", s, e["error"])

# errors
r = requests.post(tok_url, data={"grant_type": "client_credentials"})
print("noauth", r.status_code, r.json()["error"], "WWW-Authenticate" in r.headers)
s, e, _ = post(tok_url, grant_type="password")
print("grant", s, e["error"])
s, e, _ = post(tok_url, grant_type="client_credentials", scope="admin:all")
print("scope", s, e["error"])
r = requests.post(tok_url, json={"grant_type": "client_credentials"})
print("json", r.status_code, r.json()["error"])
# an HS256 assertion "signed" with the server's public key, and alg none
pub = json.dumps(requests.get(meta["jwks_uri"]).json()["keys"][0]).encode()
claims = {"sub": "spiffe://example.org/client", "aud": tok_url, "exp": int(time.time()) + 60}
import hashlib, hmac
def b64(d):
    return base64.urlsafe_b64encode(d).rstrip(b"=").decode()
kid = requests.get(meta["jwks_uri"]).json()["keys"][0]["kid"]
signing = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode()) + "." + b64(json.dumps(claims).encode())
hs = signing + "." + b64(hmac.new(pub, signing.encode(), hashlib.sha256).digest())
r = requests.post(tok_url, data={"grant_type": "client_credentials", "client_assertion_type": JB, "client_assertion": hs})
print("hs256", r.status_code, r.json()["error"])
none = jwt.encode(claims, None, algorithm="none")
r = requests.post(tok_url, data={"grant_type": "client_credentials", "client_assertion_type": JB, "client_assertion": none})
print("none", r.status_code, r.json()["error"])
"#;

#[test]
fn an_independent_client_gets_exchanges_introspects_and_revokes_tokens() {
    if !have_py("jwt") || !have_py("requests") || !have_py("cryptography") {
        return;
    }
    let dev = Dev::start();
    for (id, scopes) in [
        (
            "spiffe://example.org/client",
            &["docs:read", "docs:write"][..],
        ),
        ("spiffe://example.org/other", &["docs:read"][..]),
    ] {
        let mut args = vec![
            "identity",
            "create",
            "--spiffe-id",
            id,
            "--kind",
            "service",
            "--owner",
            "o",
        ];
        for s in scopes {
            args.extend(["--scope", s]);
        }
        dev.ok(&args);
    }
    let token_url = format!("{}/oauth2/token", dev.url);
    let mint = |id: &str| {
        dev.ok(&["jwt", "mint", "--spiffe-id", id, "--audience", &token_url])
            .trim()
            .to_owned()
    };
    let o = Command::new("python3")
        .args(["-c", PY_OAUTH, &dev.url])
        .arg(mint("spiffe://example.org/client"))
        .arg(mint("spiffe://example.org/other"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for want in [
        "meta True True",
        "cc 200 Bearer 600 docs:read docs:write no-store spiffe://example.org/client spiffe://example.org/client docs:read docs:write 600",
        "exchange 200 urn:ietf:params:oauth:token-type:access_token docs:read spiffe://example.org/client",
        "widen 400 invalid_scope",
        "foreign 400 invalid_grant",
        "introspect 200 True docs:read docs:write spiffe://example.org/client",
        "revoked 200 False",
        "revoked-exchange 400 invalid_grant",
        "noauth 401 invalid_client True",
        "grant 400 unsupported_grant_type",
        "scope 400 invalid_scope",
        "json 400 invalid_request",
        "hs256 401 invalid_client",
        "none 401 invalid_client",
    ] {
        assert!(
            out.lines().any(|l| l == want),
            "missing {want:?} in:\n{out}"
        );
    }
    // issuance and refusals are in the audit log
    let found = dev.ok(&["audit", "search", "--action", "oauth.token"]);
    assert!(
        found.contains("success") && found.contains("failure"),
        "{found}"
    );
}

const PY_MTLS_TOKEN: &str = r#"
import base64, hashlib, http.client, json, ssl, sys, urllib.parse
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

d, addr, base = sys.argv[1:4]
ctx = ssl.create_default_context(cafile=d + "/bundle.pem")
ctx.check_hostname = False  # SPIFFE servers are named by URI SAN, not DNS
ctx.load_cert_chain(d + "/svid/svid.pem", d + "/svid/svid.key")
host, port = addr.strip().rsplit(":", 1)
c = http.client.HTTPSConnection(host, int(port), context=ctx)
c.request("POST", "/oauth2/token",
          body=urllib.parse.urlencode({"grant_type": "client_credentials", "scope": "docs:read",
                                       "client_id": "spiffe://example.org/client"}),
          headers={"Content-Type": "application/x-www-form-urlencoded"})
r = c.getresponse()
b = json.loads(r.read())
if r.status != 200:
    print("mtls", r.status, b.get("error"), b.get("error_description"))
    sys.exit(0)
leaf = x509.load_pem_x509_certificates(open(d + "/svid/svid.pem", "rb").read())[0]
der = leaf.public_bytes(serialization.Encoding.DER)
want = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
jwks = jwt.PyJWKClient(base + "/.well-known/jwks.json")
claims = jwt.decode(b["access_token"], jwks.get_signing_key_from_jwt(b["access_token"]).key,
                    algorithms=["ES256"], audience=base, issuer=base)
print("mtls", r.status, claims["sub"], claims["scope"], claims["cnf"]["x5t#S256"] == want)
"#;

#[test]
fn mutual_tls_clients_get_certificate_bound_tokens() {
    if !have_py("jwt") || !have_py("cryptography") {
        return;
    }
    let dev = Dev::start();
    dev.ok(&[
        "identity",
        "create",
        "--spiffe-id",
        "spiffe://example.org/client",
        "--kind",
        "service",
        "--owner",
        "o",
        "--scope",
        "docs:read",
    ]);
    let svid = dev.path().join("svid");
    dev.ok(&[
        "x509",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/client",
        "--out",
        svid.to_str().unwrap(),
    ]);
    let addr_file = dev.path().join("agent-addr");
    wait_for(&addr_file, "agent-addr");
    let agent_addr = std::fs::read_to_string(addr_file).unwrap();
    let run = || {
        let o = Command::new("python3")
            .args([
                "-c",
                PY_MTLS_TOKEN,
                dev.path().to_str().unwrap(),
                &agent_addr,
                &dev.url,
            ])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    };
    let out = run();
    assert_eq!(
        out.trim(),
        "mtls 200 spiffe://example.org/client docs:read True"
    );
    // a revoked client certificate authenticates nobody
    let serial = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(svid.join("svid.pem"))
        .output()
        .unwrap();
    let serial = String::from_utf8_lossy(&serial.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_lowercase();
    dev.ok(&["revoke", "--serial", &serial]);
    let out = run();
    assert!(out.starts_with("mtls 401 invalid_client"), "{out}");
    assert!(out.contains("revoked"), "{out}");
}

/// The README's OAuth example, run as written (bash, the CLI, curl)
/// against a dev server.
#[test]
fn readme_oauth_example_runs() {
    if !have("curl") {
        return;
    }
    let readme = include_str!("../../../../README.md");
    let section = readme
        .split("### OAuth 2.0 tokens")
        .nth(1)
        .expect("README has the OAuth section");
    let script = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the section has a sh block");
    let dev = Dev::start();
    let script = script.replace("http://127.0.0.1:8080", &dev.url);
    let bin_dir = std::path::Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("PATH", path)
        .env("CREDENCE_DATA_DIR", dev.path())
        .env_remove("CREDENCE_ADDR")
        .env_remove("CREDENCE_TOKEN")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // the last line is curl's answer (the CLI printed the identity first)
    let v: serde_json::Value = serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    assert_eq!(v["token_type"], "Bearer", "{v}");
    assert_eq!(v["scope"], "docs:read", "{v}");
    assert_eq!(v["expires_in"], 600, "{v}");
}
