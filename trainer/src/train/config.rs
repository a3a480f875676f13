//! The train config: one TOML file, each section owned by the component that
//! uses it (`[data]`, `[optim]`, `[schedule]`, `[log]`), validated with errors
//! that name the field. `--set key=value` overrides are applied to the TOML
//! tree before it is deserialised, so they are checked exactly like the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::optim::OptimConfig;
use super::schedule::ScheduleConfig;
use crate::config::ModelConfig;
use crate::TrainError;

/// Which model to train: a preset name (`tiny`), a path to a model TOML/open_clip
/// JSON, or an inline `[model]` table.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSpec {
    /// Preset name or file path, resolved by [`ModelConfig::load`].
    Named(String),
    /// The model config written out in full.
    Inline(ModelConfig),
}

impl ModelSpec {
    /// The concrete model config.
    pub fn resolve(&self) -> Result<ModelConfig, TrainError> {
        match self {
            ModelSpec::Named(name) => {
                ModelConfig::load(name).map_err(|e| TrainError::Config(format!("model = {name:?}: {e}")))
            }
            ModelSpec::Inline(cfg) => {
                cfg.validate()
                    .map_err(|e| TrainError::Config(format!("[model]: {e}")))?;
                Ok(cfg.clone())
            }
        }
    }
}

impl Serialize for ModelSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ModelSpec::Named(n) => s.serialize_str(n),
            ModelSpec::Inline(c) => c.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ModelSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match toml::Value::deserialize(d)? {
            toml::Value::String(s) => Ok(ModelSpec::Named(s)),
            v @ toml::Value::Table(_) => ModelConfig::deserialize(v)
                .map(ModelSpec::Inline)
                .map_err(D::Error::custom),
            other => Err(D::Error::custom(format!(
                "expected a preset name, a file path or a [model] table, got {}",
                other.type_str()
            ))),
        }
    }
}

/// Where the caption of a training sample comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Shard spec: brace ranges, several specs joined by `::`, or a folder of `.tar`.
    pub train: String,
    /// Samples per micro-batch and worker: a step sees
    /// `batch_size × accum_steps × workers` samples.
    pub batch_size: usize,
    /// Micro-batches per optimizer step; their gradients are summed locally and
    /// exchanged between workers once per step.
    pub accum_steps: usize,
    /// Background decode threads.
    pub workers: usize,
    /// Caption source: `"txt"` for the `.txt` member, or `"json:<field>"`.
    pub caption: String,
    /// Shuffle buffer size in samples (0 = no shuffling).
    pub shuffle_buffer: usize,
    /// Images with more pixels than this are skipped (decompression-bomb guard).
    pub max_pixels: u64,
    /// Draw shards with replacement (OpenCLIP's `--dataset-resampled`): every rank draws its
    /// own stream from all shards, and an epoch is `epoch_samples` samples. Off: every sample
    /// once per epoch, shards split across ranks.
    pub resampled: bool,
    /// Sampling weight of each `::`-joined source of `train`, `::`-joined (`"1::0.5"`,
    /// OpenCLIP's `--train-data-upsampling-factors`); every shard of a source gets its
    /// weight. Needs `resampled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_weights: Option<String>,
    /// Samples per virtual epoch over all ranks (OpenCLIP's `--train-num-samples`);
    /// resampled mode only. Unset: the dataset size from `sizes.json` / img2dataset
    /// `*_stats.json` next to the shards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch_samples: Option<u64>,
    /// Where images are CLIP-normalised: `"loader"` (default; the loader writes f32) or
    /// `"device"` (the loader writes u8 levels, a quarter of the bytes to build and
    /// transfer, and the train step normalises them after moving them to the device). The
    /// same samples and crops either way; the values agree to f32 rounding.
    pub normalize: NormalizeOn,
}

/// Where training images are normalised (`data.normalize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormalizeOn {
    /// In the loader threads, f32 batches.
    #[default]
    Loader,
    /// On the training device, from u8 batches.
    Device,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train: String::new(),
            batch_size: 64,
            accum_steps: 1,
            workers: 2,
            caption: "txt".into(),
            shuffle_buffer: 1000,
            max_pixels: 64 * 1024 * 1024,
            resampled: false,
            train_weights: None,
            epoch_samples: None,
            normalize: NormalizeOn::Loader,
        }
    }
}

