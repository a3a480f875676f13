//! Arbitrary bytes as a checkpoint's `state.json` (`trainer::checkpoint::state`). A panic,
//! or a parsed state that does not round-trip, is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = trainer::checkpoint::state::state_json_harness(data);
});
