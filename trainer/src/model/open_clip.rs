//! open_clip interop: load an open_clip state_dict into our model, and write the
//! config of a folder open_clip 3.3.0 loads directly (the export of a checkpoint into
//! such a folder is [`crate::checkpoint::export_open_clip`]).
//!
//! Our variable names already are open_clip's `state_dict` keys (see
//! [`crate::model`]), so both directions are a name-checked copy; what this module
//! adds is the tolerance open_clip itself has when loading (a `module.` prefix
//! from DDP, a 1-element `logit_scale`, a CLIP checkpoint without `logit_bias`
//! loaded into a SigLIP model), and the folder layout of open_clip's
//! `local-dir:` schema:
//!
//! ```text
//! DIR/open_clip_model.safetensors   state_dict, fp32, contiguous, exactly open_clip's keys
//! DIR/open_clip_config.json         {"model_cfg": {embed_dim, vision_cfg, text_cfg, ...},
//!                                    "preprocess_cfg": {mean, std, interpolation, resize_mode}}
//! ```
//! which `open_clip.create_model_and_transforms("local-dir:DIR")` reads.
//!
//! Only safetensors are read: a pickled torch checkpoint is refused with a message
//! saying how to convert it, because unpickling runs code.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::config::ModelConfig;
use super::weights::{self, LoadReport, WeightsError};

/// Weights file name of an exported folder (open_clip's `HF_SAFE_WEIGHTS_NAME`).
pub const OPEN_CLIP_WEIGHTS_FILE: &str = "open_clip_model.safetensors";
/// Config file name of an exported folder (open_clip's `HF_CONFIG_NAME`).
pub const OPEN_CLIP_CONFIG_FILE: &str = "open_clip_config.json";
/// The prefix `torch.nn.parallel.DistributedDataParallel` puts on every key.
const DDP_PREFIX: &str = "module.";
/// Scalars open_clip may store as shape `[1]` (`nonscalar_logit_scale`, old checkpoints).
const SCALAR_KEYS: &[&str] = &["logit_scale", "logit_bias"];

/// Errors of import and export; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum InteropError {
    /// A file or folder that must exist does not.
    #[error("{what} not found: {path}")]
    Missing {
        /// What was looked for, e.g. "checkpoint weights (model.safetensors)".
        what: &'static str,
        /// Where.
        path: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is a pickled torch checkpoint, which is never loaded.
    #[error(
        "{path} is a pickled torch checkpoint, not safetensors; loading it would run code. Convert it once \
         with `safetensors.torch.save_file(model.state_dict(), \"open_clip.safetensors\")`"
    )]
    Pickle {
        /// The file.
        path: PathBuf,
    },
    /// The run config does not parse.
    #[error("model config in {}", path.display())]
    RunConfig {
        /// The config file.
        path: PathBuf,
        /// The TOML error.
        source: toml::de::Error,
    },
    /// The run config's `model` entry does not give a usable model.
    #[error("model config in {}", path.display())]
    ModelEntry {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: super::config::ModelSpecError,
    },
    /// The run config has no usable model section.
    #[error("model config in {path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Names, shapes or dtypes of the weights do not match the model.
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

/// What [`load_open_clip`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenClipLoadReport {
    /// The name-checked copy: variables loaded, buffers skipped.
    pub weights: LoadReport,
    /// True when every key carried DDP's `module.` prefix, which was removed.
    pub stripped_ddp_prefix: bool,
    /// Variables the file lacked that keep the model's initial value: only
    /// `logit_bias`, when CLIP weights initialise a SigLIP model (open_clip's
    /// loader does the same, with zero; ours keeps `init_logit_bias`).
    pub kept_initial: Vec<String>,
}

