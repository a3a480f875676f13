//! `ferroclip.curate`: MetaCLIP matching and balancing, ALIGN's filters and K-LITE over
//! Python lists and over shard specs — the stages of `ferroclip curate`, same decisions.
//!
//! - `match_entries(texts, metadata)`: the MetaCLIP entries each text matches
//!   (`ferroclip curate match`).
//! - `align_text_filter(texts)`: ALIGN's text rules over texts alone.
//! - `curate_samples(samples, config=|toml=)`: a curate config's stages over samples given
//!   as webdataset-style dicts (`{"__key__": ..., "txt": ..., "jpg": bytes}`).
//! - `curate_shards(input, output, config=|toml=)`: the whole pipeline over shards, as
//!   `ferroclip curate` runs it in one process; returns report.json as a dict.
//!
//! Stages that need a model (`dfn`, `align` with `near_duplicate_checkpoint`) need the
//! `ferroclip` binary (libtorch) and are refused here by name.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use curator::align::align_text_rules;
use curator::metaclip::{Matcher, Metadata, DEFAULT_WORDNET_DIR};
use curator::AlignConfig;
use curator::{curate_samples as run_on_samples, CurateConfig, NamedStage, SampleOutcome, SingleProcess};
use dataloader::RawSample;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::errors::{curate_error, data_error};

/// The `shard` of samples that come from Python lists.
const IN_MEMORY_SHARD: &str = "<memory>";

/// The MetaCLIP entries each of `texts` matches, in entry order. `metadata` is `"wordnet"`
/// (MetaCLIP's numbers 0-99 plus the WordNet synset names), a list of entries, or a file
/// (one entry per line, or a JSON list when it ends in `.json`).
#[pyfunction]
#[pyo3(signature = (texts, metadata=None, wordnet_dir=DEFAULT_WORDNET_DIR))]
pub fn match_entries(
    py: Python<'_>,
    texts: Vec<String>,
    metadata: Option<Bound<'_, PyAny>>,
    wordnet_dir: &str,
) -> PyResult<Vec<Vec<String>>> {
    let metadata = match metadata {
        None => Metadata::builtin(true, Some(Path::new(wordnet_dir))).map_err(curate_error)?,
        Some(metadata) => metadata_from(&metadata, wordnet_dir)?,
    };
    py.detach(|| {
        let matcher = Matcher::new(&metadata).map_err(curate_error)?;
        Ok(texts
            .iter()
            .map(|text| {
                matcher
                    .matched(text)
                    .into_iter()
                    .map(|id| metadata.entry(id).to_string())
                    .collect()
            })
            .collect())
    })
}

/// `"wordnet"`, a file, or a list of entries.
fn metadata_from(metadata: &Bound<'_, PyAny>, wordnet_dir: &str) -> PyResult<Metadata> {
    Ok(match metadata.extract::<String>() {
        Ok(name) if name == "wordnet" => Metadata::builtin(true, Some(Path::new(wordnet_dir))).map_err(curate_error)?,
        Ok(file) => {
            let mut metadata = Metadata::default();
            metadata.extend_from_file(Path::new(&file)).map_err(curate_error)?;
            metadata
        }
        Err(_) => {
            Metadata::from_entries(metadata.extract::<Vec<String>>().map_err(|_| {
                PyValueError::new_err("metadata: expected \"wordnet\", a file path or a list of entries")
            })?)
        }
    })
}

/// ALIGN's text rules over `texts` alone: for each text `None` (kept) or the reason the
/// `align` stage would drop it for when its image passes (`caption_too_long`,
/// `text_length`, `rare_token`; the vocabulary is counted over `texts`). Defaults are ALIGN's.
#[pyfunction]
#[pyo3(signature = (texts, *, min_unigrams=None, max_unigrams=None, rare_token_top_k=None, max_caption_bytes=None))]
pub fn align_text_filter(
    py: Python<'_>,
    texts: Vec<String>,
    min_unigrams: Option<usize>,
    max_unigrams: Option<usize>,
    rare_token_top_k: Option<u64>,
    max_caption_bytes: Option<usize>,
) -> PyResult<Vec<Option<&'static str>>> {
    let defaults = AlignConfig::default();
    let cfg = AlignConfig {
        min_unigrams: min_unigrams.unwrap_or(defaults.min_unigrams),
        max_unigrams: max_unigrams.unwrap_or(defaults.max_unigrams),
        rare_token_top_k: rare_token_top_k.unwrap_or(defaults.rare_token_top_k),
        max_caption_bytes: max_caption_bytes.unwrap_or(defaults.max_caption_bytes),
        ..defaults
    };
    cfg.validate("align_text_filter").map_err(curate_error)?;
    Ok(py.detach(|| {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        align_text_rules(&refs, &cfg)
    }))
}

