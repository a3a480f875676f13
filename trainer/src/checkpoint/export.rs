//! A ferroclip checkpoint as an open_clip folder: find a run's or checkpoint's weights and
//! config on disk, and export them as the `local-dir:` layout open_clip loads (see
//! [`crate::model::open_clip`] for the layout).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::store::{CONFIG_FILE as CHECKPOINT_CONFIG_FILE, LATEST_FILE, MODEL_FILE as CHECKPOINT_WEIGHTS_FILE};
use crate::model::open_clip::{open_clip_folder_config, InteropError, OPEN_CLIP_CONFIG_FILE, OPEN_CLIP_WEIGHTS_FILE};
use crate::model::weights::{self, WeightsError};
use crate::model::{Clip, ModelConfig, ModelSpec};

/// A ferroclip checkpoint located on disk: its weights and its run config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointFiles {
    /// The folder holding the weights (a run folder or `checkpoints/step_N`).
    pub dir: PathBuf,
    /// `dir/model.safetensors`.
    pub weights: PathBuf,
    /// The nearest `config.toml`: in `dir`, or up to two folders above it.
    pub config: PathBuf,
}

impl CheckpointFiles {
    /// The same checkpoint with the moving average of its weights (`ema.safetensors`,
    /// `optim.ema_decay`) as the weights.
    pub fn ema(mut self) -> Result<Self, InteropError> {
        let path = self.dir.join(crate::optim::EMA_FILE);
        if !path.is_file() {
            return Err(InteropError::Missing {
                what: "moving-average weights (ema.safetensors: the run needs optim.ema_decay)",
                path,
            });
        }
        self.weights = path;
        Ok(self)
    }
}

/// Finds the weights and config of `path`, which is a run folder
/// (`runs/<name>/`), a checkpoint folder (`runs/<name>/checkpoints/step_N/`), or a
/// `checkpoints` folder, whose `latest` file names the newest step folder. A run
/// folder's own `model.safetensors` (the final model) wins over its
/// `checkpoints/latest`. Errors name the file that is missing.
pub fn locate_checkpoint(path: &Path) -> Result<CheckpointFiles, InteropError> {
    if !path.is_dir() {
        return Err(InteropError::Missing {
            what: "checkpoint folder",
            path: path.to_path_buf(),
        });
    }
    let dir = if path.join(CHECKPOINT_WEIGHTS_FILE).is_file() {
        path.to_path_buf()
    } else if path.join(LATEST_FILE).exists() {
        follow_latest(path)?
    } else if path.join("checkpoints").join(LATEST_FILE).exists() {
        follow_latest(&path.join("checkpoints"))?
    } else {
        return Err(InteropError::Missing {
            what: "checkpoint weights (model.safetensors, or checkpoints/latest naming a step folder)",
            path: path.join(CHECKPOINT_WEIGHTS_FILE),
        });
    };
    let config = dir
        .ancestors()
        .take(3)
        .map(|d| d.join(CHECKPOINT_CONFIG_FILE))
        .find(|p| p.is_file())
        .ok_or_else(|| InteropError::Missing {
            what: "run config (config.toml, in the checkpoint folder or up to two folders above)",
            path: dir.join(CHECKPOINT_CONFIG_FILE),
        })?;
    Ok(CheckpointFiles {
        weights: dir.join(CHECKPOINT_WEIGHTS_FILE),
        dir,
        config,
    })
}

/// `checkpoints/latest` holds the name of (or path to) the newest step folder, or is a
/// symlink to it.
fn follow_latest(checkpoints: &Path) -> Result<PathBuf, InteropError> {
    let latest = checkpoints.join(LATEST_FILE);
    if latest.is_dir() && latest.join(CHECKPOINT_WEIGHTS_FILE).is_file() {
        return Ok(latest);
    }
    let text = std::fs::read_to_string(&latest).map_err(|source| InteropError::Io {
        path: latest.clone(),
        source,
    })?;
    let named = PathBuf::from(text.trim());
    if named.as_os_str().is_empty() {
        return Err(InteropError::Missing {
            what: "step folder name in checkpoints/latest (the file is empty)",
            path: latest,
        });
    }
    let dir = checkpoints.join(named); // an absolute name replaces the base
    if !dir.join(CHECKPOINT_WEIGHTS_FILE).is_file() {
        return Err(InteropError::Missing {
            what: "checkpoint weights named by checkpoints/latest",
            path: dir.join(CHECKPOINT_WEIGHTS_FILE),
        });
    }
    Ok(dir)
}

/// The model config of a run's `config.toml`: its `model` entry, an inline
/// table (what a resolved config holds) or a preset name / model file path.
pub fn model_config_from_run_config(path: &Path) -> Result<ModelConfig, InteropError> {
    model_config_from_run_table(&read_run_config(path)?, path)
}

/// A run's `config.toml` at `path` as a TOML table.
pub fn read_run_config(path: &Path) -> Result<toml::Table, InteropError> {
    let text = std::fs::read_to_string(path).map_err(|source| InteropError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| InteropError::RunConfig {
        path: path.to_path_buf(),
        source,
    })
}

