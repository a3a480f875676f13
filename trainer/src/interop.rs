//! open_clip interop: load an open_clip state_dict into our model, and export a
//! ferroclip checkpoint as a folder open_clip 3.3.0 loads directly.
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

use serde::Deserialize;
use serde_json::{json, Value};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{CONFIG_FILE as CHECKPOINT_CONFIG_FILE, LATEST_FILE, MODEL_FILE as CHECKPOINT_WEIGHTS_FILE};
use crate::config::ModelConfig;
use crate::model::Clip;
use crate::train::config::ModelSpec;
use crate::weights::{self, LoadReport, WeightsError};

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
    #[error("{path}: {source}")]
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
/// a [`Clip`] built from the matching config). Every key must be a variable and
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
    } else if path.join(LATEST_FILE).is_file() {
        follow_latest(path)?
    } else if path.join("checkpoints").join(LATEST_FILE).is_file() {
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

/// `checkpoints/latest` holds the name of (or path to) the newest step folder.
fn follow_latest(checkpoints: &Path) -> Result<PathBuf, InteropError> {
    let latest = checkpoints.join(LATEST_FILE);
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
    let text = std::fs::read_to_string(path).map_err(|source| InteropError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let config_error = |message: String| InteropError::Config {
        path: path.to_path_buf(),
        message,
    };
    let table: toml::Table = toml::from_str(&text).map_err(|e| config_error(e.to_string()))?;
    let model = table
        .get("model")
        .ok_or_else(|| config_error("no `model` entry".to_string()))?;
    let spec = ModelSpec::deserialize(model.clone()).map_err(|e| config_error(format!("model: {e}")))?;
    spec.resolve().map_err(|e| config_error(e.to_string()))
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
    let source = locate_checkpoint(checkpoint)?;
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

    const TOLERANCE: f64 = 1e-4;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    fn fixture_config() -> ModelConfig {
        ModelConfig::from_open_clip_json(fixture("interop_open_clip_config.json")).expect("fixture config")
    }

    fn model(cfg: &ModelConfig, seed: i64) -> (VarStore, Clip) {
        tch::manual_seed(seed);
        let vs = VarStore::new(Device::Cpu);
        let clip = Clip::new(&vs.root(), cfg);
        (vs, clip)
    }

    fn fixture_tensors(name: &str) -> Vec<(String, Tensor)> {
        Tensor::read_safetensors(fixture(name)).expect("fixture safetensors")
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
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
