//! The `spiffe` crate (rust-spiffe), a Workload API client we did not
//! write, against `credence dev`: X509-SVID, bundles, JWT-SVID fetch and
//! validation, and a rotation observed on its stream.

use std::time::Duration;

use futures::StreamExt;
use spiffe::WorkloadApiClient;

use crate::support::Dev;

fn leaf_serial(ctx: &spiffe::X509Context) -> String {
    let svid = ctx.default_svid().expect("an SVID");
    let leaf = svid.cert_chain()[0].as_bytes();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
    hex::encode(cert.raw_serial())
}

#[test]
fn rust_spiffe_client_fetches_validates_and_sees_rotation() {
    let dev = Dev::start();
    dev.register_for_me("spiffe://example.org/rust-wl");
    let endpoint = format!("unix://{}", dev.path().join("agent.sock").display());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = WorkloadApiClient::connect_to(&endpoint).await.unwrap();
        // the in-process agent may still be minting right after registration
        let mut svid = client.fetch_x509_svid().await;
        for _ in 0..50 {
            if svid.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            svid = client.fetch_x509_svid().await;
        }
        let svid = svid.unwrap();
        assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/rust-wl");
        let td = spiffe::TrustDomain::new("example.org").unwrap();
        let bundles = client.fetch_x509_bundles().await.unwrap();
        assert!(bundles.get(&td).is_some());
        let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
        assert!(jwt_bundles.get(&td).is_some());

        let jwt = client.fetch_jwt_svid(["svc-b"], None).await.unwrap();
        assert_eq!(jwt.spiffe_id().to_string(), "spiffe://example.org/rust-wl");
        let checked = client
            .validate_jwt_token("svc-b", jwt.token())
            .await
            .unwrap();
        assert_eq!(
            checked.spiffe_id().to_string(),
            "spiffe://example.org/rust-wl"
        );
        assert!(
            client
                .validate_jwt_token("someone-else", jwt.token())
                .await
                .is_err()
        );

        // a rotation (here: the current SVID revoked) arrives on the stream
        let mut stream = client.stream_x509_contexts().await.unwrap();
        let first = stream.next().await.unwrap().unwrap();
        let serial = leaf_serial(&first);
        dev.ok(&["revoke", "--serial", &serial]);
        let next = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_ne!(leaf_serial(&next), serial);
    });
}
