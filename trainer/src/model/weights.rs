//! Safetensors load/save of a `VarStore` whose names are checked both ways.
//!
//! tch's own `VarStore::load` ignores keys in the file that no variable has,
//! and a duplicated variable name silently becomes `name__N`; either would let
//! a wrong or partial checkpoint load "successfully". Here every key of the
//! file must be a variable and every variable a key, with equal shapes, before
//! anything is copied.
//!
//! Non-persistent buffers of an open_clip model (`attn_mask`, and the
//! `position_ids` some older exports carry) are not parameters: a key whose last
//! component is one of [`BUFFER_NAMES`] is skipped and reported in [`LoadReport`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tch::nn::VarStore;
use tch::{Device, TchError, Tensor};

/// Last name components of buffers (not parameters) that an open_clip
/// state_dict may hold; they are skipped when loading.
pub const BUFFER_NAMES: &[&str] = &["attn_mask", "position_ids"];

/// How many names an error message lists before summarising the rest.
const LISTED_NAMES: usize = 20;

/// Errors from reading or writing weights; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be read or is not valid safetensors.
    #[error("cannot read weights {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: TchError,
    },
    /// The file could not be written.
    #[error("cannot write weights {path}: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The file's tensor names and the model's variable names differ.
    #[error(
        "weights {path} do not match the model: {} variable(s) missing from the file [{}]; {} key(s) in the file that the model lacks [{}]",
        missing.len(), list(missing), unexpected.len(), list(unexpected)
    )]
    Names {
        /// The file.
        path: PathBuf,
        /// Variables of the model that the file lacks.
        missing: Vec<String>,
        /// Keys of the file that are not variables of the model.
        unexpected: Vec<String>,
    },
    /// Some tensors have the wrong shape or a non-float dtype.
    #[error("weights {path} do not match the model: {}", list(mismatches))]
    Shapes {
        /// The file.
        path: PathBuf,
        /// One entry per tensor: `name: file [..] vs model [..]`.
        mismatches: Vec<String>,
    },
}

fn list(names: &[String]) -> String {
    let mut shown = names.iter().take(LISTED_NAMES).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > LISTED_NAMES {
        shown.push_str(&format!(", … and {} more", names.len() - LISTED_NAMES));
    }
    shown
}

/// What [`load_safetensors`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Number of variables copied from the file.
    pub loaded: usize,
    /// Buffer keys in the file that were skipped (e.g. `attn_mask`).
    pub ignored_buffers: Vec<String>,
}

/// True for keys naming a buffer (see [`BUFFER_NAMES`]), not a parameter.
pub fn is_buffer_key(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    BUFFER_NAMES.contains(&last)
}

/// Writes every variable of `vs` to `path` as safetensors (CPU, contiguous), under
/// its open_clip name. Writes `path` + `.tmp` first and renames it, so a crash
/// never leaves a truncated file at `path`.
pub fn save_safetensors(vs: &VarStore, path: impl AsRef<Path>) -> Result<(), WeightsError> {
    save_named_safetensors(vs.variables(), path)
}

