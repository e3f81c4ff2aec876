//! A text frame from the server: parsed leniently, never a panic; a worker message read
//! back (the outbox) likewise.
#![no_main]
use chaarfm_shared::server::{parse_server, WorkerMsg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_server(text);
    }
    let _ = serde_json::from_slice::<WorkerMsg>(data);
});
