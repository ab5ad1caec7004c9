//! Identifiers parsed at the boundary: SPIFFE IDs, trust domains, selectors,
//! labels, serials, kinds and revocation reasons.
#![no_main]
use libfuzzer_sys::fuzz_target;

use credence_core::{IdentityId, IdentityKind, Labels, RevocationReason, Selector, Serial, SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(id) = SpiffeId::parse(s) {
        // a parsed ID round-trips and its parts re-parse
        assert_eq!(id.as_str(), s);
        assert!(TrustDomain::new(id.trust_domain_str()).is_ok());
        assert!(SpiffeId::from_parts(&id.trust_domain(), id.path()).is_ok());
    }
    let _ = s.parse::<TrustDomain>();
    let _ = Selector::parse(s);
    let _ = Labels::parse_pair(s);
    if let Ok(serial) = Serial::parse_hex(s) {
        assert_eq!(Serial::parse_hex(&serial.to_hex()).ok(), Some(serial));
    }
    let _ = IdentityId::parse(s);
    let _ = s.parse::<IdentityKind>();
    let _ = s.parse::<RevocationReason>();
});