/// The config from a file (`config`) or TOML text (`toml`), and the folder its relative
/// paths resolve against.
fn load_config(config: Option<PathBuf>, toml: Option<&str>) -> PyResult<(CurateConfig, PathBuf)> {
    match (config, toml) {
        (Some(path), None) => {
            let cfg = CurateConfig::from_file(&path).map_err(curate_error)?;
            let base = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            Ok((cfg, base))
        }
        (None, Some(text)) => {
            let cfg = CurateConfig::from_toml(text, Path::new("<toml>")).map_err(curate_error)?;
            Ok((cfg, PathBuf::from(".")))
        }
        _ => Err(PyValueError::new_err(
            "give exactly one of config= (a TOML file) and toml= (TOML text)",
        )),
    }
}

fn build_stages(cfg: &CurateConfig, base: &Path) -> PyResult<Vec<NamedStage>> {
    cfg.validate().map_err(curate_error)?;
    cfg.build_stages(base).map_err(curate_error)
}

/// A webdataset-style dict as a sample: `__key__` (str) and members by extension (bytes, or
/// str stored as UTF-8).
fn raw_sample(index: usize, item: &Bound<'_, PyAny>) -> PyResult<RawSample> {
    let dict = item
        .cast::<PyDict>()
        .map_err(|_| PyValueError::new_err(format!("samples[{index}]: expected a dict")))?;
    let mut key = None;
    let mut members = BTreeMap::new();
    for (name, value) in dict.iter() {
        let name: String = name
            .extract()
            .map_err(|_| PyValueError::new_err(format!("samples[{index}]: keys must be str")))?;
        if name == "__key__" {
            key = Some(
                value
                    .extract::<String>()
                    .map_err(|_| PyValueError::new_err(format!("samples[{index}][\"__key__\"]: expected a str")))?,
            );
            continue;
        }
        let bytes = match value.extract::<String>() {
            Ok(text) => text.into_bytes(),
            Err(_) => value
                .extract::<Vec<u8>>()
                .map_err(|_| PyValueError::new_err(format!("samples[{index}][{name:?}]: expected bytes or str")))?,
        };
        // The tar reader lowercases extensions; so does this.
        members.insert(name.to_lowercase(), bytes);
    }
    let key = key.ok_or_else(|| PyValueError::new_err(format!("samples[{index}]: no \"__key__\"")))?;
    Ok(RawSample {
        key,
        shard: PathBuf::from(IN_MEMORY_SHARD),
        members,
    })
}

/// Run a curate config's stages over `samples` (dicts of `__key__` and members). Returns
/// one dict per sample, in order: `key`, `kept`, and either `sample` (the sample as it left
/// the last stage, members as bytes) or `stage` and `reason` of the drop.
#[pyfunction]
#[pyo3(signature = (samples, *, config=None, toml=None))]
pub fn curate_samples<'py>(
    py: Python<'py>,
    samples: Bound<'py, PyList>,
    config: Option<PathBuf>,
    toml: Option<&str>,
) -> PyResult<Bound<'py, PyList>> {
    let (cfg, base) = load_config(config, toml)?;
    let stages = build_stages(&cfg, &base)?;
    let raw: Vec<RawSample> = samples
        .iter()
        .enumerate()
        .map(|(i, item)| raw_sample(i, &item))
        .collect::<PyResult<_>>()?;
    let keys: Vec<String> = raw.iter().map(|s| s.key.clone()).collect();
    let outcomes = py.detach(|| run_on_samples(stages, raw)).map_err(curate_error)?;
    let results = PyList::empty(py);
    for (key, outcome) in keys.into_iter().zip(outcomes) {
        let result = PyDict::new(py);
        result.set_item("key", key)?;
        match outcome {
            SampleOutcome::Kept(sample) => {
                result.set_item("kept", true)?;
                let members = PyDict::new(py);
                members.set_item("__key__", &sample.key)?;
                for (ext, bytes) in &sample.members {
                    members.set_item(ext, PyBytes::new(py, bytes))?;
                }
                result.set_item("sample", members)?;
            }
            SampleOutcome::Dropped { stage, reason } => {
                result.set_item("kept", false)?;
                result.set_item("stage", stage)?;
                result.set_item("reason", reason)?;
            }
        }
        results.append(result)?;
    }
    Ok(results)
}

/// Curate the shards of `input` (a shard spec) into `output` (a new or empty folder), as
/// `ferroclip curate` does in one process: mirrored shards, sizes.json, report.json and
/// report.png. Returns report.json's content. `threads=0` uses every core.
#[pyfunction]
#[pyo3(signature = (input, output, *, config=None, toml=None, threads=0))]
pub fn curate_shards<'py>(
    py: Python<'py>,
    input: &str,
    output: PathBuf,
    config: Option<PathBuf>,
    toml: Option<&str>,
    threads: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let (cfg, base) = load_config(config, toml)?;
    let stages = build_stages(&cfg, &base)?;
    let shards = dataloader::expand_shards(input).map_err(data_error)?;
    let report = py
        .detach(|| curator::run_pipeline(stages, &shards, &output, threads, &SingleProcess))
        .map_err(curate_error)?;
    let json = serde_json::to_string(&report).map_err(|e| PyValueError::new_err(format!("report: {e}")))?;
    py.import("json")?.getattr("loads")?.call1((json,))
}
