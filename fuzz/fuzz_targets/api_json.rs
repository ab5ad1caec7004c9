//! JSON bodies of the admin API.
#![no_main]
use libfuzzer_sys::fuzz_target;

use credence_server::service::{IdentityUpdate, NewIdentity};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<NewIdentity>(data);
    let _ = serde_json::from_slice::<IdentityUpdate>(data);
    let _ = serde_json::from_slice::<credence_core::Identity>(data);
});
