//! Shard specs: `data/{00000..00099}.tar`, several specs joined by `::`, or a folder of `.tar`s.
use std::path::{Path, PathBuf};

use crate::error::DataError;

/// Expand a shard spec into existing shard files, in spec order.
///
/// - `a/{000..002}.tar` → `a/000.tar a/001.tar a/002.tar` (width kept from the start bound);
///   several brace groups expand as a cartesian product, left group outermost;
///   `{a,b}` lists alternatives.
/// - `spec1::spec2` concatenates the expansions.
/// - a folder → all `*.tar` files in it, sorted by name.
///
/// A named shard that does not exist is an error naming it.
pub fn expand_shards(spec: &str) -> Result<Vec<PathBuf>, DataError> {
    let mut shards = Vec::new();
    for part in spec.split("::") {
        let part = part.trim();
        if part.is_empty() {
            return Err(DataError::BadSpec {
                spec: spec.to_string(),
                reason: "empty part".into(),
            });
        }
        let as_path = Path::new(part);
        if !part.contains('{') && as_path.is_dir() {
            shards.extend(tars_in_folder(as_path)?);
            continue;
        }
        for name in expand_braces(part)? {
            let path = PathBuf::from(name);
            if !path.is_file() {
                return Err(DataError::MissingShard { path });
            }
            shards.push(path);
        }
    }
    Ok(shards)
}

/// All `*.tar` files directly in `folder`, sorted by name.
fn tars_in_folder(folder: &Path) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(folder).map_err(|e| DataError::io(folder, e))?;
    let mut tars = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| DataError::io(folder, e))?.path();
        if path.is_file() && path.extension().is_some_and(|x| x == "tar") {
            tars.push(path);
        }
    }
    tars.sort();
    if tars.is_empty() {
        return Err(DataError::BadSpec {
            spec: folder.display().to_string(),
            reason: "folder holds no .tar files".into(),
        });
    }
    Ok(tars)
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
}
