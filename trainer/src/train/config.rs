//! The train config: one TOML file whose sections are owned by the components that use
//! them and validated by them with errors that name the field: `model` ([`ModelSpec`]),
//! `[data]` ([`DataConfig`]), `[optim]` ([`OptimConfig`]), `[schedule]`
//! ([`ScheduleConfig`]), `[log]` ([`LogConfig`]), `[checkpoint]` ([`CheckpointConfig`]),
//! `loss` ([`LossKind`]), `precision` ([`Precision`]). `--set key=value` overrides are
//! applied to the TOML tree before it is deserialised, so they are checked exactly like
//! the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::metrics::LogConfig;
use super::step::StepSettings;
use crate::checkpoint::CheckpointConfig;
use crate::data::DataConfig;
use crate::eval::EvalConfig;
use crate::field::FieldError;
use crate::loss::LossKind;
use crate::model::ModelSpec;
use crate::optim::{OptimConfig, ScheduleConfig};
use crate::precision::Precision;
use crate::TrainError;

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
    /// Compute the loss around a ring of ranks with logits `loss_tile × loss_tile` at a
    /// time, never the B×N matrix (Inf-CL's tiling): memory linear in the batch, the same
    /// loss and gradients. 0 (the default): the untiled loss (gather the features, B×N
    /// logits), fastest while its memory fits.
    #[serde(default)]
    pub loss_tile: usize,
    /// Seed of every random choice (init, data order, augmentation).
    #[serde(default)]
    pub seed: u64,
    /// `"fp32"` (default) or `"bf16"`: autocast of the forward pass to bf16
    /// (open_clip's `--precision amp_bf16`); weights, optimizer and loss stay fp32.
    #[serde(default)]
    pub precision: Precision,
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
    /// Evaluation while training (zero-shot, retrieval), on every rank.
    #[serde(default, skip_serializing_if = "EvalConfig::is_default")]
    pub eval: EvalConfig,
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
        let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
        let mut tree: toml::Table = text.parse().map_err(|e: toml::de::Error| TrainError::ConfigFile {
            path: path.to_owned(),
            reason: e.message().to_string(),
        })?;
        for o in overrides {
            apply_override(&mut tree, o)?;
        }
        // serde_path_to_error names the field (`data.batch_size: invalid type ...`).
        let cfg: TrainConfig = serde_path_to_error::deserialize(toml::Value::Table(tree)).map_err(|e| {
            let field = e.path().to_string();
            let msg = e.into_inner().message().to_string();
            let reason = if field == "." { msg } else { format!("{field}: {msg}") };
            TrainError::ConfigFile {
                path: path.to_owned(),
                reason,
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every section.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.name.is_empty() || self.name.contains(['/', '\\']) || self.name.starts_with('.') {
            return Err(FieldError::new(
                "name",
                format!("{:?} must be a non-empty folder name without '/'", self.name),
            )
            .into());
        }
        let model = self.model.resolve()?;
        if self.loss == LossKind::Siglip && model.init_logit_bias.is_none() {
            return Err(FieldError::new(
                "loss",
                "\"siglip\" needs a learned bias: set model.init_logit_bias (open_clip's SigLIP uses -10)",
            )
            .into());
        }
        self.data.validate()?;
        self.optim.validate()?;
        self.schedule.validate()?;
        self.log.validate()?;
        self.checkpoint.validate()?;
        if let Some(late) = self.checkpoint.at_steps.iter().find(|s| **s > self.schedule.steps) {
            return Err(FieldError::new(
                "checkpoint.at_steps",
                format!(
                    "step {late} is past the run's last step (schedule.steps = {})",
                    self.schedule.steps
                ),
            )
            .into());
        }
        self.eval.validate()?;
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

    /// What the train step takes from the config.
    pub fn step_settings(&self) -> StepSettings {
        StepSettings {
            loss: self.loss,
            loss_tile: self.loss_tile,
            precision: self.precision,
            accum_steps: self.data.accum_steps,
            overlap_reduce: self.optim.overlap_reduce,
        }
    }

    /// Samples per optimizer step over `world_size` workers: `data.global_batch`, or
    /// `data.batch_size × data.accum_steps × workers`.
    pub fn global_batch(&self, world_size: usize) -> Result<u64, TrainError> {
        let micro = self.data.micro_batch(world_size).map_err(TrainError::Config)?;
        Ok((micro * self.data.accum_steps * world_size) as u64)
    }

    /// The run folder `<out_dir>/<name>`.
    pub fn run_dir(&self) -> PathBuf {
        self.out_dir.join(&self.name)
    }
}

/// Sets `a.b.c = value` in a TOML tree. Keys must name an existing section path
/// or a new leaf; unknown leaves are caught later by `deny_unknown_fields`.
pub fn apply_override(tree: &mut toml::Table, assignment: &str) -> Result<(), TrainError> {
    let (key, raw) = assignment.split_once('=').ok_or_else(|| TrainError::Override {
        assignment: format!("{assignment:?}"),
        reason: "expected key=value".into(),
    })?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(TrainError::Override {
            assignment: format!("{assignment:?}"),
            reason: "empty key".into(),
        });
    }
    let value = parse_value(raw.trim());
    let parts: Vec<&str> = key.split('.').collect();
    let mut table = tree;
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| TrainError::Override {
            assignment: key.to_string(),
            reason: format!("{} is not a table", parts[..=i].join(".")),
        })?;
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

    #[test]
    fn a_bf16_gradient_reduce_needs_the_replicated_optimizer() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), MINIMAL);
        let ok = TrainConfig::load(&p, &["optim.grad_reduce=bf16".into()]).unwrap();
        assert_eq!(ok.optim.grad_reduce, crate::optim::GradReduce::Bf16);
        let e = TrainConfig::load(&p, &["optim.grad_reduce=bf16".into(), "optim.shard=true".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("optim.grad_reduce"), "{e}");
        let e = TrainConfig::load(&p, &["optim.grad_reduce=fp8".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("grad_reduce") && e.contains("fp8"), "{e}");
    }
}
