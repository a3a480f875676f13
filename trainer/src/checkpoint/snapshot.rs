//! The train loop's side of checkpoints (docs/architecture.md §6): what goes into one
//! (weights, AdamW state, the weights' moving average when there is one, every rank's
//! loader position, counters), when one is saved,
//! and how a run picks one up again. Storage, checksums and retention live in
//! [`super::store`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::{nn::VarStore, Device, Kind, Tensor};
use tracing::{info, warn};

use super::store::{
    config_compatibility, optim_shard_file, write_optim, Checkpoint, CheckpointConfig, CheckpointState, Checkpoints,
    FileDigest, CONFIG_FILE, LATEST_FILE,
};
use crate::data::TrainLoader;
use crate::dist::{Collective, DistError};
use crate::optim::{Ema, Optimizer, EMA_FILE};
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

impl Progress {
    /// Counts one step of `samples` samples over all ranks; `stepped` is false for a
    /// step skipped for a non-finite loss or gradient.
    pub fn record_step(&mut self, stepped: bool, samples: u64) {
        if stepped {
            self.nonfinite_in_a_row = 0;
        } else {
            self.skipped_steps += 1;
            self.nonfinite_in_a_row += 1;
        }
        self.step += 1;
        self.samples_seen += samples;
    }
}

/// A checkpoint this rank has loaded: the progress to continue from and its loader position.
pub struct Resumed {
    /// The folder it came from.
    pub dir: PathBuf,
    /// Counters to continue.
    pub progress: Progress,
    /// Every saved rank's loader state, in rank order (opaque JSON, see
    /// [`TrainLoader::state`]); a canonical stream's cover the whole stream whatever the
    /// worker count.
    pub loaders: Vec<serde_json::Value>,
}

/// What a checkpoint of the train loop holds besides [`Progress`]: the model's variables,
/// the optimizer, and this rank's loader (whose position is taken at save time).
pub struct TrainState<'a> {
    /// The model's variables.
    pub vs: &'a VarStore,
    /// The optimizer, for its moments (or this rank's shard of them) and step count.
    pub optimizer: &'a Optimizer,
    /// This rank's training loader.
    pub loader: &'a TrainLoader,
    /// The moving average of the weights (`optim.ema_decay`), if the run keeps one.
    pub ema: Option<&'a Ema>,
}

/// The train loop's checkpoints: where they go, when one is due, and the collective save
/// and resume every rank takes part in.
pub struct Checkpointer<'a> {
    checkpoints: Checkpoints,
    /// Save every this many steps (`checkpoint.every`; 0 = never periodically).
    every: u64,
    /// Also save at these steps, the last one included (`checkpoint.at_steps`).
    at_steps: Vec<u64>,
    /// The resolved config, written into every checkpoint and compared on resume.
    config_toml: &'a str,
    coll: &'a dyn Collective,
    device: Device,
}

impl<'a> Checkpointer<'a> {
    /// The checkpoints of the run folder `run_dir`, as `cfg` says.
    pub fn new(
        run_dir: &Path,
        cfg: &CheckpointConfig,
        config_toml: &'a str,
        coll: &'a dyn Collective,
        device: Device,
    ) -> Self {
        Self {
            checkpoints: Checkpoints::new(run_dir.join("checkpoints"), cfg),
            every: cfg.every,
            at_steps: cfg.at_steps.clone(),
            config_toml,
            coll,
            device,
        }
    }

    /// Saves when `progress` reaches a multiple of `checkpoint.every`, except at the last
    /// step (the final weights are written then), and at every step of
    /// `checkpoint.at_steps`, the last one included. Collective.
    pub fn maybe_save(&self, progress: Progress, last_step: u64, state: &TrainState) -> Result<(), TrainError> {
        if self.is_due(progress.step, last_step) {
            self.save(progress, state)?;
        }
        Ok(())
    }

    fn is_due(&self, step: u64, last_step: u64) -> bool {
        let periodic = self.every > 0 && step % self.every == 0 && step < last_step;
        periodic || self.at_steps.contains(&step)
    }

