//! Shard specs: `data/{00000..00099}.tar`, several sources joined by `::` (each with a
//! sampling weight, [`expand_sources`]), a folder of shards, or `pipe:CMD` shards; and the
//! dataset size from `sizes.json` / img2dataset's `*_stats.json` ([`dataset_size`]).
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::shard_source::{is_shard_file_name, PIPE_PREFIX};
use crate::sizes::{read_sizes, SIZES_FILE};

/// Config field the per-source weights come from (OpenCLIP's
/// `--train-data-upsampling-factors`), named in errors.
pub const WEIGHTS_FIELD: &str = "train_weights";

/// Config field to set when the dataset size cannot be read from the shards' folders.
pub const NUM_SAMPLES_FIELD: &str = "train_num_samples";

/// Expand a shard spec into shards, in spec order.
///
/// - `a/{000..002}.tar` → `a/000.tar a/001.tar a/002.tar` (width kept from the start bound);
///   several brace groups expand as a cartesian product, left group outermost;
///   `{a,b}` lists alternatives.
/// - `spec1::spec2` concatenates the expansions.
/// - a folder → all `*.tar`, `*.tar.gz`, `*.tgz`, `*.tar.zst` files in it, sorted by name.
/// - `pipe:CMD` → brace-expanded only (`pipe:cat /d/{0..3}.tar` is 4 pipe shards); the
///   command is not checked. A command cannot contain `::`, which separates sources.
///
/// A named shard file that does not exist is an error naming it.
pub fn expand_shards(spec: &str) -> Result<Vec<PathBuf>, DataError> {
    let mut shards = Vec::new();
    for part in source_parts(spec)? {
        shards.extend(expand_source(part)?);
    }
    Ok(shards)
}

/// One `::`-joined source of a shard spec: its shards and its sampling weight.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardSource {
    /// The source's shards, in spec order (see [`expand_shards`]).
    pub shards: Vec<PathBuf>,
    /// Relative sampling weight (≥ 0, finite); 1 when no weights are given.
    pub weight: f64,
}

/// Expand `spec` source by source: each `::`-joined part becomes a [`ShardSource`].
///
/// `weights` is `::`-joined numbers, one per source, like OpenCLIP's
/// `--train-data-upsampling-factors` (`"1::0.5"`); `None` gives every source weight 1.
/// A count that differs from the number of sources, a weight that is negative, NaN or
/// infinite, or all weights zero is an error naming [`WEIGHTS_FIELD`].
pub fn expand_sources(spec: &str, weights: Option<&str>) -> Result<Vec<ShardSource>, DataError> {
    let parts = source_parts(spec)?;
    let weights = match weights {
        None => vec![1.0; parts.len()],
        Some(text) => parse_weights(text, parts.len(), spec)?,
    };
    parts
        .into_iter()
        .zip(weights)
        .map(|(part, weight)| {
            Ok(ShardSource {
                shards: expand_source(part)?,
                weight,
            })
        })
        .collect()
}

/// The trimmed `::`-joined parts of `spec`; an empty part is an error.
fn source_parts(spec: &str) -> Result<Vec<&str>, DataError> {
    spec.split("::")
        .map(|part| {
            let part = part.trim();
            if part.is_empty() {
                Err(DataError::BadSpec {
                    spec: spec.to_string(),
                    reason: "empty part".into(),
                })
            } else {
                Ok(part)
            }
        })
        .collect()
}

/// The shards of one source (no `::` in it).
fn expand_source(part: &str) -> Result<Vec<PathBuf>, DataError> {
    if part.starts_with(PIPE_PREFIX) {
        return Ok(expand_braces(part)?.into_iter().map(PathBuf::from).collect());
    }
    let as_path = Path::new(part);
    if !part.contains('{') && as_path.is_dir() {
        return shards_in_folder(as_path);
    }
    let mut shards = Vec::new();
    for name in expand_braces(part)? {
        let path = PathBuf::from(name);
        if !path.is_file() {
            return Err(DataError::MissingShard { path });
        }
        shards.push(path);
    }
    Ok(shards)
}

