//! The train loop's side of checkpoints (DESIGN.md §6): what goes into one
//! (weights, AdamW state, every rank's loader position, counters) and how a
//! run picks one up again. Storage, checksums and retention live in
//! [`crate::checkpoint`].

use std::path::{Path, PathBuf};

use tch::{nn::VarStore, Device, Kind, Tensor};
use tracing::{info, warn};

use crate::checkpoint::{config_compatibility, Checkpoint, CheckpointState, Checkpoints};
use crate::dist::{Collective, DistError};
use crate::train::optim::AdamW;
use crate::TrainError;

/// Where a run starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeFrom {
    /// The newest checkpoint of the run that verifies; a fresh start when there is none.
    Latest,
    /// This checkpoint folder; it must verify.
    Path(PathBuf),
}

impl std::str::FromStr for ResumeFrom {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "latest" {
            ResumeFrom::Latest
        } else {
            ResumeFrom::Path(PathBuf::from(s))
        })
    }
}

/// Counters that continue across a resume.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// Optimizer steps done (including skipped ones).
    pub step: u64,
    /// Samples consumed over all ranks.
    pub samples_seen: u64,
    /// Steps skipped for a non-finite loss or gradient.
    pub skipped_steps: u64,
    /// Current run of consecutive skipped steps.
    pub nonfinite_in_a_row: u64,
}

/// A checkpoint this rank has loaded: the progress to continue from and its loader position.
pub struct Resumed {
    /// The folder it came from.
    pub dir: PathBuf,
    /// Counters to continue.
    pub progress: Progress,
    /// This rank's loader state (opaque JSON, see `data::TrainLoader::state`).
    pub loader: serde_json::Value,
}

/// Saves a checkpoint at `progress.step`: every rank sends its loader state to
/// rank 0, which writes weights, optimizer state and `state.json`. Collective:
/// every rank must call it at the same step.
#[allow(clippy::too_many_arguments)]
pub fn save(
    checkpoints: &Checkpoints,
    vs: &VarStore,
    opt: &AdamW,
    loader_state: &serde_json::Value,
    progress: Progress,
    config_toml: &str,
    coll: &dyn Collective,
    device: Device,
) -> Result<Option<PathBuf>, TrainError> {
    let mine = serde_json::to_vec(loader_state).map_err(|e| TrainError::Checkpoint(format!("loader state: {e}")))?;
    let all = gather_bytes(&mine, coll, device).map_err(|e| TrainError::Dist(e.to_string()))?;
    let saved = if coll.rank() == 0 {
        let loader = all
            .iter()
            .map(|bytes| serde_json::from_slice(bytes))
            .collect::<Result<Vec<serde_json::Value>, _>>()
            .map_err(|e| TrainError::Checkpoint(format!("loader state from a rank: {e}")))?;
        let state = CheckpointState {
            format: crate::checkpoint::FORMAT,
            step: progress.step,
            samples_seen: progress.samples_seen,
            world_size: coll.world_size(),
            config_hash: String::new(), // filled in by `save` from the text it writes
            loader,
            counters: serde_json::to_value(progress).map_err(|e| TrainError::Checkpoint(e.to_string()))?,
            files: Default::default(),
        };
        let started = std::time::Instant::now();
        let dir = checkpoints
            .save(vs, &opt.state_tensors(), config_toml, state)
            .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
        info!(checkpoint = %dir.display(), seconds = started.elapsed().as_secs_f64(), "saved checkpoint");
        Some(dir)
    } else {
        None
    };
    // Nobody runs ahead of a half-written checkpoint.
    coll.barrier().map_err(|e| TrainError::Dist(e.to_string()))?;
    Ok(saved)
}

