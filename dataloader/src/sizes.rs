//! Dataset size: OpenCLIP's `sizes.json` (`{"00000.tar": n, ...}` next to the shards), or a
//! scan of the tar headers when a shard is not listed there.
use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::error::DataError;

/// File name of the per-folder sample counts.
pub const SIZES_FILE: &str = "sizes.json";

/// Read `folder/sizes.json`: shard file name → sample count. `Ok(None)` if there is none.
pub fn read_sizes(folder: &Path) -> Result<Option<BTreeMap<String, u64>>, DataError> {
    let path = folder.join(SIZES_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DataError::io(path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| DataError::BadJson {
            path,
            what: "expected {\"shard.tar\": count, ...}",
            source,
        })
}

/// Total number of samples in `shards`: from `sizes.json` in each shard's folder when it lists
/// the shard, otherwise by reading the tar and counting its samples (no image decoding).
pub fn count_samples(shards: &[PathBuf]) -> Result<u64, DataError> {
    let mut sizes_by_folder: HashMap<PathBuf, Option<BTreeMap<String, u64>>> = HashMap::new();
    let mut total = 0;
    for shard in shards {
        let folder = shard.parent().unwrap_or(Path::new(".")).to_path_buf();
        if !sizes_by_folder.contains_key(&folder) {
            let sizes = read_sizes(&folder)?;
            sizes_by_folder.insert(folder.clone(), sizes);
        }
        let name = shard.file_name().map(|n| n.to_string_lossy().into_owned());
        let listed = sizes_by_folder[&folder]
            .as_ref()
            .zip(name)
            .and_then(|(sizes, name)| sizes.get(&name).copied());
        total += match listed {
            Some(n) => n,
            None => count_tar_samples(shard)?,
        };
    }
    Ok(total)
}

/// Number of samples (groups of members sharing a key) in one shard, read skips included.
fn count_tar_samples(shard: &Path) -> Result<u64, DataError> {
    if !shard.is_file() {
        return Err(DataError::MissingShard {
            path: shard.to_path_buf(),
        });
    }
    let mut n = 0;
    crate::tar_reader::for_each_sample(shard, |item| {
        if item.is_ok() {
            n += 1;
        }
        ControlFlow::Continue(())
    });
    Ok(n)
}