/// Writes `named` tensors to `path` as safetensors (CPU, contiguous, sorted by name), through
/// `path` + `.tmp` and a rename, as [`save_safetensors`] does.
pub fn save_named_safetensors(
    named: impl IntoIterator<Item = (String, Tensor)>,
    path: impl AsRef<Path>,
) -> Result<(), WeightsError> {
    let path = path.as_ref();
    let variables: BTreeMap<String, Tensor> = named.into_iter().collect();
    let tensors: Vec<(String, Tensor)> = variables
        .into_iter()
        .map(|(name, t)| (name, t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    Tensor::write_safetensors(&tensors, &tmp).map_err(|e| WeightsError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    std::fs::rename(&tmp, path).map_err(|e| WeightsError::Write {
        path: path.to_path_buf(),
        message: format!("renaming {} into place: {e}", tmp.display()),
    })
}

/// Reads `path` (safetensors) into the variables of `vs`, after checking that the
/// file's keys (buffers aside) and the variables' names are the same set and
/// every shape agrees. Nothing is copied unless everything matches. Float
/// tensors of another precision (fp16, bf16) are converted to the variable's.
pub fn load_safetensors(vs: &VarStore, path: impl AsRef<Path>) -> Result<LoadReport, WeightsError> {
    let path = path.as_ref();
    let named = Tensor::read_safetensors(path).map_err(|source| WeightsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    copy_named_tensors(vs, named, path)
}

/// The checks and copy of [`load_safetensors`] for tensors already in memory;
/// `origin` names where they came from in errors.
pub fn copy_named_tensors(
    vs: &VarStore,
    named: Vec<(String, Tensor)>,
    origin: &Path,
) -> Result<LoadReport, WeightsError> {
    let mut ignored_buffers = Vec::new();
    let mut from_file = BTreeMap::new();
    for (name, tensor) in named {
        if is_buffer_key(&name) {
            ignored_buffers.push(name);
        } else {
            from_file.insert(name, tensor);
        }
    }
    let variables: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();

    let file_names: BTreeSet<&String> = from_file.keys().collect();
    let var_names: BTreeSet<&String> = variables.keys().collect();
    let missing: Vec<String> = var_names.difference(&file_names).map(|s| s.to_string()).collect();
    let unexpected: Vec<String> = file_names.difference(&var_names).map(|s| s.to_string()).collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        return Err(WeightsError::Names {
            path: origin.to_path_buf(),
            missing,
            unexpected,
        });
    }

    let mismatches: Vec<String> = variables
        .iter()
        .filter_map(|(name, var)| {
            let src = &from_file[name];
            if src.size() != var.size() {
                Some(format!("{name}: file {:?} vs model {:?}", src.size(), var.size()))
            } else if !src.is_floating_point() {
                Some(format!("{name}: file dtype {:?} is not floating point", src.kind()))
            } else {
                None
            }
        })
        .collect();
    if !mismatches.is_empty() {
        return Err(WeightsError::Shapes {
            path: origin.to_path_buf(),
            mismatches,
        });
    }

    tch::no_grad(|| {
        for (name, var) in &variables {
            let mut dst = var.shallow_clone();
            dst.copy_(&from_file[name]);
        }
    });
    if !ignored_buffers.is_empty() {
        tracing::debug!(file = %origin.display(), buffers = ?ignored_buffers, "skipped buffers in weights file");
    }
    Ok(LoadReport {
        loaded: variables.len(),
        ignored_buffers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Clip;
    use crate::model::ModelConfig;
    use tch::Kind;

    fn nano_vs(seed: i64) -> VarStore {
        tch::manual_seed(seed);
        let vs = VarStore::new(Device::Cpu);
        let _clip = Clip::new(&vs.root(), &ModelConfig::preset("nano").expect("nano"));
        vs
    }

    fn max_diff(a: &VarStore, b: &VarStore) -> f64 {
        let bv = b.variables();
        a.variables()
            .iter()
            .map(|(n, t)| (t - &bv[n]).abs().max().double_value(&[]))
            .fold(0.0, f64::max)
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nano.safetensors");
        let a = nano_vs(1);
        let b = nano_vs(2);
        assert!(max_diff(&a, &b) > 0.0);
        save_safetensors(&a, &path).expect("save");
        let report = load_safetensors(&b, &path).expect("load");
        assert_eq!(report.loaded, a.variables().len());
        assert!(report.ignored_buffers.is_empty());
        assert_eq!(max_diff(&a, &b), 0.0);
    }

    #[test]
    fn extra_and_missing_keys_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.safetensors");
        let vs = nano_vs(1);
        let mut tensors: Vec<(String, Tensor)> =
            vs.variables().into_iter().filter(|(n, _)| n != "visual.proj").collect();
        tensors.push(("logit_bias".into(), Tensor::zeros([], (Kind::Float, Device::Cpu))));
        Tensor::write_safetensors(&tensors, &path).expect("write");
        let err = load_safetensors(&vs, &path).expect_err("mismatch").to_string();
        assert!(
            err.contains("visual.proj") && err.contains("logit_bias") && err.contains("bad.safetensors"),
            "{err}"
        );
    }

    #[test]
    fn shape_mismatch_is_named_and_nothing_is_copied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("shape.safetensors");
        let src = nano_vs(1);
        let dst = nano_vs(2);
        let before = dst.variables()["ln_final.weight"].copy();
        let tensors: Vec<(String, Tensor)> = src
            .variables()
            .into_iter()
            .map(|(n, t)| {
                if n == "text_projection" {
                    (n, Tensor::zeros([64, 16], (Kind::Float, Device::Cpu)))
                } else {
                    (n, t)
                }
            })
            .collect();
        Tensor::write_safetensors(&tensors, &path).expect("write");
        let err = load_safetensors(&dst, &path).expect_err("shape").to_string();
        assert!(
            err.contains("text_projection") && err.contains("[64, 16]") && err.contains("[64, 32]"),
            "{err}"
        );
        let after = &dst.variables()["ln_final.weight"];
        assert_eq!((after - before).abs().max().double_value(&[]), 0.0);
    }

    #[test]
    fn buffers_are_skipped_and_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("with_buffers.safetensors");
        let vs = nano_vs(1);
        let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        tensors.push(("attn_mask".into(), Tensor::zeros([32, 32], (Kind::Float, Device::Cpu))));
        Tensor::write_safetensors(&tensors, &path).expect("write");
        let report = load_safetensors(&vs, &path).expect("buffers are fine");
        assert_eq!(report.ignored_buffers, vec!["attn_mask".to_string()]);
    }

    #[test]
    fn half_precision_file_loads_into_f32() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("half.safetensors");
        let src = nano_vs(1);
        let tensors: Vec<(String, Tensor)> = src
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.to_kind(Kind::Half)))
            .collect();
        Tensor::write_safetensors(&tensors, &path).expect("write");
        let dst = nano_vs(2);
        load_safetensors(&dst, &path).expect("load");
        assert!(max_diff(&src, &dst) < 1e-2);
        assert_eq!(dst.variables()["visual.proj"].kind(), Kind::Float);
    }

    #[test]
    fn missing_file_names_the_path() {
        let vs = nano_vs(1);
        let err = load_safetensors(&vs, "/nonexistent/w.safetensors")
            .expect_err("no file")
            .to_string();
        assert!(err.contains("/nonexistent/w.safetensors"), "{err}");
    }
}
