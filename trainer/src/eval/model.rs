//! A CLIP model loaded for evaluation, and the normalised embeddings it gives.

use std::path::Path;

use dataloader::Tokenizer;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::error::EvalError;
use super::metrics::l2_normalize;
use crate::checkpoint::export::{locate_checkpoint, model_config_from_run_table, read_run_config};
use crate::checkpoint::{model_config_from_run_config, CheckpointFiles};
use crate::model::weights;
use crate::model::Clip;
use crate::model::ModelConfig;

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
        self.encoder().embed_images(images, count)
    }

    /// L2-normalised embeddings (T, E) on the CPU of `texts`, encoded `batch_size` at a time.
    pub fn embed_texts(&self, texts: &[String], batch_size: usize) -> Tensor {
        self.encoder().embed_texts(texts, batch_size)
    }

    /// The model as an [`Encoder`].
    pub fn encoder(&self) -> Encoder<'_> {
        Encoder {
            clip: &self.clip,
            config: &self.config,
            device: self.device,
            tokenizer: &self.tokenizer,
        }
    }
}

/// A model that embeds eval data: a loaded [`EvalModel`]'s, or the one a run is training
/// (evaluated in place, without gradients, in eval mode).
pub struct Encoder<'a> {
    /// The model.
    pub clip: &'a Clip,
    /// Its config.
    pub config: &'a ModelConfig,
    /// Where it runs.
    pub device: Device,
    /// The tokenizer for its texts.
    pub tokenizer: &'a Tokenizer,
}

impl Encoder<'_> {
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

/// Loads a model from a run or checkpoint folder (see
/// [`crate::checkpoint::locate_checkpoint`]): `DIR/model.safetensors`, or the folder
/// `checkpoints/latest` names; the architecture from the `model` entry of the nearest
/// `config.toml` (in the weights' folder or up to two folders above it, so
/// `runs/x/checkpoints/step_100/` finds `runs/x/config.toml`).
pub fn load_checkpoint(dir: &Path, device: Device) -> Result<EvalModel, EvalError> {
    load_checkpoint_files(locate_checkpoint(dir)?, device)
}

/// [`load_checkpoint`] of located files (e.g. the moving average,
/// [`crate::checkpoint::CheckpointFiles::ema`]).
pub fn load_checkpoint_files(files: CheckpointFiles, device: Device) -> Result<EvalModel, EvalError> {
    let config = model_config_from_run_config(&files.config)?;
    EvalModel::load(config, &files.weights, device)
}

/// A model config from `--model-config`: a run's `config.toml` (its `model` entry), a model
/// TOML (`configs/models/*.toml`), an open_clip JSON, or a preset name.
pub fn load_model_config(path_or_preset: &str) -> Result<ModelConfig, EvalError> {
    let path = Path::new(path_or_preset);
    if path.extension().is_some_and(|e| e == "toml") {
        let table = read_run_config(path)?;
        if table.contains_key("model") {
            return Ok(model_config_from_run_table(&table, path)?);
        }
    }
    Ok(ModelConfig::load(path_or_preset)?)
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