impl DataConfig {
    /// Checks the section; errors name the field.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.train.trim().is_empty() {
            return Err(TrainError::Config(
                "data.train: no shards given (e.g. \"data/{00000..00009}.tar\")".into(),
            ));
        }
        if self.batch_size == 0 {
            return Err(TrainError::Config("data.batch_size: must be > 0".into()));
        }
        if self.accum_steps == 0 {
            return Err(TrainError::Config("data.accum_steps: must be > 0".into()));
        }
        if self.workers == 0 {
            return Err(TrainError::Config("data.workers: must be > 0".into()));
        }
        if self.caption != "txt" && !self.caption.starts_with("json:") {
            return Err(TrainError::Config(format!(
                "data.caption: expected \"txt\" or \"json:<field>\", got {:?}",
                self.caption
            )));
        }
        if let Some(weights) = &self.train_weights {
            if !self.resampled {
                return Err(TrainError::Config(format!(
                    "data.train_weights: weights {weights:?} need resampled mode (set data.resampled = true); \
                     without it every sample is read once per epoch (OpenCLIP likewise needs --dataset-resampled)"
                )));
            }
            let sources = self.train.split("::").count();
            let given = weights.split("::").count();
            if given != sources {
                return Err(TrainError::Config(format!(
                    "data.train_weights: {given} weight(s) in {weights:?} for {sources} `::`-joined source(s) in data.train"
                )));
            }
            for weight in weights.split("::") {
                let weight = weight.trim();
                if !weight.parse::<f64>().is_ok_and(|w| w.is_finite() && w >= 0.0) {
                    return Err(TrainError::Config(format!(
                        "data.train_weights: weight {weight:?} must be a finite number >= 0"
                    )));
                }
            }
        }
        match self.epoch_samples {
            Some(0) => return Err(TrainError::Config("data.epoch_samples: must be > 0".into())),
            Some(n) if !self.resampled => {
                return Err(TrainError::Config(format!(
                    "data.epoch_samples: {n} is only used with data.resampled = true; without it an epoch \
                     reads every sample once"
                )))
            }
            _ => {}
        }
        Ok(())
    }
}

/// The `[log]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Log (and append to metrics.jsonl) every this many steps.
    pub every: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { every: 10 }
    }
}

/// The `[checkpoint]` section: when to save and what to keep (DESIGN.md §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Save every this many optimizer steps (0 = only on SIGTERM/SIGINT and
    /// when the run stops on non-finite steps).
    pub every: u64,
    /// Keep the newest this many checkpoints.
    pub keep_last: usize,
    /// Also keep every checkpoint whose step is a multiple of this (0 = none).
    pub keep_every: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every: 500,
            keep_last: 3,
            keep_every: 0,
        }
    }
}

/// The contrastive loss over the global batch (DESIGN.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// Softmax cross-entropy both ways (CLIP).
    #[default]
    Clip,
    /// Pairwise sigmoid loss (SigLIP); needs a model with `init_logit_bias`.
    Siglip,
}

/// A whole training run, as written in `configs/train/*.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Run name: outputs go to `<out_dir>/<name>/`.
    pub name: String,
    /// The model to train.
    pub model: ModelSpec,
    /// `"clip"` (default) or `"siglip"`.
    #[serde(default)]
    pub loss: LossKind,
    /// Seed of every random choice (init, data order, augmentation).
    #[serde(default)]
    pub seed: u64,
    /// `"fp32"` (default) or `"bf16"`: autocast of the forward pass to bf16
    /// (open_clip's `--precision amp_bf16`); weights, optimizer and loss stay fp32.
    #[serde(default)]
    pub precision: crate::precision::Precision,
    /// libtorch intra-op threads (0 = libtorch's default).
    #[serde(default)]
    pub threads: usize,
    /// Folder holding run folders.
    #[serde(default = "default_out_dir")]
    pub out_dir: PathBuf,
    /// Training data.
    pub data: DataConfig,
    /// Optimizer.
    #[serde(default)]
    pub optim: OptimConfig,
    /// Learning-rate schedule and run length.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Checkpointing.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Start from these open_clip weights (a safetensors state_dict) instead of
    /// a random init; the model config must match their shapes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// Consecutive non-finite steps (skipped) after which the run saves a
    /// checkpoint of the last good state and stops.
    #[serde(default = "default_max_nonfinite")]
    pub max_nonfinite_steps: u64,
}

fn default_max_nonfinite() -> u64 {
    10
}

fn default_out_dir() -> PathBuf {
    PathBuf::from("runs")
}

