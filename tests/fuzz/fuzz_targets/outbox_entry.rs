//! An outbox file read back at start (`--state-dir/outbox/*.json`): an entry or `None`,
//! never a panic.
#![no_main]
use chaarfm_shared::server::OutboxEntry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(entry) = OutboxEntry::parse(data) {
        // What parses must serialize again (it is sent to the server as is).
        let again = serde_json::to_vec(&entry).expect("a parsed entry serializes");
        assert_eq!(OutboxEntry::parse(&again).as_ref(), Some(&entry));
    }
});