    /// Saves a checkpoint at `progress.step`: every rank sends its loader state to rank
    /// 0, which writes weights, optimizer state and `state.json`; with a sharded optimizer
    /// every rank first writes its own shard into the folder rank 0 began, and sends rank 0
    /// its digest. Collective: every rank must call it at the same step. Returns the folder
    /// on rank 0.
    pub fn save(&self, progress: Progress, state: &TrainState) -> Result<Option<PathBuf>, TrainError> {
        let coll = self.coll;
        let started = std::time::Instant::now();
        let loaders = self.gather_loader_states(state)?;
        let shards = match state.optimizer.is_sharded() {
            true => Some(self.write_optimizer_shards(progress.step, state)?),
            false => None,
        };
        let saved = match loaders {
            Some(loader) => {
                let counters = serde_json::to_value(progress).map_err(|source| TrainError::TrainState {
                    what: "counters".into(),
                    source,
                })?;
                let checkpoint_state = CheckpointState::new(progress.step, progress.samples_seen, loader, counters);
                let ema: Vec<(&str, Vec<(String, Tensor)>)> =
                    state.ema.iter().map(|ema| (EMA_FILE, ema.named())).collect();
                let dir = match shards {
                    None => self.checkpoints.save_with(
                        state.vs,
                        &state.optimizer.state_tensors(),
                        &ema,
                        self.config_toml,
                        checkpoint_state,
                    )?,
                    Some(mut files) => {
                        let tmp_dir = self.checkpoints.tmp_dir(progress.step);
                        for (file, tensors) in &ema {
                            files.insert(file.to_string(), write_optim(&tmp_dir, file, tensors)?);
                        }
                        self.checkpoints
                            .commit(&tmp_dir, state.vs, self.config_toml, checkpoint_state, files)?
                    }
                };
                info!(checkpoint = %dir.display(), seconds = started.elapsed().as_secs_f64(), "saved checkpoint");
                Some(dir)
            }
            None => None,
        };
        // Nobody runs ahead of a half-written checkpoint.
        coll.barrier()?;
        Ok(saved)
    }

    /// Every rank's loader position, in rank order, on rank 0 (`None` elsewhere).
    fn gather_loader_states(&self, state: &TrainState) -> Result<Option<Vec<serde_json::Value>>, TrainError> {
        let mine = serde_json::to_vec(&state.loader.state()).map_err(|source| TrainError::TrainState {
            what: "loader state".into(),
            source,
        })?;
        let all = gather_bytes(&mine, self.coll, self.device)?;
        if self.coll.rank() != 0 {
            return Ok(None);
        }
        let states = all
            .iter()
            .map(|bytes| serde_json::from_slice(bytes))
            .collect::<Result<Vec<serde_json::Value>, _>>()
            .map_err(|source| TrainError::TrainState {
                what: "loader state from a rank".into(),
                source,
            })?;
        Ok(Some(states))
    }

    /// Every rank writes its optimizer shard into the checkpoint folder rank 0 begins, synced;
    /// rank 0 gets every shard's file name and digest (for `state.json`), the others an
    /// empty map. Collective.
    fn write_optimizer_shards(
        &self,
        step: u64,
        state: &TrainState,
    ) -> Result<BTreeMap<String, FileDigest>, TrainError> {
        if self.coll.rank() == 0 {
            self.checkpoints.begin(step)?;
        }
        self.coll.barrier()?; // the folder exists before anyone writes into it
        let file = optim_shard_file(self.coll.rank());
        let digest = write_optim(&self.checkpoints.tmp_dir(step), &file, &state.optimizer.state_tensors())?;
        let mine = serde_json::to_vec(&(file, digest)).map_err(|source| TrainError::TrainState {
            what: "optimizer shard digest".into(),
            source,
        })?;
        let all = gather_bytes(&mine, self.coll, self.device)?;
        if self.coll.rank() != 0 {
            return Ok(BTreeMap::new());
        }
        all.iter()
            .map(|bytes| serde_json::from_slice::<(String, FileDigest)>(bytes))
            .collect::<Result<BTreeMap<_, _>, _>>()
            .map_err(|source| TrainError::TrainState {
                what: "optimizer shard digest from a rank".into(),
                source,
            })
    }

    /// Where a restart continues from after this run stops early: the folder `saved` on
    /// rank 0, else the `latest` pointer.
    pub fn resume_point(&self, saved: Option<PathBuf>) -> PathBuf {
        saved.unwrap_or_else(|| self.checkpoints.root().join(LATEST_FILE))
    }

