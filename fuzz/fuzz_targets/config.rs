//! The server config file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = credence_server::config::ServerConfig::parse(s);
        let _ = credence_server::config::parse_duration("x", s);
    }
});
