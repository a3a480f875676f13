//! Raw image–text pairs to shard: a JSONL manifest, a CSV/TSV table, a parquet table, or a
//! folder of images with sidecar `.txt`/`.json` files.
//!
//! - JSONL: one object per line; `"image"` (path relative to the manifest's folder),
//!   `"caption"` (string) or `"captions"` (list), optional `"cls"` (integer), optional `"key"`.
//!   All fields are kept for the sample's `.json`.
//! - CSV (`.csv`) / TSV (`.tsv`): a header with `image` and `caption` columns, optional `cls`
//!   and `key`; every column is kept (as strings) for the `.json`.
//! - Parquet (`.parquet`), as img2dataset takes it: one row per sample, columns as for JSONL
//!   (strings, integers, lists of strings; nulls mean absent). Binary columns are not copied
//!   into the `.json`.
//! - Folder: every `png|jpg|jpeg|webp` below it (sorted); captions from `<stem>.txt` (one per
//!   line) or the `"caption"`/`"captions"` field of `<stem>.json`, label from its `"cls"`.
//!
//! In tables (not folders) the image may also be named by a `path` or `url` column (a local
//! path or a `file://` URL; `http(s)://` URLs are not downloaded and their rows are skipped),
//! and [`ManifestColumns`] renames other columns to `image` / `caption` (img2dataset's
//! `--url_col` / `--caption_col`).
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use parquet::record::Field;
use serde_json::{Map, Value};

use crate::error::{DataError, SkipReason};
use crate::imaging::{decode_rgb, sniff_extension};
use crate::tar_reader::DEFAULT_MAX_MEMBER_BYTES;
use crate::writer::ShardSample;

/// Columns that hold the image path when there is no `image` column, in order of preference.
const IMAGE_COLUMN_FALLBACKS: [&str; 3] = ["image", "path", "url"];

/// Which table columns hold the image path and the caption, when they are not named `image`
/// (or `path`/`url`) and `caption`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestColumns {
    /// Column holding the image path (renamed to `image`).
    pub image: Option<String>,
    /// Column holding the caption (renamed to `caption`).
    pub caption: Option<String>,
}

impl ManifestColumns {
    /// Move the configured columns to `image` / `caption`; without a configured or an `image`
    /// column, the first of `path` / `url` becomes `image`.
    fn apply(&self, mut fields: Map<String, Value>) -> Map<String, Value> {
        if let Some(name) = &self.caption {
            if let Some(value) = fields.remove(name) {
                fields.insert("caption".into(), value);
            }
        }
        match &self.image {
            Some(name) => {
                if let Some(value) = fields.remove(name) {
                    fields.insert("image".into(), value);
                }
            }
            None => {
                let fallback = IMAGE_COLUMN_FALLBACKS[1..]
                    .iter()
                    .find(|name| fields.get(**name).is_some_and(|v| !v.is_null()));
                if let (false, Some(name)) = (fields.contains_key("image"), fallback) {
                    let value = fields[*name].clone();
                    fields.insert("image".into(), value);
                }
            }
        }
        fields
    }

    /// Check that a table's `columns` can give an image path and a caption.
    fn check_header(&self, input: &Path, columns: &[String]) -> Result<(), DataError> {
        let has = |name: &str| columns.iter().any(|c| c == name);
        let image_ok = match &self.image {
            Some(name) => has(name),
            None => IMAGE_COLUMN_FALLBACKS.iter().any(|name| has(name)),
        };
        let caption = self.caption.as_deref().unwrap_or("caption");
        let caption_ok = has(caption) || (self.caption.is_none() && has("captions"));
        let missing = match (image_ok, caption_ok) {
            (true, true) => return Ok(()),
            (false, _) => match &self.image {
                Some(name) => format!("no image column {name:?}"),
                None => "no \"image\", \"path\" or \"url\" column".to_string(),
            },
            (true, false) => format!("no caption column {caption:?}"),
        };
        Err(DataError::BadFile {
            path: input.to_path_buf(),
            reason: format!("{missing} (found {columns:?})"),
        })
    }
}

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

/// Open `input` (a `.jsonl`/`.ndjson`/`.json` manifest, `.csv`, `.tsv`, `.parquet`, or a
/// folder) and iterate its rows, with the default column names.
pub fn read_manifest(input: &Path) -> Result<Rows, DataError> {
    read_manifest_with(input, &ManifestColumns::default())
}

