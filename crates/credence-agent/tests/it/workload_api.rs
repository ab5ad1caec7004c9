//! The Workload API over a real Unix socket, with the generated client.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use credence_agent::attest::matches;
use credence_agent::generated::workload as pb;
use credence_agent::generated::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use credence_agent::workload_api::{Provider, X509Material, serve};
use credence_core::Selector;
use tokio::sync::watch;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

pub(crate) struct Mem {
    entries: Mutex<Vec<(Vec<Selector>, X509Material)>>,
    tx: watch::Sender<u64>,
}

impl Mem {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(Vec::new()),
            tx: watch::channel(0).0,
        })
    }
    pub(crate) fn set(&self, entries: Vec<(Vec<Selector>, X509Material)>) {
        *self.entries.lock().unwrap() = entries;
        self.tx.send_modify(|v| *v += 1);
    }
}

impl Provider for Mem {
    fn x509_svids(&self, selectors: &[Selector]) -> Vec<X509Material> {
        self.entries
            .lock()
            .unwrap()
            .iter()
            .filter(|(req, _)| matches(req, selectors))
            .map(|(_, m)| m.clone())
            .collect()
    }
    fn x509_bundles(&self, _: &[Selector]) -> HashMap<String, Vec<u8>> {
        HashMap::from([("spiffe://example.org".to_owned(), vec![1, 2, 3])])
    }
    fn trust_domain_id(&self) -> String {
        "spiffe://example.org".to_owned()
    }
    fn jwt_bundles(&self, _: &[Selector]) -> HashMap<String, Vec<u8>> {
        HashMap::from([(
            "spiffe://example.org".to_owned(),
            br#"{"keys":[]}"#.to_vec(),
        )])
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

pub(crate) fn material(id: &str, serial: u8) -> X509Material {
    X509Material {
        spiffe_id: id.to_owned(),
        chain_der: vec![0x30, serial],
        key_pkcs8: vec![0x30, 0x00],
        bundle_der: Arc::new(vec![0x30, 0x01]),
        hint: String::new(),
    }
}

pub(crate) fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

pub(crate) fn my_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

pub(crate) async fn start(
    provider: Arc<Mem>,
) -> (tempfile::TempDir, PathBuf, tokio::sync::oneshot::Sender<()>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let p = path.clone();
    tokio::spawn(async move {
        serve(&p, provider, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    for _ in 0..200 {
        if path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (dir, path, stop)
}

async fn client(path: PathBuf) -> SpiffeWorkloadApiClient<Channel> {
    let channel = Endpoint::try_from("http://[::]:0")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap();
    SpiffeWorkloadApiClient::new(channel)
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    r
}

#[tokio::test]
async fn header_is_required() {
    let (_d, path, _stop) = start(Mem::new()).await;
    let mut c = client(path).await;
    let e = c
        .fetch_x509svid(tonic::Request::new(pb::X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("security header"));
    let mut r = tonic::Request::new(pb::X509BundlesRequest {});
    r.metadata_mut()
        .insert("workload.spiffe.io", "false".parse().unwrap());
    assert_eq!(
        c.fetch_x509_bundles(r).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn unmatched_caller_is_denied() {
    let mem = Mem::new();
    mem.set(vec![(
        vec![sel(&format!("unix:uid:{}", my_uid() + 1))],
        material("spiffe://example.org/other", 1),
    )]);
    let (_d, path, _stop) = start(mem).await;
    let mut c = client(path).await;
    let mut s = c
        .fetch_x509svid(with_header(pb::X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let e = s.message().await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn stream_pushes_rotation_and_revocation() {
    let mem = Mem::new();
    let uid = sel(&format!("unix:uid:{}", my_uid()));
    let exe = std::env::current_exe().unwrap();
    let by_path = sel(&format!("unix:path:{}", exe.display()));
    mem.set(vec![
        (vec![uid.clone()], material("spiffe://example.org/a", 1)),
        (
            vec![uid.clone(), by_path.clone()],
            material("spiffe://example.org/b", 1),
        ),
        (
            vec![uid.clone(), sel("unix:path:/not/this/binary")],
            material("spiffe://example.org/c", 1),
        ),
    ]);
    let (_d, path, _stop) = start(mem.clone()).await;
    let mut c = client(path).await;
    let mut s = c
        .fetch_x509svid(with_header(pb::X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    let ids: Vec<&str> = first.svids.iter().map(|v| v.spiffe_id.as_str()).collect();
    assert_eq!(
        ids,
        ["spiffe://example.org/a", "spiffe://example.org/b"],
        "all matching identities, no others"
    );
    assert_eq!(first.svids[0].x509_svid, vec![0x30, 1]);

    // rotation reaches the open stream
    let t = std::time::Instant::now();
    mem.set(vec![(
        vec![uid.clone()],
        material("spiffe://example.org/a", 2),
    )]);
    let second = tokio::time::timeout(Duration::from_secs(2), s.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(second.svids.len(), 1);
    assert_eq!(second.svids[0].x509_svid, vec![0x30, 2]);

    // bundles too
    let mut b = c
        .fetch_x509_bundles(with_header(pb::X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let bundles = b.message().await.unwrap().unwrap();
    assert_eq!(bundles.bundles["spiffe://example.org"], vec![1, 2, 3]);
    let mut j = c
        .fetch_jwt_bundles(with_header(pb::JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(
        j.message()
            .await
            .unwrap()
            .unwrap()
            .bundles
            .contains_key("spiffe://example.org")
    );

    // revocation: the identity is gone, the stream says so
    mem.set(vec![]);
    let e = tokio::time::timeout(Duration::from_secs(2), s.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn digest_selector_matches_the_running_binary() {
    let mem = Mem::new();
    let exe = std::env::current_exe().unwrap();
    let digest = hex::encode(credence_ca::sha256(&std::fs::read(&exe).unwrap()));
    mem.set(vec![(
        vec![sel(&format!("unix:sha256:{digest}"))],
        material("spiffe://example.org/d", 1),
    )]);
    let (_d, path, _stop) = start(mem).await;
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o666);
    let mut c = client(path).await;
    let mut s = c
        .fetch_x509svid(with_header(pb::X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        s.message().await.unwrap().unwrap().svids[0].spiffe_id,
        "spiffe://example.org/d"
    );
}

#[tokio::test]
async fn bad_tokens_oversized_requests_and_rude_peers_are_survived() {
    use base64::Engine;
    use tokio::io::AsyncWriteExt;
    let mem = Mem::new();
    mem.set(vec![(
        vec![sel(&format!("unix:uid:{}", my_uid()))],
        material("spiffe://example.org/me", 1),
    )]);
    let (_d, path, _stop) = start(mem).await;
    let mut c = client(path.clone()).await;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let forged = [
        "not a jwt".to_owned(),
        format!(
            "{}.{}.",
            b64(r#"{"alg":"none","kid":"k"}"#),
            b64(r#"{"sub":"spiffe://example.org/me","aud":"a","exp":9999999999}"#)
        ),
        format!(
            "{}.{}.{}",
            b64(r#"{"alg":"HS256","kid":"k"}"#),
            b64(r#"{"sub":"spiffe://example.org/me","aud":"a","exp":9999999999}"#),
            b64("sig")
        ),
        format!(
            "{}.{}.{}",
            b64(r#"{"alg":"ES256","kid":"k"}"#),
            b64(r#"{"sub":"spiffe://other.org/x","aud":"a","exp":9999999999}"#),
            b64("sig")
        ),
        "a".repeat(100_000),
    ];
    for t in forged {
        let e = c
            .validate_jwtsvid(with_header(pb::ValidateJwtsvidRequest {
                audience: "a".into(),
                svid: t,
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    // larger than the server's message limit (4 MiB)
    let e = c
        .validate_jwtsvid(with_header(pb::ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: "a".repeat(5 << 20),
        }))
        .await
        .unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    // JWT-SVIDs need an audience
    let e = c
        .fetch_jwtsvid(with_header(pb::JwtsvidRequest {
            audience: vec![],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // a client that leaves mid-stream, and one that sends garbage
    for _ in 0..20 {
        let mut c2 = client(path.clone()).await;
        let s = c2
            .fetch_x509svid(with_header(pb::X509svidRequest {}))
            .await
            .unwrap();
        drop(s);
        drop(c2);
        let mut raw = tokio::net::UnixStream::connect(&path).await.unwrap();
        let _ = raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x05\x01\x05\x00\x00\x00\x01\xff\xff\xff\xff\xff").await;
        drop(raw);
    }
    // still serving
    let mut s = c
        .fetch_x509svid(with_header(pb::X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let m = s.message().await.unwrap().unwrap();
    assert_eq!(m.svids[0].spiffe_id, "spiffe://example.org/me");
}
