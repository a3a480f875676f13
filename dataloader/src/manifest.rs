//! Raw image–text pairs to shard: a JSONL manifest, a CSV/TSV table, or a folder of images
//! with sidecar `.txt`/`.json` files.
//!
//! - JSONL: one object per line; `"image"` (path relative to the manifest's folder),
//!   `"caption"` (string) or `"captions"` (list), optional `"cls"` (integer), optional `"key"`.
//!   All fields are kept for the sample's `.json`.
//! - CSV (`.csv`) / TSV (`.tsv`): a header with `image` and `caption` columns, optional `cls`
//!   and `key`; every column is kept (as strings) for the `.json`.
//! - Folder: every `png|jpg|jpeg|webp` below it (sorted); captions from `<stem>.txt` (one per
//!   line) or the `"caption"`/`"captions"` field of `<stem>.json`, label from its `"cls"`.
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{DataError, SkipReason};
use crate::imaging::{decode_rgb, sniff_extension};
use crate::writer::ShardSample;

/// One input row, before its image is read.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestRow {
    /// 1-based row number (line of a JSONL, record of a CSV, image of a folder).
    pub row: usize,
    /// Image path, resolved against the manifest's folder.
    pub image: PathBuf,
    /// Captions (at least one).
    pub captions: Vec<String>,
    /// Class label.
    pub label: Option<i64>,
    /// Key requested by the row.
    pub key: Option<String>,
    /// All fields of the row, for the sample's `.json`.
    pub fields: Map<String, Value>,
}

/// A row that is skipped, and why; the message names the input and the row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: row {row}: {reason}: {detail}", input.display())]
pub struct RowSkip {
    /// The manifest (or folder).
    pub input: PathBuf,
    /// 1-based row number.
    pub row: usize,
    /// Why.
    pub reason: SkipReason,
    /// Details, naming the image file where there is one.
    pub detail: String,
}

/// Rows of a manifest, lazily.
pub type Rows = Box<dyn Iterator<Item = Result<ManifestRow, RowSkip>>>;