/// Like [`read_manifest`], with the image and caption columns of tables named by `columns`.
pub fn read_manifest_with(input: &Path, columns: &ManifestColumns) -> Result<Rows, DataError> {
    if input.is_dir() {
        return folder_rows(input);
    }
    let ext = input
        .extension()
        .map(|x| x.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let base = input.parent().unwrap_or(Path::new("")).to_path_buf();
    let columns = columns.clone();
    match ext.as_str() {
        "jsonl" | "ndjson" | "json" => {
            let file = std::fs::File::open(input).map_err(|e| DataError::io(input, e))?;
            let input = input.to_path_buf();
            let lines = std::io::BufReader::new(file).lines().enumerate();
            Ok(Box::new(lines.filter_map(move |(i, line)| {
                let row = i + 1;
                let skip = row_skip(&input, row);
                let line = match line {
                    Ok(line) => line,
                    Err(e) => return Some(Err(skip(SkipReason::InvalidRow, e.to_string()))),
                };
                if line.trim().is_empty() {
                    return None;
                }
                let fields = match serde_json::from_str::<Value>(&line) {
                    Ok(Value::Object(fields)) => columns.apply(fields),
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
                .map_err(|source| DataError::BadCsv {
                    path: input.to_path_buf(),
                    source,
                })?;
            let headers = reader.headers().map_err(|source| DataError::BadCsv {
                path: input.to_path_buf(),
                source,
            })?;
            let headers: Vec<String> = headers.iter().map(|h| h.trim().to_string()).collect();
            columns.check_header(input, &headers)?;
            let input = input.to_path_buf();
            Ok(Box::new(reader.into_records().enumerate().map(move |(i, record)| {
                let row = i + 1;
                let skip = row_skip(&input, row);
                let record = record.map_err(|e| skip(SkipReason::InvalidRow, e.to_string()))?;
                let mut fields = Map::new();
                for (name, value) in headers.iter().zip(record.iter()) {
                    // An empty `cls`/`key` cell means "none", not an invalid value.
                    if (name == "cls" || name == "key") && value.trim().is_empty() {
                        continue;
                    }
                    fields.insert(name.clone(), Value::String(value.to_string()));
                }
                row_from_fields(columns.apply(fields), &base, row).map_err(|(reason, detail)| skip(reason, detail))
            })))
        }
        "parquet" => parquet_rows(input, base, columns),
        _ => Err(DataError::BadFile {
            path: input.to_path_buf(),
            reason: "unknown input kind: expected a folder, .jsonl/.json, .csv, .tsv or .parquet".into(),
        }),
    }
}

/// Number of rows of `input` when it is known without reading them (parquet metadata).
pub fn row_count_hint(input: &Path) -> Option<u64> {
    let is_parquet = input.extension().is_some_and(|x| x.eq_ignore_ascii_case("parquet"));
    if !is_parquet {
        return None;
    }
    let file = std::fs::File::open(input).ok()?;
    let reader = SerializedFileReader::new(file).ok()?;
    u64::try_from(reader.metadata().file_metadata().num_rows()).ok()
}

/// Rows of a parquet table; a read error is reported once, at the row it happened, and ends
/// the table (the row reader cannot resynchronise after it).
fn parquet_rows(input: &Path, base: PathBuf, columns: ManifestColumns) -> Result<Rows, DataError> {
    let file = std::fs::File::open(input).map_err(|e| DataError::io(input, e))?;
    let reader = SerializedFileReader::new(file).map_err(|source| DataError::BadParquet {
        path: input.to_path_buf(),
        source,
    })?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let names: Vec<String> = schema
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    columns.check_header(input, &names)?;
    let rows = RowIter::from_file_into(Box::new(reader));
    let input = input.to_path_buf();
    let mut failed = false;
    Ok(Box::new(rows.enumerate().map_while(move |(i, row)| {
        if failed {
            return None;
        }
        let row_number = i + 1;
        let skip = |reason, detail: String| RowSkip {
            input: input.clone(),
            row: row_number,
            reason,
            detail,
        };
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                failed = true;
                return Some(Err(skip(SkipReason::InvalidRow, format!("parquet read error: {e}"))));
            }
        };
        let fields: Map<String, Value> = row
            .get_column_iter()
            .filter(|(_, field)| !matches!(field, Field::Bytes(_)))
            .map(|(name, field)| (name.clone(), field.to_json_value()))
            .collect();
        Some(row_from_fields(columns.apply(fields), &base, row_number).map_err(|(reason, detail)| skip(reason, detail)))
    })))
}

/// The skip record of row `row` of `input`, given a reason and a detail.
fn row_skip(input: &Path, row: usize) -> impl Fn(SkipReason, String) -> RowSkip + '_ {
    move |reason, detail| RowSkip {
        input: input.to_path_buf(),
        row,
        reason,
        detail,
    }
}

/// Interpret one row's fields (JSONL object, CSV record, or a sidecar JSON).
fn row_from_fields(fields: Map<String, Value>, base: &Path, row: usize) -> Result<ManifestRow, (SkipReason, String)> {
    let image = match fields.get("image") {
        Some(Value::String(path)) if !path.trim().is_empty() => image_path(path.trim(), base)?,
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

/// A local image path from a table cell: relative to the manifest's folder, or a `file://` URL.
fn image_path(cell: &str, base: &Path) -> Result<PathBuf, (SkipReason, String)> {
    if let Some(path) = cell.strip_prefix("file://") {
        return Ok(PathBuf::from(path));
    }
    let lower = cell.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("s3://") {
        return Err((
            SkipReason::MissingImage,
            format!("{cell:?} is a remote URL; ferroclip shard reads local files only (download first)"),
        ));
    }
    Ok(base.join(cell))
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
    /// sample to write; the image bytes are kept as they are. An image file over
    /// [`DEFAULT_MAX_MEMBER_BYTES`] is skipped (see [`Self::load_with_limit`]).
    pub fn load(&self, input: &Path, max_pixels: u64) -> Result<ShardSample, RowSkip> {
        self.load_with_limit(input, max_pixels, DEFAULT_MAX_MEMBER_BYTES)
    }

    /// [`Self::load`] with the largest image file to read: a bigger one is skipped as
    /// `oversized_member` (it would be an oversized tar member of the shard) without being
    /// read into memory.
    pub fn load_with_limit(
        &self,
        input: &Path,
        max_pixels: u64,
        max_member_bytes: u64,
    ) -> Result<ShardSample, RowSkip> {
        let skip = |reason, detail: String| RowSkip {
            input: input.to_path_buf(),
            row: self.row,
            reason,
            detail: format!("{}: {detail}", self.image.display()),
        };
        let unreadable = |e: std::io::Error| {
            let reason = if e.kind() == std::io::ErrorKind::NotFound {
                SkipReason::MissingImage
            } else {
                SkipReason::UnreadableImage
            };
            skip(reason, e.to_string())
        };
        let oversized = |size: String| {
            skip(
                SkipReason::OversizedMember,
                format!("{size} bytes, over max_member_bytes ({max_member_bytes})"),
            )
        };
        let file = std::fs::File::open(&self.image).map_err(unreadable)?;
        let size = file.metadata().map_err(unreadable)?.len();
        if size > max_member_bytes {
            return Err(oversized(size.to_string()));
        }
        // The size read again as the bytes come: a file that grows, or a device, cannot
        // make this read unbounded.
        let mut bytes = Vec::new();
        file.take(max_member_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        if bytes.len() as u64 > max_member_bytes {
            return Err(oversized(format!("more than {max_member_bytes}")));
        }
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
    fn image_files_over_the_member_limit_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut png = Vec::new();
        image::RgbImage::new(8, 8)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        std::fs::write(dir.path().join("a.png"), &png).unwrap();
        let manifest = dir.path().join("m.jsonl");
        std::fs::write(&manifest, r#"{"image": "a.png", "caption": "c"}"#).unwrap();
        let row = read_manifest(&manifest).unwrap().next().unwrap().unwrap();
        let size = png.len() as u64;
        let err = row.load_with_limit(&manifest, 1000, size - 1).unwrap_err();
        assert_eq!(err.reason, SkipReason::OversizedMember, "{}", err.detail);
        assert!(err.detail.contains("max_member_bytes"), "{}", err.detail);
        assert_eq!(row.load_with_limit(&manifest, 1000, size).unwrap().image, png);
        assert_eq!(row.load(&manifest, 1000).unwrap().image, png);
    }

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
        std::fs::write(&csv, "file,text\na.png,hi\n").unwrap();
        let err = read_manifest(&csv).err().unwrap().to_string();
        assert!(err.contains("bad.csv") && err.contains("\"image\""), "{err}");
        let csv = dir.path().join("nocaption.csv");
        std::fs::write(&csv, "path,text\na.png,hi\n").unwrap();
        let err = read_manifest(&csv).err().unwrap().to_string();
        assert!(err.contains("nocaption.csv") && err.contains("caption"), "{err}");
        // Renamed columns (img2dataset's --url_col / --caption_col).
        let columns = ManifestColumns {
            image: Some("file".into()),
            caption: Some("text".into()),
        };
        let csv = dir.path().join("renamed.csv");
        std::fs::write(&csv, "file,text\na.png,hi\n").unwrap();
        let rows: Vec<_> = read_manifest_with(&csv, &columns).unwrap().collect();
        let a = rows[0].as_ref().unwrap();
        assert_eq!(
            (a.image.clone(), a.captions.clone()),
            (dir.path().join("a.png"), vec!["hi".to_string()])
        );
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

    /// A parquet table like img2dataset's input: url + caption + extra columns, some null.
    fn write_parquet(path: &Path) {
        use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
        use parquet::file::properties::WriterProperties;
        use parquet::file::writer::SerializedFileWriter;
        use std::sync::Arc;

        let schema = "message row {
            required binary url (UTF8);
            optional binary caption (UTF8);
            optional int64 cls;
            required double similarity;
            required binary thumbnail;
        }";
        let schema = Arc::new(parquet::schema::parser::parse_message_type(schema).unwrap());
        let props = Arc::new(
            WriterProperties::builder()
                .set_compression(parquet::basic::Compression::SNAPPY)
                .build(),
        );
        let file = std::fs::File::create(path).unwrap();
        let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
        let mut group = writer.next_row_group().unwrap();
        let strings = |values: &[&str]| values.iter().map(|v| ByteArray::from(*v)).collect::<Vec<_>>();
        let urls = strings(&["a.png", "file:///abs/b.jpg", "https://example.com/c.jpg", "d.png"]);
        let mut column = group.next_column().unwrap().unwrap();
        column.typed::<ByteArrayType>().write_batch(&urls, None, None).unwrap();
        column.close().unwrap();
        // Captions: row 4 is null (definition level 0).
        let mut column = group.next_column().unwrap().unwrap();
        column
            .typed::<ByteArrayType>()
            .write_batch(&strings(&["a cat", "a dog", "a web image"]), Some(&[1, 1, 1, 0]), None)
            .unwrap();
        column.close().unwrap();
        let mut column = group.next_column().unwrap().unwrap();
        column
            .typed::<Int64Type>()
            .write_batch(&[7], Some(&[1, 0, 0, 0]), None)
            .unwrap();
        column.close().unwrap();
        let mut column = group.next_column().unwrap().unwrap();
        column
            .typed::<DoubleType>()
            .write_batch(&[0.5, 0.25, 0.0, 1.0], None, None)
            .unwrap();
        column.close().unwrap();
        let mut column = group.next_column().unwrap().unwrap();
        let blobs = vec![ByteArray::from(vec![0u8, 1, 2]); 4];
        column.typed::<ByteArrayType>().write_batch(&blobs, None, None).unwrap();
        column.close().unwrap();
        group.close().unwrap();
        writer.close().unwrap();
    }

    #[test]
    fn parquet_rows_like_img2dataset_input() {
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("urls.parquet");
        write_parquet(&table);
        assert_eq!(row_count_hint(&table), Some(4));
        let rows: Vec<_> = read_manifest(&table).unwrap().collect();
        assert_eq!(rows.len(), 4);
        let a = rows[0].as_ref().unwrap();
        assert_eq!(a.image, dir.path().join("a.png"));
        assert_eq!((a.captions.as_slice(), a.label), (&["a cat".to_string()][..], Some(7)));
        assert_eq!(a.fields["similarity"], 0.5);
        assert_eq!(a.fields["url"], "a.png");
        assert!(
            !a.fields.contains_key("thumbnail"),
            "binary columns stay out of the .json"
        );
        let b = rows[1].as_ref().unwrap();
        assert_eq!((b.image.as_path(), b.label), (Path::new("/abs/b.jpg"), None));
        let c = rows[2].as_ref().unwrap_err();
        assert_eq!((c.row, c.reason), (3, SkipReason::MissingImage));
        assert!(
            c.to_string().contains("urls.parquet: row 3") && c.detail.contains("remote URL"),
            "{c}"
        );
        let d = rows[3].as_ref().unwrap_err();
        assert_eq!((d.row, d.reason), (4, SkipReason::MissingCaption));

        // Columns missing: the error names the file and what was found.
        let columns = ManifestColumns {
            image: None,
            caption: Some("TEXT".into()),
        };
        let err = read_manifest_with(&table, &columns).err().unwrap().to_string();
        assert!(
            err.contains("urls.parquet") && err.contains("TEXT") && err.contains("similarity"),
            "{err}"
        );
        // Not parquet at all.
        let fake = dir.path().join("fake.parquet");
        std::fs::write(&fake, b"PAR1 but not really").unwrap();
        let err = read_manifest(&fake).err().unwrap().to_string();
        assert!(err.contains("fake.parquet"), "{err}");
        assert_eq!(row_count_hint(&fake), None);
    }
}