fn parse_weights(text: &str, sources: usize, spec: &str) -> Result<Vec<f64>, DataError> {
    let bad = |reason: String| DataError::BadConfig {
        field: WEIGHTS_FIELD,
        reason,
    };
    let weights = text
        .split("::")
        .map(|w| {
            let w = w.trim();
            match w.parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
                Ok(_) => Err(bad(format!("weight {w:?} must be a finite number >= 0"))),
                Err(_) => Err(bad(format!("weight {w:?} is not a number"))),
            }
        })
        .collect::<Result<Vec<f64>, DataError>>()?;
    if weights.len() != sources {
        return Err(bad(format!(
            "{} weight(s) in {text:?} for {sources} `::`-joined source(s) in {spec:?}",
            weights.len()
        )));
    }
    if weights.iter().all(|&w| w == 0.0) {
        return Err(bad(format!("all weights in {text:?} are zero")));
    }
    Ok(weights)
}

/// All shard files (`*.tar`, `*.tar.gz`, `*.tgz`, `*.tar.zst`) directly in `folder`, sorted
/// by name.
fn shards_in_folder(folder: &Path) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(folder).map_err(|e| DataError::io(folder, e))?;
    let mut shards = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| DataError::io(folder, e))?.path();
        if path.is_file() && is_shard_file_name(&path) {
            shards.push(path);
        }
    }
    shards.sort();
    if shards.is_empty() {
        return Err(DataError::BadSpec {
            spec: folder.display().to_string(),
            reason: "folder holds no .tar, .tar.gz, .tgz or .tar.zst files".into(),
        });
    }
    Ok(shards)
}

/// Number of samples in `shards`, from metadata next to them, without reading any shard:
/// the shard's entry in `sizes.json` of its folder (OpenCLIP's and ours), else img2dataset's
/// `<shard stem>_stats.json` (its `successes`: the samples written to that shard).
///
/// A shard with neither (and any `pipe:` shard) is an error naming it and
/// [`NUM_SAMPLES_FIELD`]: the size must then be given (`--train-num-samples`).
pub fn dataset_size(shards: &[PathBuf]) -> Result<u64, DataError> {
    let mut sizes_by_folder = HashMap::new();
    let mut total: u64 = 0;
    for shard in shards {
        let samples = shard_size(shard, &mut sizes_by_folder)?;
        total = total.saturating_add(samples);
    }
    Ok(total)
}

type FolderSizes = HashMap<PathBuf, Option<std::collections::BTreeMap<String, u64>>>;

fn shard_size(shard: &Path, sizes_by_folder: &mut FolderSizes) -> Result<u64, DataError> {
    let unknown = |why: String| DataError::BadConfig {
        field: NUM_SAMPLES_FIELD,
        reason: format!(
            "the number of samples of shard {} is unknown ({why}); pass --train-num-samples",
            shard.display()
        ),
    };
    if shard.to_str().is_some_and(|s| s.starts_with(PIPE_PREFIX)) {
        return Err(unknown("a pipe: shard has no sizes.json or *_stats.json".into()));
    }
    let Some(name) = shard.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Err(unknown("no file name".into()));
    };
    let folder = match shard.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !sizes_by_folder.contains_key(&folder) {
        let sizes = read_sizes(&folder)?;
        sizes_by_folder.insert(folder.clone(), sizes);
    }
    if let Some(n) = sizes_by_folder
        .get(&folder)
        .and_then(Option::as_ref)
        .and_then(|sizes| sizes.get(&name))
    {
        return Ok(*n);
    }
    let stats_path = folder.join(format!("{}_stats.json", shard_stem(&name)));
    let text = match std::fs::read_to_string(&stats_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(unknown(format!(
                "no entry {name:?} in {} and no {}",
                folder.join(SIZES_FILE).display(),
                stats_path.display()
            )))
        }
        Err(e) => return Err(DataError::io(stats_path, e)),
    };
    let stats: serde_json::Value = serde_json::from_str(&text).map_err(|source| DataError::BadJson {
        path: stats_path.clone(),
        what: "not JSON",
        source,
    })?;
    stats
        .get("successes")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| DataError::BadFile {
            path: stats_path,
            reason: "expected img2dataset stats with a non-negative integer \"successes\"".into(),
        })
}

/// `00001.tar.zst` → `00001`: the name without its shard suffix (img2dataset names its stats
/// file `<stem>_stats.json`).
fn shard_stem(name: &str) -> &str {
    for suffix in [".tar.gz", ".tar.zst", ".tgz", ".tar"] {
        if name.len() > suffix.len() && name.to_ascii_lowercase().ends_with(suffix) {
            return &name[..name.len() - suffix.len()];
        }
    }
    name
}

