//! The admin API client used by the CLI subcommands.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where and how to reach the server.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// A one-line failure reason for stderr.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

impl CliError {
    pub fn new(m: impl Into<String>) -> Self {
        Self(m.into())
    }
}

impl Client {
    /// Resolves the address and token from flags, environment, or a dev data dir.
    pub fn new(
        addr: Option<String>,
        token: Option<String>,
        data_dir: Option<&Path>,
        ca_file: Option<&PathBuf>,
    ) -> Result<Self, CliError> {
        let read = |p: PathBuf| -> Result<String, CliError> {
            std::fs::read_to_string(&p)
                .map(|s| s.trim().to_owned())
                .map_err(|e| CliError(format!("cannot read {}: {e}", p.display())))
        };
        let addr = match (addr, data_dir) {
            (Some(a), _) => a,
            (None, Some(d)) => read(d.join("addr"))?,
            (None, None) => {
                return Err(CliError::new(
                    "no server address: give --addr, set CREDENCE_ADDR, or --data-dir of a dev server",
                ));
            }
        };
        let token = match (token, data_dir) {
            (Some(t), _) => Some(t),
            (None, Some(d)) => Some(read(d.join("admin.token"))?),
            (None, None) => None,
        };
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("credence-cli/", env!("CARGO_PKG_VERSION")))
            .timeout(std::time::Duration::from_secs(30));
        if let Some(ca) = ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| CliError(format!("cannot read {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| CliError(format!("{}: {e}", ca.display())))?;
            b = b.tls_certs_only(certs);
        }
        let http = b
            .build()
            .map_err(|e| CliError(format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: addr.trim_end_matches('/').to_owned(),
            token,
        })
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, CliError> {
        let rb = match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        };
        let resp = rb
            .send()
            .await
            .map_err(|e| CliError(format!("cannot reach {}: {}", self.base, root_cause(&e))))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let parsed = serde_json::from_str::<Value>(&body).ok();
        let msg = parsed
            .as_ref()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or(body);
        // documents refused with every problem listed (policy sets, entities)
        let details: String = parsed
            .as_ref()
            .and_then(|v| v.get("details").and_then(Value::as_array))
            .map(|d| {
                d.iter()
                    .filter_map(Value::as_str)
                    .map(|s| format!("\n  - {s}"))
                    .collect()
            })
            .unwrap_or_default();
        Err(CliError(format!(
            "{} ({}){details}",
            msg.trim(),
            status.as_u16()
        )))
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        let r = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        json_of(r).await
    }

    pub async fn get_text(&self, path: &str) -> Result<String, CliError> {
        let r = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        r.text()
            .await
            .map_err(|e| CliError(format!("reading response: {e}")))
    }

    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, CliError> {
        let r = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        r.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| CliError(format!("reading response: {e}")))
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        let r = self
            .send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await?;
        json_of(r).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        let r = self
            .send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await?;
        json_of(r).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        let r = self
            .send(self.http.patch(format!("{}{path}", self.base)).json(body))
            .await?;
        json_of(r).await
    }

    pub async fn delete(&self, path: &str) -> Result<(), CliError> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
            .map(|_| ())
    }
}

async fn json_of(r: reqwest::Response) -> Result<Value, CliError> {
    if r.status() == reqwest::StatusCode::NO_CONTENT {
        return Ok(Value::Null);
    }
    r.json()
        .await
        .map_err(|e| CliError(format!("invalid response: {e}")))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Percent-encodes a path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