/// The `model` entry of the run config `table` (read from `path`, which errors name).
pub fn model_config_from_run_table(table: &toml::Table, path: &Path) -> Result<ModelConfig, InteropError> {
    let config_error = |message: String| InteropError::Config {
        path: path.to_path_buf(),
        message,
    };
    let model = table
        .get("model")
        .ok_or_else(|| config_error("no `model` entry".to_string()))?;
    let spec = ModelSpec::deserialize(model.clone()).map_err(|e| config_error(format!("model: {e}")))?;
    spec.resolve().map_err(|source| InteropError::ModelEntry {
        path: path.to_path_buf(),
        source,
    })
}

/// What [`export_open_clip`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenClipExport {
    /// The checkpoint that was exported.
    pub source: CheckpointFiles,
    /// `out/open_clip_model.safetensors`.
    pub weights: PathBuf,
    /// `out/open_clip_config.json`.
    pub config: PathBuf,
    /// Number of tensors written.
    pub tensors: usize,
    /// The exported model's config.
    pub model: ModelConfig,
}

/// Exports the checkpoint at `checkpoint` (see [`locate_checkpoint`]) into the
/// folder `out` (created if needed) as [`OPEN_CLIP_WEIGHTS_FILE`] and
/// [`OPEN_CLIP_CONFIG_FILE`]. The weights are first loaded into a model built
/// from the run's config, so a checkpoint that does not match its config fails
/// here, naming the keys, rather than later in open_clip.
pub fn export_open_clip(checkpoint: &Path, out: &Path) -> Result<OpenClipExport, InteropError> {
    export_open_clip_files(locate_checkpoint(checkpoint)?, out)
}

