//! Arbitrary bytes as what a rendezvous peer sends: a JSON message line, a hello, a
//! challenge, a secret (`protocol::fuzz_harness`). A panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = protocol::fuzz_harness::rendezvous_message_harness(data);
});