/// Finds the checkpoint to resume from (rank 0 chooses for `Latest`, all ranks
/// follow), checks it against the current config and world, and loads weights
/// and optimizer state. `Ok(None)`: nothing to resume, start fresh.
pub fn resume(
    from: &ResumeFrom,
    checkpoints: &Checkpoints,
    vs: &VarStore,
    opt: &mut AdamW,
    current_config_toml: &str,
    coll: &dyn Collective,
    device: Device,
) -> Result<Option<Resumed>, TrainError> {
    let checkpoint = match from {
        ResumeFrom::Path(dir) => Some(open(dir)?),
        ResumeFrom::Latest => {
            let found = if coll.rank() == 0 {
                checkpoints
                    .latest_valid()
                    .map_err(|e| TrainError::Checkpoint(e.to_string()))?
            } else {
                None
            };
            // Every rank must load the same folder: rank 0's choice is broadcast.
            let chosen = found.as_ref().map(|c| c.dir.to_string_lossy().into_owned());
            let chosen = broadcast_string(chosen.as_deref().unwrap_or(""), coll, device)
                .map_err(|e| TrainError::Dist(e.to_string()))?;
            match (found, chosen.is_empty()) {
                (Some(c), _) => Some(c),
                (None, true) => None,
                (None, false) => Some(open(Path::new(&chosen))?),
            }
        }
    };
    let Some(checkpoint) = checkpoint else {
        if coll.rank() == 0 {
            info!(
                "--resume latest: no checkpoint yet in {}; starting fresh",
                checkpoints.root().display()
            );
        }
        return Ok(None);
    };
    let state = &checkpoint.state;
    if state.world_size != coll.world_size() {
        return Err(TrainError::Checkpoint(format!(
            "{} was written by {} worker(s) but this run has {}: the data position is per worker, so resume with the same number of workers",
            checkpoint.dir.display(),
            state.world_size,
            coll.world_size()
        )));
    }
    let table = |text: &str, what: &str| {
        text.parse::<toml::Table>()
            .map_err(|e| TrainError::Checkpoint(format!("{what}: {}", e.message())))
    };
    let saved = table(
        &checkpoint.config_toml,
        &format!("{}/config.toml", checkpoint.dir.display()),
    )?;
    let current = table(current_config_toml, "the current config")?;
    let changes = config_compatibility(&saved, &current).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    if coll.rank() == 0 {
        for change in &changes {
            warn!("resuming with a changed config: {change}");
        }
    }
    let optim = checkpoint
        .load_into(vs)
        .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    opt.load_state_tensors(optim)?;
    let progress: Progress = serde_json::from_value(state.counters.clone())
        .map_err(|e| TrainError::Checkpoint(format!("{}/state.json: counters: {e}", checkpoint.dir.display())))?;
    let loader = state.loader.get(coll.rank()).cloned().ok_or_else(|| {
        TrainError::Checkpoint(format!(
            "{}/state.json has no loader state for rank {}",
            checkpoint.dir.display(),
            coll.rank()
        ))
    })?;
    if coll.rank() == 0 {
        info!(checkpoint = %checkpoint.dir.display(), step = progress.step, "resuming");
    }
    Ok(Some(Resumed {
        dir: checkpoint.dir.clone(),
        progress,
        loader,
    }))
}

fn open(dir: &Path) -> Result<Checkpoint, TrainError> {
    Checkpoint::open(dir).map_err(|e| TrainError::Checkpoint(e.to_string()))
}

/// Every rank's `bytes`, in rank order (lengths may differ).
fn gather_bytes(bytes: &[u8], coll: &dyn Collective, device: Device) -> Result<Vec<Vec<u8>>, DistError> {
    if coll.world_size() == 1 {
        return Ok(vec![bytes.to_vec()]);
    }
    let lengths = coll.all_gather(&Tensor::from_slice(&[bytes.len() as i64]).to_device(device))?;
    let lengths = Vec::<i64>::try_from(lengths.to_device(Device::Cpu)).unwrap_or_default();
    let longest = lengths.iter().copied().max().unwrap_or(0).max(1) as usize;
    let mut padded = bytes.to_vec();
    padded.resize(longest, 0);
    let gathered = coll.all_gather(&Tensor::from_slice(&padded).to_device(device))?;
    let gathered = Vec::<u8>::try_from(gathered.to_device(Device::Cpu).to_kind(Kind::Uint8)).unwrap_or_default();
    Ok(lengths
        .iter()
        .enumerate()
        .map(|(rank, &len)| gathered[rank * longest..rank * longest + len as usize].to_vec())
        .collect())
}

/// Rank 0's `text` on every rank.
fn broadcast_string(text: &str, coll: &dyn Collective, device: Device) -> Result<String, DistError> {
    if coll.world_size() == 1 {
        return Ok(text.to_string());
    }
    let mut len = Tensor::from_slice(&[text.len() as i64]).to_device(device);
    coll.broadcast_(&mut len, 0)?;
    let len = len.int64_value(&[0]).max(0) as usize;
    let mut bytes = text.as_bytes().to_vec();
    bytes.resize(len.max(1), 0);
    let mut buffer = Tensor::from_slice(&bytes).to_device(device);
    coll.broadcast_(&mut buffer, 0)?;
    let bytes = Vec::<u8>::try_from(buffer.to_device(Device::Cpu)).unwrap_or_default();
    Ok(String::from_utf8_lossy(&bytes[..len.min(bytes.len())]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::local::LocalGroup;

    #[test]
    fn bytes_of_unequal_length_gather_in_rank_order() {
        let results = LocalGroup::run(3, |coll| {
            let mine = vec![b'a' + coll.rank() as u8; coll.rank() * 2];
            gather_bytes(&mine, coll, Device::Cpu).unwrap()
        });
        for all in results {
            assert_eq!(all, vec![vec![], vec![b'b'; 2], vec![b'c'; 4]]);
        }
    }

    #[test]
    fn rank_zeros_string_reaches_everyone() {
        let results = LocalGroup::run(2, |coll| {
            let text = if coll.rank() == 0 {
                "runs/x/checkpoints/step_00000012"
            } else {
                ""
            };
            broadcast_string(text, coll, Device::Cpu).unwrap()
        });
        assert!(results.iter().all(|s| s == "runs/x/checkpoints/step_00000012"));
        let empty = LocalGroup::run(2, |coll| broadcast_string("", coll, Device::Cpu).unwrap());
        assert!(empty.iter().all(String::is_empty));
    }

    #[test]
    fn resume_argument_parses() {
        assert_eq!("latest".parse::<ResumeFrom>().unwrap(), ResumeFrom::Latest);
        assert_eq!(
            "runs/a/checkpoints/step_00000010".parse::<ResumeFrom>().unwrap(),
            ResumeFrom::Path(PathBuf::from("runs/a/checkpoints/step_00000010"))
        );
    }
}