/// [`export_open_clip`] of located files (e.g. [`CheckpointFiles::ema`]).
pub fn export_open_clip_files(source: CheckpointFiles, out: &Path) -> Result<OpenClipExport, InteropError> {
    let model = model_config_from_run_config(&source.config)?;
    let vs = VarStore::new(Device::Cpu);
    let _clip = Clip::new(&vs.root(), &model);
    weights::load_safetensors(&vs, &source.weights)?;

    std::fs::create_dir_all(out).map_err(|source| InteropError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let weights_path = out.join(OPEN_CLIP_WEIGHTS_FILE);
    let variables: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let tensors: Vec<(String, Tensor)> = variables
        .into_iter()
        .map(|(name, t)| (name, t.detach().to_kind(Kind::Float).contiguous()))
        .collect();
    Tensor::write_safetensors(&tensors, &weights_path).map_err(|e| WeightsError::Write {
        path: weights_path.clone(),
        message: e.to_string(),
    })?;

    let config_path = out.join(OPEN_CLIP_CONFIG_FILE);
    let mut text = serde_json::to_string_pretty(&open_clip_folder_config(&model)).map_err(|e| InteropError::Io {
        path: config_path.clone(),
        source: std::io::Error::other(e),
    })?;
    text.push('\n');
    std::fs::write(&config_path, text).map_err(|source| InteropError::Io {
        path: config_path.clone(),
        source,
    })?;
    Ok(OpenClipExport {
        source,
        weights: weights_path,
        config: config_path,
        tensors: tensors.len(),
        model,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::open_clip::load_open_clip;
    use crate::model::open_clip::tests::{fixture_config, max_diff, model};
    use serde_json::{json, Value};

    /// A run folder with a final model and two checkpoints; returns the run path.
    fn write_run(root: &Path, cfg: &ModelConfig) -> PathBuf {
        let run = root.join("run");
        let (vs, _clip) = model(cfg, 1);
        let mut table = toml::Table::new();
        table.insert("name".into(), toml::Value::String("run".into()));
        table.insert("model".into(), toml::Value::try_from(cfg).expect("model table"));
        let config = toml::to_string(&table).expect("toml");
        for step in ["step_00000010", "step_00000020"] {
            let dir = run.join("checkpoints").join(step);
            std::fs::create_dir_all(&dir).expect("mkdir");
            weights::save_safetensors(&vs, dir.join(CHECKPOINT_WEIGHTS_FILE)).expect("save");
            std::fs::write(dir.join(CHECKPOINT_CONFIG_FILE), &config).expect("config");
        }
        std::fs::write(run.join("checkpoints/latest"), "step_00000020\n").expect("latest");
        weights::save_safetensors(&vs, run.join(CHECKPOINT_WEIGHTS_FILE)).expect("save");
        std::fs::write(run.join(CHECKPOINT_CONFIG_FILE), &config).expect("config");
        run
    }

    #[test]
    fn interop_locate_checkpoint_accepts_run_step_and_checkpoints_folders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = write_run(dir.path(), &fixture_config());
        assert_eq!(locate_checkpoint(&run).expect("run").dir, run);
        let step10 = run.join("checkpoints/step_00000010");
        let found = locate_checkpoint(&step10).expect("step");
        assert_eq!(found.dir, step10);
        assert_eq!(found.config, step10.join("config.toml"));
        let found = locate_checkpoint(&run.join("checkpoints")).expect("checkpoints");
        assert_eq!(found.dir, run.join("checkpoints/step_00000020"));

        // Without the run's final model, the run folder follows checkpoints/latest.
        std::fs::remove_file(run.join(CHECKPOINT_WEIGHTS_FILE)).expect("rm");
        assert_eq!(
            locate_checkpoint(&run).expect("run via latest").dir,
            run.join("checkpoints/step_00000020")
        );
        // A step folder without its own config.toml finds the run's.
        std::fs::remove_file(step10.join(CHECKPOINT_CONFIG_FILE)).expect("rm");
        assert_eq!(
            locate_checkpoint(&step10).expect("step").config,
            run.join("config.toml")
        );
    }

    #[test]
    fn interop_locate_checkpoint_errors_name_the_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = locate_checkpoint(&dir.path().join("nope"))
            .expect_err("no folder")
            .to_string();
        assert!(err.contains("nope"), "{err}");
        let err = locate_checkpoint(dir.path()).expect_err("empty folder").to_string();
        assert!(err.contains("model.safetensors"), "{err}");

        let run = write_run(dir.path(), &fixture_config());
        std::fs::remove_file(run.join(CHECKPOINT_WEIGHTS_FILE)).expect("rm");
        std::fs::write(run.join("checkpoints/latest"), "step_00000099").expect("latest");
        let err = locate_checkpoint(&run).expect_err("dangling latest").to_string();
        assert!(err.contains("step_00000099/model.safetensors"), "{err}");

        let lone = dir.path().join("lone");
        std::fs::create_dir_all(&lone).expect("mkdir");
        std::fs::copy(
            run.join("checkpoints/step_00000010/model.safetensors"),
            lone.join("model.safetensors"),
        )
        .expect("copy");
        let err = locate_checkpoint(&lone).expect_err("no config").to_string();
        assert!(err.contains("config.toml"), "{err}");
    }

    #[test]
    fn interop_export_round_trips_through_load_open_clip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = fixture_config();
        let run = write_run(dir.path(), &cfg);
        let out = dir.path().join("export");
        let export = export_open_clip(&run, &out).expect("export");
        assert_eq!(export.model, cfg);
        assert_eq!(export.tensors, 63);

        // Compared with the file, not a re-seeded model: tests share torch's global RNG.
        let want: BTreeMap<String, Tensor> = Tensor::read_safetensors(run.join(CHECKPOINT_WEIGHTS_FILE))
            .expect("run weights")
            .into_iter()
            .collect();
        let (dst, _clip) = model(&cfg, 2);
        load_open_clip(&dst, &export.weights).expect("reload");
        for (name, var) in dst.variables() {
            assert_eq!(max_diff(&var, &want[&name]), 0.0, "{name}");
        }

        // The config file's model_cfg reads back as the same model config.
        let folder: Value =
            serde_json::from_str(&std::fs::read_to_string(&export.config).expect("read")).expect("json");
        let model_cfg = dir.path().join("model_cfg.json");
        std::fs::write(&model_cfg, folder["model_cfg"].to_string()).expect("write");
        assert_eq!(ModelConfig::from_open_clip_json(&model_cfg).expect("parse"), cfg);
        let mean0 = folder["preprocess_cfg"]["mean"][0].as_f64().expect("mean");
        assert_eq!(mean0 as f32, 0.481_454_66_f32); // open_clip's OPENAI_DATASET_MEAN[0]
        assert_eq!(folder["model_cfg"]["init_logit_bias"], json!(-10.0));
    }

    #[test]
    fn interop_export_of_mismatched_checkpoint_names_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = write_run(dir.path(), &fixture_config());
        let mut other = fixture_config();
        other.init_logit_bias = None;
        let mut table = toml::Table::new();
        table.insert("model".into(), toml::Value::try_from(&other).expect("model table"));
        std::fs::write(run.join("config.toml"), toml::to_string(&table).expect("toml")).expect("write");
        let err = export_open_clip(&run, &dir.path().join("out"))
            .expect_err("config lacks logit_bias")
            .to_string();
        assert!(
            err.contains("logit_bias") && err.contains("run/model.safetensors"),
            "{err}"
        );

        std::fs::write(run.join("config.toml"), "name = \"x\"\n").expect("write");
        let err = export_open_clip(&run, &dir.path().join("out"))
            .expect_err("no model")
            .to_string();
        assert!(err.contains("config.toml") && err.contains("model"), "{err}");
    }

    #[test]
    fn the_exported_folder_config_reads_back_as_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("open_clip_config.json");
        let cfg = ModelConfig::preset("nano").unwrap();
        std::fs::write(&path, open_clip_folder_config(&cfg).to_string()).unwrap();
        assert_eq!(ModelConfig::from_open_clip_json(&path).unwrap(), cfg);
    }
}