    /// Finds the checkpoint to resume from (rank 0 chooses for `Latest`, all ranks
    /// follow), checks it against the current config and world, and loads weights and
    /// optimizer state into `vs` and `optimizer`, and the weights' moving average into
    /// `ema` (from the checkpoint's `ema.safetensors`; a checkpoint without one starts the
    /// average at its weights). `Ok(None)`: nothing to resume, start fresh.
    pub fn resume(
        &self,
        from: &ResumeFrom,
        vs: &VarStore,
        optimizer: &mut Optimizer,
        ema: Option<&mut Ema>,
    ) -> Result<Option<Resumed>, TrainError> {
        let Some(checkpoint) = self.find(from)? else {
            if self.coll.rank() == 0 {
                info!(
                    "--resume latest: no checkpoint yet in {}; starting fresh",
                    self.checkpoints.root().display()
                );
            }
            return Ok(None);
        };
        let rank = self.coll.rank();
        self.check_compatible(&checkpoint)?;
        if checkpoint.state.world_size == self.coll.world_size() {
            let optim = checkpoint.load_into(vs, rank)?;
            optimizer.load_state_tensors(optim)?;
        } else {
            // Another worker count (the data stream allows it, checked above): the model is
            // whole in the checkpoint, and the optimizer state is regathered from every shard.
            checkpoint.load_weights(vs)?;
            optimizer.load_resharded(checkpoint.optim_shards()?)?;
        }
        if let Some(ema) = ema {
            match checkpoint.load_tensor_file(EMA_FILE)? {
                Some(saved) => ema.load(saved)?,
                None => {
                    ema.reset_to_params();
                    if rank == 0 {
                        warn!(checkpoint = %checkpoint.dir.display(), "the checkpoint has no {EMA_FILE}: the moving average starts at its weights");
                    }
                }
            }
        }
        let progress: Progress =
            serde_json::from_value(checkpoint.state.counters.clone()).map_err(|source| TrainError::TrainState {
                what: format!("{}/state.json: counters", checkpoint.dir.display()),
                source,
            })?;
        if rank == 0 {
            info!(
                checkpoint = %checkpoint.dir.display(),
                step = progress.step,
                saved_workers = checkpoint.state.world_size,
                workers = self.coll.world_size(),
                "resuming"
            );
        }
        Ok(Some(Resumed {
            dir: checkpoint.dir.clone(),
            progress,
            loaders: checkpoint.state.loader.clone(),
        }))
    }

    /// The checkpoint `from` names; for `Latest` rank 0's choice, broadcast so every rank
    /// loads the same folder.
    fn find(&self, from: &ResumeFrom) -> Result<Option<Checkpoint>, TrainError> {
        match from {
            ResumeFrom::Path(dir) => Ok(Some(Checkpoint::open(dir)?)),
            ResumeFrom::Latest => {
                let found = match self.coll.rank() {
                    0 => self.checkpoints.latest_valid()?,
                    _ => None,
                };
                let chosen = found.as_ref().map(|c| c.dir.to_string_lossy().into_owned());
                let chosen = broadcast_string(chosen.as_deref().unwrap_or(""), self.coll, self.device)?;
                Ok(match (found, chosen.is_empty()) {
                    (Some(c), _) => Some(c),
                    (None, true) => None,
                    (None, false) => Some(Checkpoint::open(Path::new(&chosen))?),
                })
            }
        }
    }

    /// A worker count the saved data stream can continue on (the same one, or with a
    /// canonical stream any that divides its partition count), and a config that defines
    /// the same model; other config changes are allowed and logged.
    fn check_compatible(&self, checkpoint: &Checkpoint) -> Result<(), TrainError> {
        let (saved_world, world) = (checkpoint.state.world_size, self.coll.world_size());
        if saved_world != world {
            let partitions = checkpoint
                .state
                .loader
                .first()
                .and_then(|state| serde_json::from_value::<dataloader::LoaderState>(state.clone()).ok())
                .and_then(|state| state.partition_count());
            let reason =
                match partitions {
                    None => Some(format!(
                    " was written by {saved_world} worker(s) with per-rank data streams (data.stream = \"per_rank\"), \
                     whose batches depend on the worker count, but this run has {world}: resume with {saved_world} \
                     worker(s)"
                )),
                    Some(p) if p % world != 0 => Some(format!(
                    " holds a data stream of {p} partitions, which {world} workers cannot split evenly: resume on a \
                     worker count that divides {p} ({})",
                    (1..=p).filter(|w| p % w == 0).map(|w| w.to_string()).collect::<Vec<_>>().join(", ")
                )),
                    Some(_) => None,
                };
            if let Some(reason) = reason {
                return Err(TrainError::NotResumable {
                    dir: checkpoint.dir.clone(),
                    reason,
                });
            }
        }
        let saved_path = checkpoint.dir.join(CONFIG_FILE);
        let saved = checkpoint
            .config_toml
            .parse::<toml::Table>()
            .map_err(|e| TrainError::NotResumable {
                dir: saved_path,
                reason: format!(": {}", e.message()),
            })?;
        let current = self
            .config_toml
            .parse::<toml::Table>()
            .map_err(|e| TrainError::NotResumable {
                dir: "the current config".into(),
                reason: format!(": {}", e.message()),
            })?;
        let changes = config_compatibility(&saved, &current)?;
        if self.coll.rank() == 0 {
            for change in &changes {
                warn!("resuming with a changed config: {change}");
            }
        }
        Ok(())
    }
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
    fn at_steps_are_due_even_at_the_last_step() {
        let cfg = CheckpointConfig {
            every: 4,
            at_steps: vec![3, 10],
            ..CheckpointConfig::default()
        };
        LocalGroup::run(1, |coll| {
            let checkpointer = Checkpointer::new(Path::new("unused"), &cfg, "", coll, Device::Cpu);
            let due: Vec<u64> = (1..=10).filter(|s| checkpointer.is_due(*s, 10)).collect();
            // Multiples of `every` before the last step, and every listed step.
            assert_eq!(due, [3, 4, 8, 10]);
        });
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
