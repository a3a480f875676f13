//! Arbitrary bytes as a webdataset shard: tar reader, sample grouping, resume offsets,
//! caption/label parsing and image decode (`dataloader::fuzz_harness`). A panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dataloader::fuzz_harness::tar_reader_harness(data);
});