/// Brace-expand one pattern (no file checks). `{3..5}`, `{003..105}`, `{a,b,c}`.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, DataError> {
    let bad = |reason: &str| DataError::BadSpec {
        spec: pattern.to_string(),
        reason: reason.to_string(),
    };
    let Some(open) = pattern.find('{') else {
        if pattern.contains('}') {
            return Err(bad("'}' without '{'"));
        }
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..]
        .find('}')
        .map(|i| open + i)
        .ok_or_else(|| bad("'{' without '}'"))?;
    let prefix = &pattern[..open];
    let body = &pattern[open + 1..close];
    if body.contains('{') {
        return Err(bad("nested braces are not supported"));
    }
    if prefix.contains('}') {
        return Err(bad("'}' without '{'"));
    }
    let alternatives = brace_alternatives(body).map_err(|r| bad(&r))?;
    let rests = expand_braces(&pattern[close + 1..]).map_err(|e| match e {
        DataError::BadSpec { reason, .. } => bad(&reason),
        other => other,
    })?;
    let mut out = Vec::with_capacity(alternatives.len() * rests.len());
    for alt in &alternatives {
        for rest in &rests {
            out.push(format!("{prefix}{alt}{rest}"));
        }
    }
    Ok(out)
}

/// The strings one brace body stands for.
fn brace_alternatives(body: &str) -> Result<Vec<String>, String> {
    if let Some((lo, hi)) = body.split_once("..") {
        let parse = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| format!("range bound {s:?} is not a non-negative integer"))
        };
        let (start, end) = (parse(lo)?, parse(hi)?);
        if start > end {
            return Err(format!("range {lo}..{hi} is decreasing"));
        }
        // Zero padding as written on the start bound (webdataset/braceexpand keep the width).
        let width = if lo.len() > 1 && lo.starts_with('0') {
            lo.len()
        } else {
            0
        };
        Ok((start..=end).map(|i| format!("{i:0width$}")).collect())
    } else if body.contains(',') {
        Ok(body.split(',').map(str::to_string).collect())
    } else {
        Err(format!("brace group {{{body}}} is neither a range nor a list"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_keeps_zero_padding() {
        let names = expand_braces("d/{00008..00011}.tar").unwrap();
        assert_eq!(names, ["d/00008.tar", "d/00009.tar", "d/00010.tar", "d/00011.tar"]);
    }

    #[test]
    fn several_groups_are_a_cartesian_product() {
        let names = expand_braces("{a,b}/{0..1}-{08..09}.tar").unwrap();
        assert_eq!(
            names,
            [
                "a/0-08.tar",
                "a/0-09.tar",
                "a/1-08.tar",
                "a/1-09.tar",
                "b/0-08.tar",
                "b/0-09.tar",
                "b/1-08.tar",
                "b/1-09.tar"
            ]
        );
    }

    #[test]
    fn malformed_braces_are_errors() {
        for bad in [
            "a/{0..2.tar",
            "a/0..2}.tar",
            "a/{5..2}.tar",
            "a/{x..2}.tar",
            "a/{x}.tar",
        ] {
            assert!(matches!(expand_braces(bad), Err(DataError::BadSpec { .. })), "{bad}");
        }
    }

    /// A folder with `names` as (empty) files.
    fn folder_with(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in names {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        dir
    }

    #[test]
    fn shard_spec_folder_includes_compressed_tars() {
        let dir = folder_with(&["b.tar.zst", "a.tar", "c.tgz", "d.tar.gz", "sizes.json", "e.zst"]);
        let shards = expand_shards(&dir.path().display().to_string()).unwrap();
        let names: Vec<_> = shards
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.tar", "b.tar.zst", "c.tgz", "d.tar.gz"]);

        let empty = folder_with(&["sizes.json"]);
        let err = expand_shards(&empty.path().display().to_string()).unwrap_err();
        assert!(matches!(err, DataError::BadSpec { .. }), "{err}");
    }

    #[test]
    fn shard_spec_pipe_parts_are_brace_expanded_and_not_checked() {
        let dir = folder_with(&["0.tar.zst", "1.tar.zst"]);
        let local = format!("{}/{{0..1}}.tar.zst", dir.path().display());
        let spec = format!("pipe:curl -s http://h/d/{{00..02}}.tar::{local}");
        let shards = expand_shards(&spec).unwrap();
        assert_eq!(
            shards,
            [
                PathBuf::from("pipe:curl -s http://h/d/00.tar"),
                PathBuf::from("pipe:curl -s http://h/d/01.tar"),
                PathBuf::from("pipe:curl -s http://h/d/02.tar"),
                dir.path().join("0.tar.zst"),
                dir.path().join("1.tar.zst"),
            ]
        );
        // A missing local file is still an error naming it.
        let missing = format!("{}/{{0..2}}.tar.zst", dir.path().display());
        match expand_shards(&missing) {
            Err(DataError::MissingShard { path }) => assert_eq!(path, dir.path().join("2.tar.zst")),
            other => panic!("expected MissingShard, got {other:?}"),
        }
    }

    #[test]
    fn shard_sources_carry_their_weights() {
        let a = folder_with(&["0.tar", "1.tar"]);
        let b = folder_with(&["x.tar.zst"]);
        let spec = format!("{}::{}/x.tar.zst", a.path().display(), b.path().display());

        let sources = expand_sources(&spec, None).unwrap();
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0].shards, [a.path().join("0.tar"), a.path().join("1.tar")]);
        assert_eq!(sources[1].shards, [b.path().join("x.tar.zst")]);
        assert_eq!((sources[0].weight, sources[1].weight), (1.0, 1.0));

        let sources = expand_sources(&spec, Some(" 2 :: 0.25")).unwrap();
        assert_eq!((sources[0].weight, sources[1].weight), (2.0, 0.25));

        for bad in ["1", "1::2::3", "1::-1", "1::NaN", "1::inf", "1::x", "0::0", "1::"] {
            match expand_sources(&spec, Some(bad)) {
                Err(DataError::BadConfig { field, .. }) => assert_eq!(field, WEIGHTS_FIELD, "{bad}"),
                other => panic!("{bad}: expected BadConfig, got {other:?}"),
            }
        }
    }

    #[test]
    fn shard_dataset_size_from_sizes_json_and_img2dataset_stats() {
        let ours = folder_with(&["00000.tar", "00001.tar.zst"]);
        std::fs::write(ours.path().join(SIZES_FILE), r#"{"00000.tar": 10, "00001.tar.zst": 7}"#).unwrap();
        let img2dataset = folder_with(&["00000.tar", "00001.tar"]);
        for (stem, successes) in [("00000", 95), ("00001", 3)] {
            let stats = format!(
                r#"{{"count": 100, "successes": {successes}, "failed_to_download": 5,
                    "failed_to_resize": 0, "duration": 1.5, "status_dict": {{}}}}"#
            );
            std::fs::write(img2dataset.path().join(format!("{stem}_stats.json")), stats).unwrap();
        }
        let mut shards = expand_shards(&ours.path().display().to_string()).unwrap();
        shards.extend(expand_shards(&img2dataset.path().display().to_string()).unwrap());
        assert_eq!(dataset_size(&shards).unwrap(), 10 + 7 + 95 + 3);
    }

    #[test]
    fn shard_dataset_size_unknown_says_to_pass_train_num_samples() {
        let dir = folder_with(&["00000.tar"]);
        let shard = dir.path().join("00000.tar");
        let err = dataset_size(std::slice::from_ref(&shard)).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("--train-num-samples"), "{message}");
        assert!(message.contains("00000.tar"), "{message}");
        assert!(matches!(
            err,
            DataError::BadConfig {
                field: NUM_SAMPLES_FIELD,
                ..
            }
        ));

        let pipe = PathBuf::from("pipe:cat 00000.tar");
        let err = dataset_size(&[pipe]).unwrap_err();
        assert!(err.to_string().contains("--train-num-samples"), "{err}");

        // A stats file without `successes` is a bad file, named.
        std::fs::write(dir.path().join("00000_stats.json"), r#"{"count": 4}"#).unwrap();
        match dataset_size(&[shard]) {
            Err(DataError::BadFile { path, .. }) => assert!(path.ends_with("00000_stats.json")),
            other => panic!("expected BadFile, got {other:?}"),
        }
    }
}