impl TrainConfig {
    /// Reads `path`, applies `key=value` overrides (dotted keys, TOML values;
    /// a bare word is taken as a string), deserialises and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io {
            path: path.to_owned(),
            source: e,
        })?;
        let mut tree: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| TrainError::Config(format!("{}: {}", path.display(), e.message())))?;
        for o in overrides {
            apply_override(&mut tree, o)?;
        }
        // serde_path_to_error names the field (`data.batch_size: invalid type ...`).
        let cfg: TrainConfig = serde_path_to_error::deserialize(toml::Value::Table(tree)).map_err(|e| {
            let field = e.path().to_string();
            let msg = e.into_inner().message().to_string();
            let msg = if field == "." { msg } else { format!("{field}: {msg}") };
            TrainError::Config(format!("{}: {msg}", path.display()))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every section.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.name.is_empty() || self.name.contains(['/', '\\']) || self.name.starts_with('.') {
            return Err(TrainError::Config(format!(
                "name: {:?} must be a non-empty folder name without '/'",
                self.name
            )));
        }
        let model = self.model.resolve()?;
        if self.loss == LossKind::Siglip && model.init_logit_bias.is_none() {
            return Err(TrainError::Config(
                "loss = \"siglip\" needs a learned bias: set model.init_logit_bias (open_clip's SigLIP uses -10)"
                    .into(),
            ));
        }
        self.data.validate()?;
        self.optim.validate()?;
        self.schedule.validate()?;
        if self.log.every == 0 {
            return Err(TrainError::Config("log.every: must be > 0".into()));
        }
        if self.checkpoint.keep_last == 0 {
            return Err(TrainError::Config(
                "checkpoint.keep_last: must be > 0 (the newest checkpoint is what a restart resumes from)".into(),
            ));
        }
        Ok(())
    }

    /// The config as it ran: the model written out in full, so a run folder is
    /// self-describing.
    pub fn resolved(&self) -> Result<TrainConfig, TrainError> {
        Ok(TrainConfig {
            model: ModelSpec::Inline(self.model.resolve()?),
            ..self.clone()
        })
    }

    /// The run folder `<out_dir>/<name>`.
    pub fn run_dir(&self) -> PathBuf {
        self.out_dir.join(&self.name)
    }
}

/// Sets `a.b.c = value` in a TOML tree. Keys must name an existing section path
/// or a new leaf; unknown leaves are caught later by `deny_unknown_fields`.
pub fn apply_override(tree: &mut toml::Table, assignment: &str) -> Result<(), TrainError> {
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| TrainError::Config(format!("--set {assignment:?}: expected key=value")))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(TrainError::Config(format!("--set {assignment:?}: empty key")));
    }
    let value = parse_value(raw.trim());
    let parts: Vec<&str> = key.split('.').collect();
    let mut table = tree;
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| TrainError::Config(format!("--set {key}: {} is not a table", parts[..=i].join("."))))?;
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    // Parse as a TOML value by wrapping it in a one-key document.
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("t.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    const MINIMAL: &str = "name = \"x\"\nmodel = \"nano\"\n[data]\ntrain = \"a.tar\"\n";

    #[test]
    fn overrides_apply_and_are_typed() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), MINIMAL);
        let c = TrainConfig::load(
            &p,
            &["optim.lr=1e-3".into(), "data.batch_size=8".into(), "name=run2".into()],
        )
        .unwrap();
        assert_eq!(c.optim.lr, 1e-3);
        assert_eq!(c.data.batch_size, 8);
        assert_eq!(c.name, "run2");
    }

    #[test]
    fn unknown_field_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), &format!("{MINIMAL}[optim]\nlrr = 0.1\n"));
        let e = TrainConfig::load(&p, &[]).unwrap_err().to_string();
        assert!(e.contains("lrr"), "{e}");
        let e = TrainConfig::load(&write(d.path(), MINIMAL), &["schedule.stepz=3".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("stepz"), "{e}");
    }

    #[test]
    fn mistyped_field_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), MINIMAL);
        let e = TrainConfig::load(&p, &["data.batch_size=\"many\"".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_size") || e.contains("many"), "{e}");
    }

    #[test]
    fn precision_defaults_to_fp32_and_a_wrong_value_is_named() {
        use crate::precision::Precision;
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), MINIMAL);
        assert_eq!(TrainConfig::load(&p, &[]).unwrap().precision, Precision::Fp32);
        let c = TrainConfig::load(&p, &["precision=bf16".into()]).unwrap();
        assert_eq!(c.precision, Precision::Bf16);
        let e = TrainConfig::load(&p, &["precision=fp16".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("precision") && e.contains("fp16"), "{e}");
    }

    #[test]
    fn resolved_config_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let c = TrainConfig::load(&write(d.path(), MINIMAL), &[]).unwrap();
        let r = c.resolved().unwrap();
        let text = toml::to_string(&r).unwrap();
        let back: TrainConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, r);
        assert!(matches!(back.model, ModelSpec::Inline(_)));
    }
}