/// Open `input` (a `.jsonl`/`.ndjson`/`.json` manifest, `.csv`, `.tsv`, or a folder) and
/// iterate its rows.
pub fn read_manifest(input: &Path) -> Result<Rows, DataError> {
    if input.is_dir() {
        return folder_rows(input);
    }
    let ext = input
        .extension()
        .map(|x| x.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let base = input.parent().unwrap_or(Path::new("")).to_path_buf();
    match ext.as_str() {
        "jsonl" | "ndjson" | "json" => {
            let file = std::fs::File::open(input).map_err(|e| DataError::io(input, e))?;
            let input = input.to_path_buf();
            let lines = std::io::BufReader::new(file).lines().enumerate();
            Ok(Box::new(lines.filter_map(move |(i, line)| {
                let row = i + 1;
                let skip = |reason, detail: String| RowSkip {
                    input: input.clone(),
                    row,
                    reason,
                    detail,
                };
                let line = match line {
                    Ok(line) => line,
                    Err(e) => return Some(Err(skip(SkipReason::InvalidRow, e.to_string()))),
                };
                if line.trim().is_empty() {
                    return None;
                }
                let fields = match serde_json::from_str::<Value>(&line) {
                    Ok(Value::Object(fields)) => fields,
                    Ok(_) => return Some(Err(skip(SkipReason::InvalidRow, "not a JSON object".into()))),
                    Err(e) => return Some(Err(skip(SkipReason::InvalidRow, e.to_string()))),
                };
                Some(row_from_fields(fields, &base, row).map_err(|(reason, detail)| skip(reason, detail)))
            })))
        }
        "csv" | "tsv" => {
            let delimiter = if ext == "tsv" { b'\t' } else { b',' };
            let mut reader = csv::ReaderBuilder::new()
                .delimiter(delimiter)
                .flexible(false)
                .from_path(input)
                .map_err(|e| DataError::BadFile {
                    path: input.to_path_buf(),
                    reason: e.to_string(),
                })?;
            let headers = reader.headers().map_err(|e| DataError::BadFile {
                path: input.to_path_buf(),
                reason: e.to_string(),
            })?;
            let headers: Vec<String> = headers.iter().map(|h| h.trim().to_string()).collect();
            for required in ["image", "caption"] {
                if !headers.iter().any(|h| h == required) {
                    return Err(DataError::BadFile {
                        path: input.to_path_buf(),
                        reason: format!("header has no {required:?} column (found {headers:?})"),
                    });
                }
            }
            let input = input.to_path_buf();
            Ok(Box::new(reader.into_records().enumerate().map(move |(i, record)| {
                let row = i + 1;
                let skip = |reason, detail: String| RowSkip {
                    input: input.clone(),
                    row,
                    reason,
                    detail,
                };
                let record = record.map_err(|e| skip(SkipReason::InvalidRow, e.to_string()))?;
                let mut fields = Map::new();
                for (name, value) in headers.iter().zip(record.iter()) {
                    // An empty `cls`/`key` cell means "none", not an invalid value.
                    if (name == "cls" || name == "key") && value.trim().is_empty() {
                        continue;
                    }
                    fields.insert(name.clone(), Value::String(value.to_string()));
                }
                row_from_fields(fields, &base, row).map_err(|(reason, detail)| skip(reason, detail))
            })))
        }
        _ => Err(DataError::BadFile {
            path: input.to_path_buf(),
            reason: "unknown input kind: expected a folder, .jsonl/.json, .csv or .tsv".into(),
        }),
    }
}

/// Interpret one row's fields (JSONL object, CSV record, or a sidecar JSON).
fn row_from_fields(fields: Map<String, Value>, base: &Path, row: usize) -> Result<ManifestRow, (SkipReason, String)> {
    let image = match fields.get("image") {
        Some(Value::String(path)) if !path.trim().is_empty() => base.join(path.trim()),
        _ => return Err((SkipReason::InvalidRow, "no \"image\" path".into())),
    };
    let label = label_from_fields(&fields)?;
    // A classification set (image + "cls") needs no caption, as in CLIP_benchmark's shards.
    let captions = match captions_from_fields(&fields) {
        Err((SkipReason::MissingCaption, _)) if label.is_some() => Vec::new(),
        other => other?,
    };
    let key = match fields.get("key") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => return Err((SkipReason::InvalidKey, format!("key {other}"))),
    };
    Ok(ManifestRow {
        row,
        image,
        captions,
        label,
        key,
        fields,
    })
}

fn captions_from_fields(fields: &Map<String, Value>) -> Result<Vec<String>, (SkipReason, String)> {
    let captions: Vec<String> = match (fields.get("caption"), fields.get("captions")) {
        (Some(Value::String(s)), _) => vec![s.trim().to_string()],
        (_, Some(Value::Array(items))) => items
            .iter()
            .map(|v| v.as_str().map(|s| s.trim().to_string()))
            .collect::<Option<Vec<_>>>()
            .ok_or((SkipReason::InvalidCaption, "\"captions\" holds a non-string".into()))?,
        (Some(other), _) if !other.is_null() => {
            return Err((SkipReason::InvalidCaption, format!("caption {other} is not a string")))
        }
        _ => Vec::new(),
    };
    let captions: Vec<String> = captions.into_iter().filter(|c| !c.is_empty()).collect();
    if captions.is_empty() {
        return Err((SkipReason::MissingCaption, "no \"caption\" or \"captions\"".into()));
    }
    Ok(captions)
}

fn label_from_fields(fields: &Map<String, Value>) -> Result<Option<i64>, (SkipReason, String)> {
    match fields.get("cls") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_i64().is_some() => Ok(n.as_i64()),
        Some(Value::String(s)) if s.trim().parse::<i64>().is_ok() => Ok(s.trim().parse().ok()),
        Some(other) => Err((SkipReason::InvalidLabel, format!("cls {other} is not an integer"))),
    }
}

