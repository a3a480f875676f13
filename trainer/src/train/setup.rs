//! What a run does before its first step: write the run folder, seed libtorch, and put
//! the model and optimizer in the state the run starts from.

use std::path::Path;

use tch::nn::VarStore;
use tracing::info;

use super::config::TrainConfig;
use super::ddp;
use super::RunOptions;
use crate::checkpoint::{Checkpointer, Resumed};
use crate::dist::{Collective, Dist};
use crate::model::{open_clip, weights};
use crate::optim::{Ema, Optimizer, EMA_FILE};
use crate::TrainError;

/// The config as it runs (the model written out in full), as TOML: what `config.toml`
/// in the run folder and in every checkpoint holds.
pub fn resolved_config_toml(cfg: &TrainConfig) -> Result<String, TrainError> {
    toml::to_string(&cfg.resolved()?).map_err(|e| TrainError::ConfigFile {
        path: "the resolved config".into(),
        reason: format!("cannot write it as TOML: {e}"),
    })
}

/// Creates the run folder and writes `config.toml` into it (rank 0).
pub fn prepare_run_dir(run_dir: &Path, config_toml: &str) -> Result<(), TrainError> {
    std::fs::create_dir_all(run_dir).map_err(TrainError::io(run_dir))?;
    let path = run_dir.join("config.toml");
    std::fs::write(&path, config_toml).map_err(TrainError::io(&path))
}

/// libtorch's intra-op threads (`threads`, 0 = its default) and its seed (`seed`), which
/// fixes the model's initialisation.
pub fn seed_and_threads(cfg: &TrainConfig) {
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    tch::manual_seed(cfg.seed as i64);
}

/// Puts `vs` and `optimizer` where the run starts: the checkpoint `--resume` names (its
/// progress and loader positions are returned), else `init_from` weights, else the
/// seed's initialisation; in the last two cases rank 0's parameters are broadcast. Then
/// every rank checks that all replicas are equal. Collective.
pub fn start_from(
    cfg: &TrainConfig,
    opts: &RunOptions,
    checkpointer: &Checkpointer,
    vs: &VarStore,
    optimizer: &mut Optimizer,
    mut ema: Option<&mut Ema>,
    dist: &Dist,
    coll: &dyn Collective,
) -> Result<Option<Resumed>, TrainError> {
    let resumed = match &opts.resume {
        Some(from) => checkpointer.resume(from, vs, optimizer, ema.as_deref_mut())?,
        None => None,
    };
    if resumed.is_none() {
        if let (Some(path), true) = (&cfg.init_from, dist.is_main()) {
            let report = open_clip::load_open_clip(vs, path).map_err(|source| TrainError::InitFrom {
                path: path.clone(),
                source,
            })?;
            info!(from = %path.display(), "initialised from open_clip weights: {report:?}");
        }
        ddp::broadcast_parameters(vs, coll)?;
        // The average starts at the weights the run starts from.
        if let Some(ema) = ema {
            ema.reset_to_params();
        }
    }
    ddp::verify_parameters_equal(vs, coll)?;
    Ok(resumed)
}

/// Writes the trained weights as `model.safetensors` in the run folder (rank 0), and their
/// moving average, if kept, as `ema.safetensors` (same tensor names).
pub fn save_final_weights(vs: &VarStore, ema: Option<&Ema>, run_dir: &Path) -> Result<(), TrainError> {
    let path = run_dir.join("model.safetensors");
    weights::save_safetensors(vs, &path).map_err(|source| TrainError::SaveWeights {
        path: path.clone(),
        source,
    })?;
    info!(weights = %path.display(), "saved final weights");
    if let Some(ema) = ema {
        let path = run_dir.join(EMA_FILE);
        weights::save_named_safetensors(ema.named(), &path).map_err(|source| TrainError::SaveWeights {
            path: path.clone(),
            source,
        })?;
        info!(weights = %path.display(), "saved the weights' moving average");
    }
    Ok(())
}
