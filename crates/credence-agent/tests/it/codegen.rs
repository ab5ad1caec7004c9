//! The checked-in Workload API code must be exactly what the vendored proto
//! generates (protox + tonic-prost-build: no protoc needed).

use std::path::Path;

fn generate() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fds = protox::compile(["spiffe/workload/workload.proto"], [root.join("proto")]).unwrap();
    let out = tempfile::tempdir().unwrap();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(out.path())
        .compile_fds(fds)
        .unwrap();
    // the proto has no package, so prost names the file `_.rs`
    std::fs::read_to_string(out.path().join("_.rs")).unwrap()
}

#[test]
fn codegen() {
    let checked_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/generated/workload.rs");
    let fresh = generate();
    if std::env::var_os("CREDENCE_REGENERATE").is_some() {
        std::fs::write(&checked_in, &fresh).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&checked_in).unwrap();
    assert!(
        current == fresh,
        "src/generated/workload.rs is stale: run `CREDENCE_REGENERATE=1 cargo test -p credence-agent --test it codegen`"
    );
}