const FOLDER_IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

/// All images below `dir`, sorted, each with its sidecars.
fn folder_rows(dir: &Path) -> Result<Rows, DataError> {
    let mut images = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let entries = std::fs::read_dir(&folder).map_err(|e| DataError::io(&folder, e))?;
        for entry in entries {
            let path = entry.map_err(|e| DataError::io(&folder, e))?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .is_some_and(|x| FOLDER_IMAGE_EXTENSIONS.contains(&x.to_string_lossy().to_lowercase().as_str()))
            {
                images.push(path);
            }
        }
    }
    images.sort();
    let dir = dir.to_path_buf();
    Ok(Box::new(images.into_iter().enumerate().map(move |(i, image)| {
        let row = i + 1;
        folder_row(&dir, image, row).map_err(|(reason, detail)| RowSkip {
            input: dir.clone(),
            row,
            reason,
            detail,
        })
    })))
}

fn folder_row(dir: &Path, image: PathBuf, row: usize) -> Result<ManifestRow, (SkipReason, String)> {
    let txt = image.with_extension("txt");
    let json = image.with_extension("json");
    let mut fields = match std::fs::read(&json) {
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(fields)) => fields,
            _ => {
                return Err((
                    SkipReason::InvalidRow,
                    format!("{} is not a JSON object", json.display()),
                ))
            }
        },
        Err(_) => Map::new(),
    };
    let relative = image.strip_prefix(dir).unwrap_or(&image);
    fields.insert("image".into(), Value::String(relative.to_string_lossy().into_owned()));
    let captions = match std::fs::read(&txt) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes)
                .map_err(|_| (SkipReason::InvalidCaption, format!("{} is not UTF-8", txt.display())))?;
            let lines: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            if lines.is_empty() {
                return Err((SkipReason::MissingCaption, format!("{} is empty", txt.display())));
            }
            lines
        }
        Err(_) => captions_from_fields(&fields).map_err(|(reason, _)| {
            (
                reason,
                format!("no caption for {} (neither .txt nor .json caption)", image.display()),
            )
        })?,
    };
    let label = label_from_fields(&fields)?;
    Ok(ManifestRow {
        row,
        image,
        captions,
        label,
        key: None,
        fields,
    })
}

