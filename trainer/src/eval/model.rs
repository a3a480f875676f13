//! A CLIP model loaded for evaluation, and the normalised embeddings it gives.

use std::path::{Path, PathBuf};

use dataloader::Tokenizer;
use serde::Deserialize;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::metrics::l2_normalize;
use super::EvalError;
use crate::model::weights;
use crate::model::Clip;
use crate::model::ModelConfig;
use crate::model::ModelSpec;

/// Weights file name inside a run or checkpoint folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Config file name inside a run folder.
pub const CONFIG_FILE: &str = "config.toml";

/// A model ready to embed: weights loaded, on `device`, with its tokenizer.
pub struct EvalModel {
    /// The network.
    pub clip: Clip,
    /// Its variables (kept alive for `clip`).
    pub vs: VarStore,
    /// Its config.
    pub config: ModelConfig,
    /// Where it runs.
    pub device: Device,
    tokenizer: Tokenizer,
}

impl EvalModel {
    /// Builds `config`'s model on `device` and loads `weights_path` (a ferroclip or open_clip
    /// safetensors state_dict; names and shapes are checked both ways).
    pub fn load(config: ModelConfig, weights_path: &Path, device: Device) -> Result<Self, EvalError> {
        if !weights_path.is_file() {
            return Err(EvalError::Missing {
                what: "weights file",
                path: weights_path.to_path_buf(),
            });
        }
        let vs = VarStore::new(device);
        let clip = Clip::new(&vs.root(), &config);
        weights::load_safetensors(&vs, weights_path)?;
        Ok(Self {
            clip,
            vs,
            config,
            device,
            tokenizer: Tokenizer::new(),
        })
    }

    /// Image side length the model expects.
    pub fn image_size(&self) -> u32 {
        self.config.vision.image_size as u32
    }

    /// L2-normalised embeddings (B, E) on the CPU of `count` CLIP-normalised CHW images
    /// laid out contiguously in `images`.
    pub fn embed_images(&self, images: &[f32], count: usize) -> Tensor {
        let size = self.config.vision.image_size;
        let _guard = tch::no_grad_guard();
        let batch = Tensor::from_slice(images)
            .view([count as i64, 3, size, size])
            .to_device(self.device);
        l2_normalize(&self.clip.encode_image(&batch, false)).to_device(Device::Cpu)
    }

    /// L2-normalised embeddings (T, E) on the CPU of `texts`, encoded `batch_size` at a time.
    pub fn embed_texts(&self, texts: &[String], batch_size: usize) -> Tensor {
        let context_length = self.config.text.context_length as usize;
        let _guard = tch::no_grad_guard();
        let parts: Vec<Tensor> = texts
            .chunks(batch_size.max(1))
            .map(|chunk| {
                let ids: Vec<i64> = chunk
                    .iter()
                    .flat_map(|t| self.tokenizer.tokenize(t, context_length))
                    .collect();
                let tokens = Tensor::from_slice(&ids)
                    .view([chunk.len() as i64, context_length as i64])
                    .to_device(self.device);
                l2_normalize(&self.clip.encode_text(&tokens, false)).to_device(Device::Cpu)
            })
            .collect();
        if parts.is_empty() {
            return Tensor::zeros([0, self.config.embed_dim], (Kind::Float, Device::Cpu));
        }
        Tensor::cat(&parts, 0)
    }
}

/// Loads a model from a run or checkpoint folder: `DIR/model.safetensors`, or the folder
/// `DIR/checkpoints/latest` points at; the architecture from the `model` entry of the
/// nearest `config.toml` (in the weights' folder or up to two folders above it, so
/// `runs/x/checkpoints/step_100/` finds `runs/x/config.toml`).
pub fn load_checkpoint(dir: &Path, device: Device) -> Result<EvalModel, EvalError> {
    if !dir.is_dir() {
        return Err(EvalError::Missing {
            what: "checkpoint folder",
            path: dir.to_path_buf(),
        });
    }
    let weights_dir = if dir.join(WEIGHTS_FILE).is_file() {
        dir.to_path_buf()
    } else {
        latest_checkpoint(dir)?
    };
    let config_path = weights_dir
        .ancestors()
        .take(3)
        .map(|d| d.join(CONFIG_FILE))
        .find(|p| p.is_file())
        .ok_or_else(|| EvalError::Missing {
            what: "run config (config.toml)",
            path: weights_dir.join(CONFIG_FILE),
        })?;
    let config = model_config_from_run_config(&config_path)?;
    EvalModel::load(config, &weights_dir.join(WEIGHTS_FILE), device)
}

