//! The Workload API of `credence dev` (DIR/agent.sock): a registered
//! workload gets its SVID, and a revocation reaches its open stream.

use std::time::{Duration, Instant};

use credence_agent::generated::workload as pb;

use crate::support::{Dev, with_header, workload_client};

#[test]
fn dev_serves_the_workload_api_and_pushes_revocation() {
    let dev = Dev::start();
    dev.register_for_me("spiffe://example.org/wl");
    let sock = dev.path().join("agent.sock");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = workload_client(sock).await;
        let mut s = c
            .fetch_x509svid(with_header(pb::X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(first.svids.len(), 1);
        assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/wl");
        let leaf = &first.svids[0].x509_svid;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
        let serial = hex::encode(cert.raw_serial());
        assert!(!first.svids[0].x509_svid_key.is_empty());
        assert!(!first.svids[0].bundle.is_empty());

        // revoke the certificate: the stream gets a fresh SVID, quickly
        let t = Instant::now();
        dev.ok(&["revoke", "--serial", &serial, "--reason", "key_compromise"]);
        let returned = t.elapsed();
        let next = tokio::time::timeout(Duration::from_secs(5), s.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let pushed = t.elapsed() - returned.min(t.elapsed());
        let (_, cert2) = x509_parser::parse_x509_certificate(&next.svids[0].x509_svid).unwrap();
        assert_ne!(
            hex::encode(cert2.raw_serial()),
            serial,
            "a new SVID replaces the revoked one"
        );
        assert!(
            pushed < Duration::from_secs(1),
            "revocation reached the stream {pushed:?} after the revoke returned"
        );

        // disabling the identity ends the workload's entitlement
        dev.ok(&["identity", "disable", "spiffe://example.org/wl"]);
        let e = tokio::time::timeout(Duration::from_secs(5), s.message())
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
    });
}