/// Loads an open_clip state_dict saved as safetensors into `vs` (the variables of
/// a [`super::Clip`] built from the matching config). Every key must be a variable and
/// every variable a key, with equal shapes; the error names each missing,
/// unexpected and mis-shaped key, and nothing is copied unless all match.
/// Accepted as open_clip accepts them: DDP's `module.` prefix on every key, a
/// `[1]`-shaped `logit_scale`/`logit_bias`, buffers such as `attn_mask`, half or
/// bfloat16 tensors (converted), and no `logit_bias` in the file when the model
/// has one (see [`OpenClipLoadReport::kept_initial`]).
pub fn load_open_clip(vs: &VarStore, path: &Path) -> Result<OpenClipLoadReport, InteropError> {
    if !path.is_file() {
        return Err(InteropError::Missing {
            what: "open_clip weights file",
            path: path.to_path_buf(),
        });
    }
    let named = match Tensor::read_safetensors(path) {
        Ok(named) => named,
        Err(_) if is_pickle(path)? => {
            return Err(InteropError::Pickle {
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(WeightsError::Read {
                path: path.to_path_buf(),
                source,
            }
            .into())
        }
    };
    let stripped_ddp_prefix = !named.is_empty() && named.iter().all(|(name, _)| name.starts_with(DDP_PREFIX));
    let mut tensors: BTreeMap<String, Tensor> = named
        .into_iter()
        .map(|(name, tensor)| {
            let name = match stripped_ddp_prefix {
                true => name[DDP_PREFIX.len()..].to_string(),
                false => name,
            };
            let tensor = match SCALAR_KEYS.contains(&name.as_str()) && tensor.size() == [1] {
                true => tensor.reshape([] as [i64; 0]),
                false => tensor,
            };
            (name, tensor)
        })
        .collect();

    let variables = vs.variables();
    let mut kept_initial = Vec::new();
    if let Some(bias) = variables.get("logit_bias") {
        if !tensors.contains_key("logit_bias") {
            tensors.insert("logit_bias".to_string(), bias.detach().to_device(Device::Cpu).copy());
            kept_initial.push("logit_bias".to_string());
        }
    }
    let weights = weights::copy_named_tensors(vs, tensors.into_iter().collect(), path)?;
    Ok(OpenClipLoadReport {
        weights,
        stripped_ddp_prefix,
        kept_initial,
    })
}

/// True when `path` starts like `torch.save` output: a zip archive (`PK`, torch
/// 1.6 and later) or a raw pickle (protocol 2+ opcode 0x80). Only asked after the
/// file failed to parse as safetensors, whose first bytes (a header length) can
/// be anything.
fn is_pickle(path: &Path) -> Result<bool, InteropError> {
    let mut head = [0u8; 2];
    let mut file = std::fs::File::open(path).map_err(|source| InteropError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let read = file.read(&mut head).map_err(|source| InteropError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(read == 2 && (head == *b"PK" || head[0] == 0x80))
}

/// open_clip's model config (the `model_configs/*.json` layout) for `cfg`. Every
/// architecture field is written out, defaults included, so the file does not
/// depend on open_clip's defaults staying the same.
pub fn open_clip_model_cfg(cfg: &ModelConfig) -> Value {
    let v = &cfg.vision;
    let t = &cfg.text;
    let mut model_cfg = json!({
        "embed_dim": cfg.embed_dim,
        "quick_gelu": false,
        "init_logit_scale": cfg.init_logit_scale,
        "vision_cfg": {
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "width": v.width,
            "layers": v.layers,
            "head_width": v.head_width,
            "mlp_ratio": v.mlp_ratio,
        },
        "text_cfg": {
            "context_length": t.context_length,
            "vocab_size": t.vocab_size,
            "width": t.width,
            "heads": t.heads,
            "layers": t.layers,
            "mlp_ratio": t.mlp_ratio,
        },
    });
    if let Some(bias) = cfg.init_logit_bias {
        model_cfg["init_logit_bias"] = json!(bias);
    }
    model_cfg
}

/// The whole `open_clip_config.json`: `model_cfg` plus the `preprocess_cfg` our
/// eval transform matches (CLIP mean/std, bicubic resize of the shorter side,
/// center crop).
pub fn open_clip_folder_config(cfg: &ModelConfig) -> Value {
    // f32 -> shortest decimal -> f64: the JSON says 0.48145467, not the f32's exact
    // binary value 0.4814546704292297; both are the same f32 as open_clip's
    // 0.48145466, and torch normalises in f32.
    let decimal = |xs: [f32; 3]| -> Vec<f64> {
        xs.iter()
            .map(|x| x.to_string().parse::<f64>().unwrap_or(f64::from(*x)))
            .collect()
    };
    json!({
        "model_cfg": open_clip_model_cfg(cfg),
        "preprocess_cfg": {
            "mean": decimal(dataloader::CLIP_MEAN),
            "std": decimal(dataloader::CLIP_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::Clip;
    use tch::Kind;

    const TOLERANCE: f64 = 1e-4;

    pub(crate) fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    pub(crate) fn fixture_config() -> ModelConfig {
        ModelConfig::from_open_clip_json(fixture("interop_open_clip_config.json")).expect("fixture config")
    }

    pub(crate) fn model(cfg: &ModelConfig, seed: i64) -> (VarStore, Clip) {
        tch::manual_seed(seed);
        let vs = VarStore::new(Device::Cpu);
        let clip = Clip::new(&vs.root(), cfg);
        (vs, clip)
    }

    pub(crate) fn fixture_tensors(name: &str) -> Vec<(String, Tensor)> {
        Tensor::read_safetensors(fixture(name)).expect("fixture safetensors")
    }

    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.size(), b.size());
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn interop_open_clip_weights_give_open_clips_embeddings() {
        let (vs, clip) = model(&fixture_config(), 0);
        let report = load_open_clip(&vs, &fixture("interop_open_clip.safetensors")).expect("load");
        assert_eq!(report.weights.loaded, vs.variables().len());
        assert!(!report.stripped_ddp_prefix && report.kept_initial.is_empty());
        let io: BTreeMap<String, Tensor> = fixture_tensors("interop_io.safetensors").into_iter().collect();
        tch::no_grad(|| {
            let (img, txt, scale) = clip.forward(&io["images"], &io["tokens"], false);
            let image_diff = max_diff(&img, &io["image_embeddings"]);
            let text_diff = max_diff(&txt, &io["text_embeddings"]);
            assert!(image_diff <= TOLERANCE, "image embeddings differ by {image_diff}");
            assert!(text_diff <= TOLERANCE, "text embeddings differ by {text_diff}");
            assert!(max_diff(&scale, &io["logit_scale_exp"]) <= TOLERANCE);
        });
        let bias = clip.logit_bias().expect("SigLIP fixture has logit_bias");
        assert!((bias.double_value(&[]) + 7.5).abs() < 1e-6);
    }

    #[test]
    fn interop_ddp_prefix_and_nonscalar_logit_scale_are_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ddp.safetensors");
        let tensors: Vec<(String, Tensor)> = fixture_tensors("interop_open_clip.safetensors")
            .into_iter()
            .map(|(name, t)| {
                let t = if name == "logit_scale" { t.reshape([1]) } else { t };
                (format!("module.{name}"), t)
            })
            .collect();
        Tensor::write_safetensors(&tensors, &path).expect("write");
        let (vs, _clip) = model(&fixture_config(), 0);
        let report = load_open_clip(&vs, &path).expect("load");
        assert!(report.stripped_ddp_prefix);
        let want: BTreeMap<String, Tensor> = fixture_tensors("interop_open_clip.safetensors").into_iter().collect();
        for (name, var) in vs.variables() {
            assert_eq!(max_diff(&var, &want[&name]), 0.0, "{name}");
        }
    }

    #[test]
    fn interop_clip_weights_into_siglip_model_keep_initial_bias() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("clip.safetensors");
        let tensors: Vec<(String, Tensor)> = fixture_tensors("interop_open_clip.safetensors")
            .into_iter()
            .filter(|(name, _)| name != "logit_bias")
            .collect();
        Tensor::write_safetensors(&tensors, &path).expect("write");
        let (vs, clip) = model(&fixture_config(), 0);
        let report = load_open_clip(&vs, &path).expect("load");
        assert_eq!(report.kept_initial, vec!["logit_bias".to_string()]);
        assert_eq!(clip.logit_bias().expect("bias").double_value(&[]), -10.0);
    }

    #[test]
    fn interop_mismatches_name_every_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.safetensors");
        let tensors: Vec<(String, Tensor)> = fixture_tensors("interop_open_clip.safetensors")
            .into_iter()
            .filter(|(name, _)| name != "visual.proj")
            .chain([(
                "visual.extra_head".to_string(),
                Tensor::zeros([2], (Kind::Float, Device::Cpu)),
            )])
            .collect();
        Tensor::write_safetensors(&tensors, &path).expect("write");
        let (vs, _clip) = model(&fixture_config(), 0);
        let err = load_open_clip(&vs, &path).expect_err("names differ").to_string();
        assert!(
            err.contains("visual.proj") && err.contains("visual.extra_head") && err.contains("bad.safetensors"),
            "{err}"
        );

        // A model of another width: every mis-shaped key is listed.
        let mut wider = fixture_config();
        wider.embed_dim = 16;
        let (vs, _clip) = model(&wider, 0);
        let err = load_open_clip(&vs, &fixture("interop_open_clip.safetensors"))
            .expect_err("shapes differ")
            .to_string();
        assert!(
            err.contains("visual.proj") && err.contains("text_projection") && err.contains("[32, 24]"),
            "{err}"
        );
    }

    #[test]
    fn interop_refuses_pickle_and_names_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (vs, _clip) = model(&fixture_config(), 0);
        let zip = dir.path().join("epoch_1.pt");
        std::fs::write(&zip, b"PK\x03\x04rest of a torch.save zip").expect("write");
        let err = load_open_clip(&vs, &zip).expect_err("pickle").to_string();
        assert!(err.contains("epoch_1.pt") && err.contains("pickled"), "{err}");
        let raw = dir.path().join("old.bin");
        std::fs::write(&raw, b"\x80\x02}q\x00").expect("write");
        assert!(matches!(load_open_clip(&vs, &raw), Err(InteropError::Pickle { .. })));
        let garbage = dir.path().join("garbage.safetensors");
        std::fs::write(&garbage, b"\x05\x00\x00\x00\x00\x00\x00\x00{}").expect("write");
        let err = load_open_clip(&vs, &garbage).expect_err("not safetensors").to_string();
        assert!(err.contains("garbage.safetensors"), "{err}");
        let err = load_open_clip(&vs, &dir.path().join("absent.safetensors"))
            .expect_err("missing")
            .to_string();
        assert!(err.contains("absent.safetensors"), "{err}");
    }
}