/// `DIR/checkpoints/latest`: a symlink to, or a file naming, a folder holding the weights.
fn latest_checkpoint(dir: &Path) -> Result<PathBuf, EvalError> {
    let latest = dir.join("checkpoints").join("latest");
    let target = if latest.is_dir() {
        Some(latest.clone())
    } else if latest.is_file() {
        std::fs::read_to_string(&latest).ok().map(|name| {
            let name = PathBuf::from(name.trim());
            if name.is_absolute() {
                name
            } else {
                dir.join("checkpoints").join(name)
            }
        })
    } else {
        None
    };
    match target {
        Some(t) if t.join(WEIGHTS_FILE).is_file() => Ok(t),
        _ => Err(EvalError::Missing {
            what: "weights file",
            path: dir.join(WEIGHTS_FILE),
        }),
    }
}

/// A model config from `--model-config`: a run's `config.toml` (its `model` entry), a model
/// TOML (`configs/models/*.toml`), an open_clip JSON, or a preset name.
pub fn load_model_config(path_or_preset: &str) -> Result<ModelConfig, EvalError> {
    let path = Path::new(path_or_preset);
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    if is_toml {
        let table = read_toml_table(path)?;
        if table.contains_key("model") {
            return model_config_from_run_table(&table, path);
        }
    }
    ModelConfig::load(path_or_preset).map_err(|e| EvalError::Config(e.to_string()))
}

fn model_config_from_run_config(path: &Path) -> Result<ModelConfig, EvalError> {
    model_config_from_run_table(&read_toml_table(path)?, path)
}

fn read_toml_table(path: &Path) -> Result<toml::Table, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| EvalError::Config(format!("{}: {e}", path.display())))
}

/// The run config's `model`: a preset name / model file path, or an inline table
/// (the same [`ModelSpec`] the train config uses).
fn model_config_from_run_table(table: &toml::Table, path: &Path) -> Result<ModelConfig, EvalError> {
    let value = table
        .get("model")
        .ok_or_else(|| EvalError::Config(format!("{}: no `model` entry", path.display())))?;
    let spec = ModelSpec::deserialize(value.clone())
        .map_err(|e| EvalError::Config(format!("{}: model: {e}", path.display())))?;
    spec.resolve()
        .map_err(|e| EvalError::Config(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_config_model_entry_is_read_as_name_or_table() {
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("named.toml");
        std::fs::write(&named, "name = \"x\"\nmodel = \"nano\"\n").unwrap();
        assert_eq!(
            load_model_config(named.to_str().unwrap()).unwrap(),
            ModelConfig::preset("nano").unwrap()
        );

        let nano = ModelConfig::preset("nano").unwrap();
        let mut table = toml::Table::new();
        table.insert("name".into(), toml::Value::String("x".into()));
        table.insert("model".into(), toml::Value::try_from(&nano).unwrap());
        let inline = dir.path().join("inline.toml");
        std::fs::write(&inline, toml::to_string(&table).unwrap()).unwrap();
        assert_eq!(load_model_config(inline.to_str().unwrap()).unwrap(), nano);
    }

    #[test]
    fn missing_checkpoint_names_the_folder() {
        let err = load_checkpoint(Path::new("/nonexistent/run"), Device::Cpu)
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/run"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let err = load_checkpoint(dir.path(), Device::Cpu).err().unwrap();
        assert!(err.to_string().contains("model.safetensors"), "{err}");
    }
}
