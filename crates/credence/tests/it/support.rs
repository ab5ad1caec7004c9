use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_credence");

/// A helper process (a test issuer, a test endpoint), killed on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `credence dev` process on a free port, killed on drop.
pub struct Dev {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub url: String,
    pub token: String,
}

impl Dev {
    pub fn start() -> Self {
        Self::start_in(tempfile::tempdir().unwrap())
    }

    pub fn start_in(dir: tempfile::TempDir) -> Self {
        Self::start_with(dir, &[])
    }

    /// Starts with extra `credence dev` flags.
    pub fn start_with(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        Self::start_domain(dir, "example.org", extra)
    }

    /// Starts a server of trust domain `td`, with extra `credence dev` flags.
    pub fn start_domain(dir: tempfile::TempDir, td: &str, extra: &[&str]) -> Self {
        let _ = std::fs::remove_file(dir.path().join("addr"));
        let child = Command::new(BIN)
            .args([
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--agent-listen",
                "127.0.0.1:0",
                "--trust-domain",
                td,
            ])
            .args(extra)
            .arg("--data-dir")
            .arg(dir.path())
            .env_remove("CREDENCE_ADDR")
            .env_remove("CREDENCE_TOKEN")
            .env_remove("CREDENCE_DATA_DIR")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = dir.path().join("addr");
        let t0 = Instant::now();
        while !addr.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "dev server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let url = std::fs::read_to_string(&addr).unwrap().trim().to_owned();
        let token = std::fs::read_to_string(dir.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        Self {
            dir,
            child: Some(child),
            url,
            token,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the CLI against this server (via --data-dir).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(args)
            .env_remove("CREDENCE_ADDR")
            .env_remove("CREDENCE_TOKEN")
            .output()
            .unwrap()
    }

    /// Runs the CLI and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "credence {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Registers a workload identity that this test process matches
    /// (selector: its own uid).
    pub fn register_for_me(&self, spiffe_id: &str) {
        self.register_for_me_with(spiffe_id, &[]);
    }

    /// [`Dev::register_for_me`] with more `identity create` flags.
    pub fn register_for_me_with(&self, spiffe_id: &str, extra: &[&str]) {
        let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
        let selector = format!("unix:uid:{uid}");
        let mut args = vec![
            "identity",
            "create",
            "--spiffe-id",
            spiffe_id,
            "--kind",
            "workload",
            "--owner",
            "o",
            "--selector",
            &selector,
        ];
        args.extend(extra);
        self.ok(&args);
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    pub fn http(&self) -> reqwest::blocking_free::Http {
        reqwest::blocking_free::Http::new(&self.url, &self.token)
    }

    /// Sends SIGTERM and waits; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let t0 = Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "no clean shutdown");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// In CI every interop tool must be there; elsewhere a missing one skips.
fn required(found: bool, what: &str) -> bool {
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} is required in CI (.ci/run installs it)"
        );
        eprintln!("skipping: {what} not installed");
    }
    found
}

/// Is an outside tool available? In CI it must be.
pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    required(found, tool)
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap()
}

/// Splits a PEM bundle into files c0.pem, c1.pem, ... in `dir`.
pub fn split_pem(pem: &str, dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (i, block) in pem
        .split("-----END CERTIFICATE-----")
        .filter(|b| b.contains("BEGIN"))
        .enumerate()
    {
        let p = dir.join(format!("{prefix}{i}.pem"));
        std::fs::write(
            &p,
            format!("{}-----END CERTIFICATE-----\n", block.trim_start()),
        )
        .unwrap();
        out.push(p);
    }
    out
}

/// Minimal async-free HTTP helper over reqwest's async client.
pub mod reqwest {
    pub mod blocking_free {
        use serde_json::Value;

        pub struct Http {
            base: String,
            token: String,
            rt: tokio::runtime::Runtime,
            client: ::reqwest::Client,
        }

        pub struct Resp {
            pub status: u16,
            pub body: Vec<u8>,
            pub content_type: String,
        }

        impl Resp {
            pub fn json(&self) -> Value {
                serde_json::from_slice(&self.body).unwrap_or(Value::Null)
            }
            /// Asserts the JSON error shape and returns the error code.
            pub fn error_code(&self) -> String {
                let v = self.json();
                assert!(
                    v["error"].is_string() && v["message"].is_string(),
                    "not a JSON error body: {}",
                    String::from_utf8_lossy(&self.body)
                );
                v["error"].as_str().unwrap().to_owned()
            }
            pub fn message(&self) -> String {
                self.json()["message"].as_str().unwrap_or("").to_owned()
            }
        }

        impl Http {
            pub fn new(base: &str, token: &str) -> Self {
                Self {
                    base: base.to_owned(),
                    token: token.to_owned(),
                    rt: tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap(),
                    // a fresh connection per request: the server rightly
                    // closes a connection after refusing an oversized body,
                    // and a pooled client could reuse it before noticing
                    client: ::reqwest::Client::builder()
                        .pool_max_idle_per_host(0)
                        .build()
                        .unwrap(),
                }
            }

            pub fn req(
                &self,
                method: &str,
                path: &str,
                auth: Option<&str>,
                content_type: Option<&str>,
                body: Vec<u8>,
            ) -> Resp {
                let m = ::reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                let mut rb = self.client.request(m, format!("{}{path}", self.base));
                if let Some(a) = auth {
                    rb = rb.header("authorization", a);
                }
                if let Some(ct) = content_type {
                    rb = rb.header("content-type", ct);
                }
                let rb = rb.body(body);
                self.rt.block_on(async {
                    let r = rb.send().await.unwrap();
                    let status = r.status().as_u16();
                    let content_type = r
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let body = r.bytes().await.unwrap().to_vec();
                    Resp {
                        status,
                        body,
                        content_type,
                    }
                })
            }

            pub fn get(&self, path: &str) -> Resp {
                let a = format!("Bearer {}", self.token);
                self.req("GET", path, Some(&a), None, vec![])
            }

            pub fn get_public(&self, path: &str) -> Resp {
                self.req("GET", path, None, None, vec![])
            }

            pub fn post(&self, path: &str, body: &Value) -> Resp {
                let a = format!("Bearer {}", self.token);
                self.req(
                    "POST",
                    path,
                    Some(&a),
                    Some("application/json"),
                    serde_json::to_vec(body).unwrap(),
                )
            }

            pub fn post_raw(&self, path: &str, ct: &str, body: Vec<u8>) -> Resp {
                let a = format!("Bearer {}", self.token);
                self.req("POST", path, Some(&a), Some(ct), body)
            }
        }
    }
}

/// Is a Python module importable? In CI it must be.
pub fn have_py(module: &str) -> bool {
    let found = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    required(found, &format!("python module {module}"))
}

/// A Workload API client over the Unix socket at `sock`.
pub async fn workload_client(
    sock: PathBuf,
) -> credence_agent::generated::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient<
    tonic::transport::Channel,
> {
    let channel = tonic::transport::Endpoint::try_from("http://[::]:0")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(sock).await?,
                ))
            }
        }))
        .await
        .unwrap();
    credence_agent::generated::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
        channel,
    )
}

/// A request carrying the Workload API's security header.
pub fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    r
}

/// Waits for a file to appear.
pub fn wait_for(path: &Path, what: &str) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{what} did not appear"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