impl ManifestRow {
    /// Read and check this row's image (it must decode within `max_pixels`) and build the
    /// sample to write; the image bytes are kept as they are.
    pub fn load(&self, input: &Path, max_pixels: u64) -> Result<ShardSample, RowSkip> {
        let skip = |reason, detail: String| RowSkip {
            input: input.to_path_buf(),
            row: self.row,
            reason,
            detail: format!("{}: {detail}", self.image.display()),
        };
        let bytes = std::fs::read(&self.image).map_err(|e| {
            let reason = if e.kind() == std::io::ErrorKind::NotFound {
                SkipReason::MissingImage
            } else {
                SkipReason::UnreadableImage
            };
            skip(reason, e.to_string())
        })?;
        decode_rgb(&bytes, max_pixels).map_err(|e| skip(e.reason, e.detail))?;
        let ext =
            sniff_extension(&bytes).ok_or_else(|| skip(SkipReason::UndecodableImage, "unknown image format".into()))?;
        Ok(ShardSample {
            key: self.key.clone(),
            image: bytes,
            image_ext: ext.to_string(),
            captions: self.captions.clone(),
            label: self.label,
            json: self.fields.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_rows_and_their_problems() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("m.jsonl");
        std::fs::write(
            &manifest,
            concat!(
                r#"{"image": "a.png", "caption": " a cat ", "cls": 3, "url": "u"}"#,
                "\n",
                "\n",
                r#"{"image": "b.png", "captions": ["x", "y"], "key": "kb"}"#,
                "\n",
                r#"{"image": "c.png"}"#,
                "\n",
                "not json\n",
                r#"{"image": "d.png", "caption": "d", "cls": "three"}"#,
                "\n",
            ),
        )
        .unwrap();
        let rows: Vec<_> = read_manifest(&manifest).unwrap().collect();
        assert_eq!(rows.len(), 5);
        let a = rows[0].as_ref().unwrap();
        assert_eq!(a.image, dir.path().join("a.png"));
        assert_eq!(a.captions, ["a cat"]);
        assert_eq!(a.label, Some(3));
        assert_eq!(a.fields["url"], "u");
        let b = rows[1].as_ref().unwrap();
        assert_eq!((b.row, b.key.as_deref()), (3, Some("kb")));
        assert_eq!(b.captions, ["x", "y"]);
        let c = rows[2].as_ref().unwrap_err();
        assert_eq!((c.row, c.reason), (4, SkipReason::MissingCaption));
        assert!(c.to_string().contains("m.jsonl: row 4"), "{c}");
        assert_eq!(rows[3].as_ref().unwrap_err().reason, SkipReason::InvalidRow);
        assert_eq!(rows[4].as_ref().unwrap_err().reason, SkipReason::InvalidLabel);
    }

    #[test]
    fn csv_needs_image_and_caption_columns() {
        let dir = tempfile::tempdir().unwrap();
        let tsv = dir.path().join("m.tsv");
        std::fs::write(&tsv, "image\tcaption\tcls\tsource\nsub/a.jpg\ta dog\t\tweb\n").unwrap();
        let rows: Vec<_> = read_manifest(&tsv).unwrap().collect();
        let a = rows[0].as_ref().unwrap();
        assert_eq!(a.image, dir.path().join("sub/a.jpg"));
        assert_eq!((a.captions.as_slice(), a.label), (&["a dog".to_string()][..], None));
        assert_eq!(a.fields["source"], "web");

        let csv = dir.path().join("bad.csv");
        std::fs::write(&csv, "path,text\na.png,hi\n").unwrap();
        let err = read_manifest(&csv).err().unwrap().to_string();
        assert!(err.contains("bad.csv") && err.contains("\"image\""), "{err}");
    }

    #[test]
    fn folder_rows_use_sidecars() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("s")).unwrap();
        std::fs::write(dir.path().join("s/b.png"), b"x").unwrap();
        std::fs::write(dir.path().join("s/b.txt"), "one\ntwo\n").unwrap();
        std::fs::write(dir.path().join("a.jpg"), b"x").unwrap();
        std::fs::write(dir.path().join("a.json"), r#"{"caption": "from json", "cls": 1}"#).unwrap();
        std::fs::write(dir.path().join("c.png"), b"x").unwrap();
        let rows: Vec<_> = read_manifest(dir.path()).unwrap().collect();
        assert_eq!(rows.len(), 3);
        let a = rows[0].as_ref().unwrap();
        assert_eq!(
            (a.captions.as_slice(), a.label),
            (&["from json".to_string()][..], Some(1))
        );
        assert_eq!(a.fields["image"], "a.jpg");
        assert_eq!(rows[1].as_ref().unwrap_err().reason, SkipReason::MissingCaption);
        assert_eq!(rows[2].as_ref().unwrap().captions, ["one", "two"]);
    }

    /// Regression: a zero-shot classification row ("image" + "cls", no caption) is kept.
    #[test]
    fn labelled_row_without_caption_is_kept() {
        let fields: Map<String, Value> = serde_json::from_str(r#"{"image": "a.png", "cls": 2}"#).unwrap();
        let row = row_from_fields(fields, Path::new("/d"), 1).unwrap();
        assert_eq!((row.captions.len(), row.label), (0, Some(2)));
        let fields: Map<String, Value> = serde_json::from_str(r#"{"image": "a.png"}"#).unwrap();
        assert_eq!(
            row_from_fields(fields, Path::new("/d"), 1).unwrap_err().0,
            SkipReason::MissingCaption
        );
    }
}
