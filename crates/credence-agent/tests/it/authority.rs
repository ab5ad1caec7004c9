//! A grpc C-core client (Python `grpcio`, as used by py-spiffe) reaches the
//! Workload API although it sends the percent-encoded socket path as
//! `:authority`.

use std::process::Command;

use credence_agent::generated::workload as pb;
use prost::Message;

use crate::workload_api::{Mem, material, my_uid, sel, start};

/// Two calls on one channel: the first sends `:authority` as a literal, the
/// second refers to it in the HPACK dynamic table.
const SCRIPT: &str = r#"
import sys, grpc
ch = grpc.insecure_channel("unix:" + sys.argv[1])
call = ch.unary_stream("/SpiffeWorkloadAPI/FetchX509Bundles")
for _ in range(2):
    it = call(b"", metadata=(("workload.spiffe.io", "true"),), timeout=10)
    print(next(it).hex())
    it.cancel()
"#;

fn have_grpcio() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcio_client_is_served() {
    if !have_grpcio() {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with grpcio is required in CI"
        );
        eprintln!("skipping: python3 with grpcio not installed");
        return;
    }
    let mem = Mem::new();
    mem.set(vec![(
        vec![sel(&format!("unix:uid:{}", my_uid()))],
        material("spiffe://example.org/py", 1),
    )]);
    let (_d, path, _stop) = start(mem).await;
    assert!(
        path.to_str().unwrap().contains('/'),
        "the socket path must need percent-encoding"
    );
    let o = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", SCRIPT, path.to_str().unwrap()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "grpcio call failed: {stderr}");
    let lines: Vec<&str> = std::str::from_utf8(&o.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in lines {
        let r = pb::X509BundlesResponse::decode(hex::decode(line).unwrap().as_slice()).unwrap();
        assert_eq!(r.bundles["spiffe://example.org"], vec![1, 2, 3]);
    }
}
