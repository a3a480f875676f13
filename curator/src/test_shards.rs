//! Small tar shards for the unit tests.
use std::path::Path;

/// Writes a tar at `path` holding `members` (file name, bytes) in the order given.
pub(crate) fn write_tar<'a>(path: &Path, members: impl IntoIterator<Item = (String, &'a [u8])>) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, data).unwrap();
    }
    builder.finish().unwrap();
}
