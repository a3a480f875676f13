//! Checkpoint storage: crash-safe folders of safetensors, the resolved config and
//! a `state.json` with checksums, under `runs/<name>/checkpoints/` (docs/architecture.md §6).
//!
//! ```text
//! checkpoints/step_00000100/  model.safetensors  optim.safetensors  config.toml  state.json
//! checkpoints/latest          "step_00000100"
//! ```
//!
//! A save writes everything into `step_<n>.tmp/`, fsyncs each file and the folder,
//! renames it to `step_<n>/` (the commit point), fsyncs the root, then replaces
//! `latest` atomically and prunes old folders. A crash at any moment leaves either
//! the previous checkpoint or the new one, plus at worst a `.tmp` folder that the
//! next [`Checkpoints::latest_valid`] removes. Loading verifies the size and
//! SHA-256 of every file before anything is read into the model, and never runs
//! code (safetensors, JSON and TOML only).
//!
//! This module knows nothing of the train loop: the loader positions and
//! counters in [`CheckpointState`] are opaque JSON to it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::state::MAX_STATE_BYTES;
pub use super::state::{
    optim_shard_file, CheckpointState, FileDigest, CONFIG_FILE, FORMAT, MODEL_FILE, OPTIM_FILE, STATE_FILE,
};
use crate::model::weights::{load_safetensors, save_safetensors, WeightsError};

/// The pointer file in the root naming the newest checkpoint folder.
pub const LATEST_FILE: &str = "latest";
/// Suffix of folders and files being written; leftovers are removed.
const TMP_SUFFIX: &str = ".tmp";
/// Top-level config keys that name or place a run rather than define it.
const IGNORED_CONFIG_KEYS: [&str; 2] = ["name", "out_dir"];

/// Errors of checkpoint storage; each names the folder or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file or folder could not be created, written, synced, renamed or read.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The model weights could not be written or do not fit the model.
    #[error("checkpoint model weights: {0}")]
    Weights(#[from] WeightsError),
    /// The optimizer tensors could not be written or read.
    #[error("checkpoint optimizer state {path}: {message}")]
    Tensors {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The folder is incomplete or does not match its checksums.
    #[error("checkpoint {dir} is corrupt: {message}")]
    Corrupt {
        /// The checkpoint folder.
        dir: PathBuf,
        /// What is wrong (names the file).
        message: String,
    },
    /// Checkpoints exist under the root but none of them verifies.
    #[error("no valid checkpoint under {root}: all {tried} checkpoint folder(s) failed verification (see warnings)")]
    NoneValid {
        /// The checkpoints root.
        root: PathBuf,
        /// How many folders were tried.
        tried: usize,
    },
    /// The saved and current configs define different models.
    #[error("checkpoint config is incompatible: the model differs in {}", keys.join(", "))]
    Incompatible {
        /// One entry per differing key: `model.width: 512 -> 768`.
        keys: Vec<String>,
    },
}

/// Up to `limit` bytes of the file at `path`; a longer file is an error (its length named).
fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let too_long = || io::Error::new(io::ErrorKind::InvalidData, format!("longer than {limit} bytes"));
    // Refused by its length before a byte is read; `take` covers a file that grows meanwhile.
    if fs::metadata(path)?.len() > limit {
        return Err(too_long());
    }
    let mut bytes = Vec::new();
    File::open(path)?.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_long());
    }
    Ok(bytes)
}

impl CheckpointState {
    /// A state at `step` with the current [`FORMAT`]; hash and files are filled
    /// in by [`Checkpoints::save`].
    pub fn new(step: u64, samples_seen: u64, loader: Vec<serde_json::Value>, counters: serde_json::Value) -> Self {
        Self {
            format: FORMAT,
            step,
            samples_seen,
            world_size: loader.len(),
            config_hash: String::new(),
            loader,
            counters,
            files: BTreeMap::new(),
            optim_shards: false,
        }
    }
}

/// Writes optimizer tensors as `dir/file_name` (safetensors, CPU, contiguous), synced, and
/// returns the file's digest: the whole state from rank 0, or each rank's shard.
pub fn write_optim(dir: &Path, file_name: &str, optim: &[(String, Tensor)]) -> Result<FileDigest, CheckpointError> {
    let path = dir.join(file_name);
    let on_cpu: Vec<(String, Tensor)> = optim
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    Tensor::write_safetensors(&on_cpu, &path).map_err(|e| CheckpointError::Tensors {
        path: path.clone(),
        message: e.to_string(),
    })?;
    sync_file(&path)?;
    digest_file(&path).map_err(io_err(&path))
}

/// Lower-case hex SHA-256 of `bytes` (e.g. the resolved config text).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Size and SHA-256 of the file at `path`, read in blocks.
fn digest_file(path: &Path) -> io::Result<FileDigest> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileDigest {
        bytes,
        sha256: hex(&hasher.finalize()),
    })
}

/// Flushes a file's data and metadata to disk.
fn sync_file(path: &Path) -> Result<(), CheckpointError> {
    File::open(path).and_then(|f| f.sync_all()).map_err(io_err(path))
}

/// Fault injection for the kill-during-save test (tests/cli_resume.rs):
/// `FERROCLIP_FAULT_ABORT_IN_SAVE=<step>:<marker file>` aborts the process
/// half-way through writing checkpoint `<step>`, once — the marker records
/// that it fired, so the restarted run saves normally. Compiled only with the
/// `fault-injection` feature (test builds); otherwise a no-op the optimiser removes.
#[cfg(feature = "fault-injection")]
fn fault_abort_in_save(step: u64) {
    let Ok(spec) = std::env::var(protocol::env::FAULT_ABORT_IN_SAVE) else {
        return;
    };
    let Some((at, marker)) = spec.split_once(':') else {
        return;
    };
    if at.parse::<u64>().ok() != Some(step) || Path::new(marker).exists() {
        return;
    }
    let _ = fs::write(marker, b"fired\n");
    tracing::error!(
        step,
        "FERROCLIP_FAULT_ABORT_IN_SAVE: aborting half-way through a checkpoint"
    );
    std::process::abort();
}

#[cfg(not(feature = "fault-injection"))]
fn fault_abort_in_save(_step: u64) {}

/// Flushes a folder's entries (creations, renames) to disk. Opening a folder
/// read-only and fsyncing it is how POSIX persists its entries.
fn sync_dir(path: &Path) -> Result<(), CheckpointError> {
    File::open(path).and_then(|f| f.sync_all()).map_err(io_err(path))
}

/// Writes `content` to `path` and fsyncs it.
fn write_synced(path: &Path, content: &[u8]) -> Result<(), CheckpointError> {
    let mut file = File::create(path).map_err(io_err(path))?;
    file.write_all(content).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// `step_00000042` for step 42.
pub fn step_dir_name(step: u64) -> String {
    format!("step_{step:08}")
}

/// The step of a folder named `step_<digits>`, else `None` (temporary folders,
/// stray files).
fn parse_step_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step_")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The checkpoints of one run: a root folder and a retention policy.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    root: PathBuf,
    keep_last: usize,
    keep_every: u64,
    at_steps: Vec<u64>,
}

/// The `[checkpoint]` section: when the train loop saves, and what storage keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Save every this many optimizer steps (0 = only on SIGTERM/SIGINT and
    /// when the run stops on non-finite steps).
    pub every: u64,
    /// Keep the newest this many checkpoints.
    pub keep_last: usize,
    /// Also keep every checkpoint whose step is a multiple of this (0 = none).
    pub keep_every: u64,
    /// Also save a checkpoint at each of these steps, the last step of the run included,
    /// and keep it: the points a sweep branches cooldowns from (`cooldown_from`).
    pub at_steps: Vec<u64>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every: 500,
            keep_last: 3,
            keep_every: 0,
            at_steps: Vec::new(),
        }
    }
}

impl CheckpointConfig {
    /// Checks the section; errors name the field.
    pub fn validate(&self) -> Result<(), crate::field::FieldError> {
        if self.keep_last == 0 {
            return Err(crate::field::FieldError::new(
                "checkpoint.keep_last",
                "must be > 0 (the newest checkpoint is what a restart resumes from)",
            ));
        }
        if self.at_steps.contains(&0) {
            return Err(crate::field::FieldError::new(
                "checkpoint.at_steps",
                "step 0 is before any training: list steps ≥ 1",
            ));
        }
        Ok(())
    }
}

impl Checkpoints {
    /// Checkpoints under `root` (`runs/<name>/checkpoints`), keeping the newest
    /// `cfg.keep_last` plus every step that is a multiple of `cfg.keep_every` (0: none)
    /// and every step of `cfg.at_steps`.
    pub fn new(root: impl Into<PathBuf>, cfg: &CheckpointConfig) -> Self {
        Self {
            root: root.into(),
            keep_last: cfg.keep_last,
            keep_every: cfg.keep_every,
            at_steps: cfg.at_steps.clone(),
        }
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes a checkpoint of `vs` (model), `optim` (named optimizer tensors) and
    /// `config_toml` (the resolved config) with `state`, whose `config_hash`,
    /// `format` and `files` are filled in here. Returns the new folder.
    ///
    /// Crash-safe: see the module doc. An existing folder for the same step (a
    /// step saved again after a resume) is replaced.
    pub fn save(
        &self,
        vs: &VarStore,
        optim: &[(String, Tensor)],
        config_toml: &str,
        state: CheckpointState,
    ) -> Result<PathBuf, CheckpointError> {
        self.save_with(vs, optim, &[], config_toml, state)
    }

    /// [`Checkpoints::save`] with more tensor files beside the optimizer's (`ema.safetensors`:
    /// (file name, tensors)), listed with their digests in `state.json` like the others.
    pub fn save_with(
        &self,
        vs: &VarStore,
        optim: &[(String, Tensor)],
        extra: &[(&str, Vec<(String, Tensor)>)],
        config_toml: &str,
        state: CheckpointState,
    ) -> Result<PathBuf, CheckpointError> {
        let tmp_dir = self.begin(state.step)?;
        let mut files: BTreeMap<String, FileDigest> =
            [(OPTIM_FILE.to_string(), write_optim(&tmp_dir, OPTIM_FILE, optim)?)].into();
        for (file, tensors) in extra {
            files.insert(file.to_string(), write_optim(&tmp_dir, file, tensors)?);
        }
        fault_abort_in_save(state.step);
        self.commit(&tmp_dir, vs, config_toml, state, files)
    }

    /// The folder checkpoint `step` is written into before it is committed: `step_<n>.tmp`.
    pub fn tmp_dir(&self, step: u64) -> PathBuf {
        self.root.join(format!("{}{TMP_SUFFIX}", step_dir_name(step)))
    }

    /// Starts checkpoint `step`: a fresh, empty [`Checkpoints::tmp_dir`] (a leftover of a
    /// crash is removed). Then the optimizer files go in ([`write_optim`], from every rank
    /// when sharded), then [`Checkpoints::commit`].
    pub fn begin(&self, step: u64) -> Result<PathBuf, CheckpointError> {
        fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        let tmp_dir = self.tmp_dir(step);
        if tmp_dir.exists() {
            fs::remove_dir_all(&tmp_dir).map_err(io_err(&tmp_dir))?;
        }
        fs::create_dir(&tmp_dir).map_err(io_err(&tmp_dir))?;
        Ok(tmp_dir)
    }

    /// Finishes the checkpoint begun in `tmp_dir`: writes the model and the config, then
    /// `state.json` with the digests of those and of `optim_files` (the optimizer files
    /// already written there), and commits the folder (rename), `latest` and the pruning.
    pub fn commit(
        &self,
        tmp_dir: &Path,
        vs: &VarStore,
        config_toml: &str,
        mut state: CheckpointState,
        optim_files: BTreeMap<String, FileDigest>,
    ) -> Result<PathBuf, CheckpointError> {
        let name = step_dir_name(state.step);
        let final_dir = self.root.join(&name);
        let model_path = tmp_dir.join(MODEL_FILE);
        save_safetensors(vs, &model_path)?;
        sync_file(&model_path)?;
        let config_path = tmp_dir.join(CONFIG_FILE);
        write_synced(&config_path, config_toml.as_bytes())?;

        // Digests are taken from the files as written, so they vouch for the disk
        // content rather than for what we meant to write.
        state.format = FORMAT;
        state.config_hash = sha256_hex(config_toml.as_bytes());
        state.optim_shards = !optim_files.contains_key(OPTIM_FILE);
        state.files = optim_files;
        for file in [MODEL_FILE, CONFIG_FILE] {
            let path = tmp_dir.join(file);
            let digest = digest_file(&path).map_err(io_err(&path))?;
            state.files.insert(file.to_string(), digest);
        }
        let state_path = tmp_dir.join(STATE_FILE);
        let json = serde_json::to_vec_pretty(&state).map_err(|e| CheckpointError::Io {
            path: state_path.clone(),
            source: io::Error::other(e),
        })?;
        write_synced(&state_path, &json)?;
        sync_dir(tmp_dir)?;

        // rename() cannot replace a non-empty folder: move the old one aside first.
        // A crash in between leaves the older checkpoints, which is still valid.
        let replaced = self.root.join(format!("{name}.replaced{TMP_SUFFIX}"));
        let had_old = final_dir.exists();
        if had_old {
            if replaced.exists() {
                fs::remove_dir_all(&replaced).map_err(io_err(&replaced))?;
            }
            fs::rename(&final_dir, &replaced).map_err(io_err(&final_dir))?;
        }
        fs::rename(tmp_dir, &final_dir).map_err(io_err(&final_dir))?;
        sync_dir(&self.root)?;
        if had_old {
            fs::remove_dir_all(&replaced).map_err(io_err(&replaced))?;
        }

        self.write_latest(&name)?;
        self.prune(state.step);
        Ok(final_dir)
    }

    /// Replaces the `latest` pointer atomically: temp file, fsync, rename, fsync root.
    fn write_latest(&self, dir_name: &str) -> Result<(), CheckpointError> {
        let tmp = self.root.join(format!("{LATEST_FILE}{TMP_SUFFIX}"));
        write_synced(&tmp, format!("{dir_name}\n").as_bytes())?;
        let latest = self.root.join(LATEST_FILE);
        fs::rename(&tmp, &latest).map_err(io_err(&latest))?;
        sync_dir(&self.root)
    }

    /// The folder name `latest` points to, if it is a well-formed step folder name.
    fn read_latest(&self) -> Option<Result<String, String>> {
        let path = self.root.join(LATEST_FILE);
        match fs::read_to_string(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(format!("cannot read {}: {e}", path.display()))),
            Ok(text) => {
                let name = text.trim();
                if parse_step_dir_name(name).is_some() {
                    Some(Ok(name.to_string()))
                } else {
                    Some(Err(format!(
                        "{} holds {name:?}, not a step folder name",
                        path.display()
                    )))
                }
            }
        }
    }

    /// Step folders under the root, newest first.
    fn step_dirs(&self) -> Result<Vec<(u64, String)>, CheckpointError> {
        let mut found = Vec::new();
        let entries = match fs::read_dir(&self.root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
            other => other.map_err(io_err(&self.root))?,
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(step) = parse_step_dir_name(&name) {
                if entry.path().is_dir() {
                    found.push((step, name));
                }
            }
        }
        found.sort_unstable_by_key(|(step, _)| std::cmp::Reverse(*step));
        Ok(found)
    }

    /// Deletes step folders outside the retention policy. The folder `latest`
    /// names and the one just saved are always kept. Failures are warnings: a
    /// checkpoint left behind costs disk, not correctness.
    fn prune(&self, just_saved: u64) {
        let dirs = match self.step_dirs() {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "not pruning checkpoints");
                return;
            }
        };
        let latest = self.read_latest().and_then(Result::ok);
        for (rank, (step, name)) in dirs.iter().enumerate() {
            let keep = rank < self.keep_last
                || *step == just_saved
                || (self.keep_every > 0 && step % self.keep_every == 0)
                || self.at_steps.contains(step)
                || latest.as_deref() == Some(name.as_str());
            if !keep {
                let path = self.root.join(name);
                if let Err(e) = fs::remove_dir_all(&path) {
                    tracing::warn!(dir = %path.display(), error = %e, "cannot remove old checkpoint");
                }
            }
        }
    }

    /// Removes folders and files left by an interrupted save (`*.tmp`).
    fn remove_leftovers(&self) -> Result<(), CheckpointError> {
        let entries = match fs::read_dir(&self.root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other.map_err(io_err(&self.root))?,
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&self.root))?;
            if !entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
                continue;
            }
            let path = entry.path();
            tracing::info!(path = %path.display(), "removing leftover of an interrupted checkpoint save");
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            if let Err(e) = removed {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove leftover");
            }
        }
        Ok(())
    }

    /// The newest checkpoint that verifies, trying the one `latest` names first
    /// (or the highest step if `latest` is missing or bad), then older ones; each
    /// one that fails is reported with `tracing::warn!`. `Ok(None)` when there is
    /// no checkpoint at all; [`CheckpointError::NoneValid`] when there are some
    /// but none verifies (starting over silently would then prune them).
    ///
    /// Removes leftovers of interrupted saves: call it only while no save is in
    /// progress (at start-up, before training).
    pub fn latest_valid(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        self.remove_leftovers()?;
        let dirs = self.step_dirs()?;
        let mut candidates: Vec<&str> = dirs.iter().map(|(_, n)| n.as_str()).collect();
        match self.read_latest() {
            None if !dirs.is_empty() => {
                tracing::warn!(root = %self.root.display(), "no `latest` pointer; trying the highest step");
            }
            None => {}
            Some(Err(why)) => tracing::warn!("{why}; trying the highest step"),
            Some(Ok(name)) => match dirs.iter().position(|(_, n)| *n == name) {
                // Start at `latest`; folders newer than it were never pointed to.
                Some(at) => candidates = candidates.split_off(at),
                None => tracing::warn!(
                    root = %self.root.display(),
                    "`latest` names {name}, which does not exist; trying the highest step"
                ),
            },
        }
        for name in &candidates {
            let dir = self.root.join(name);
            match Checkpoint::open(&dir) {
                Ok(checkpoint) => return Ok(Some(checkpoint)),
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "skipping checkpoint that does not verify"),
            }
        }
        if candidates.is_empty() {
            Ok(None)
        } else {
            Err(CheckpointError::NoneValid {
                root: self.root.clone(),
                tried: candidates.len(),
            })
        }
    }
}

/// A verified checkpoint folder.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The folder.
    pub dir: PathBuf,
    /// Its `state.json`.
    pub state: CheckpointState,
    /// Its `config.toml`, as saved.
    pub config_toml: String,
}

impl Checkpoint {
    /// Opens the folder at `dir` (e.g. an explicit `--resume PATH`) and verifies
    /// the size and SHA-256 of every file `state.json` lists; any problem is an
    /// error naming the folder and file.
    pub fn open(dir: &Path) -> Result<Checkpoint, CheckpointError> {
        let corrupt = |message: String| CheckpointError::Corrupt {
            dir: dir.to_path_buf(),
            message,
        };
        let state_path = dir.join(STATE_FILE);
        let state_bytes = read_bounded(&state_path, MAX_STATE_BYTES)
            .map_err(|e| corrupt(format!("cannot read {STATE_FILE}: {e}")))?;
        let state = CheckpointState::parse(&state_bytes).map_err(corrupt)?;
        for (name, expected) in &state.files {
            let path = dir.join(name);
            let actual = digest_file(&path).map_err(|e| corrupt(format!("cannot read {name}: {e}")))?;
            if actual.bytes != expected.bytes {
                return Err(corrupt(format!(
                    "{name} has {} bytes, {STATE_FILE} says {}",
                    actual.bytes, expected.bytes
                )));
            }
            if actual.sha256 != expected.sha256 {
                return Err(corrupt(format!(
                    "{name} has SHA-256 {}, {STATE_FILE} says {}",
                    actual.sha256, expected.sha256
                )));
            }
        }
        let config_path = dir.join(CONFIG_FILE);
        let config_toml =
            fs::read_to_string(&config_path).map_err(|e| corrupt(format!("cannot read {CONFIG_FILE}: {e}")))?;
        if sha256_hex(config_toml.as_bytes()) != state.config_hash {
            return Err(corrupt(format!(
                "{CONFIG_FILE} does not match config_hash in {STATE_FILE}"
            )));
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            state,
            config_toml,
        })
    }

    /// Loads the model weights into `vs` (names and shapes checked both ways,
    /// see [`load_safetensors`]) and returns the optimizer tensors by name, on
    /// the CPU: the whole state, or rank `rank`'s shard when the optimizer was sharded.
    pub fn load_into(&self, vs: &VarStore, rank: usize) -> Result<Vec<(String, Tensor)>, CheckpointError> {
        self.load_weights(vs)?;
        let optim_path = match self.state.optim_shards {
            true => self.dir.join(optim_shard_file(rank)),
            false => self.dir.join(OPTIM_FILE),
        };
        Tensor::read_safetensors(&optim_path).map_err(|e| CheckpointError::Tensors {
            path: optim_path,
            message: e.to_string(),
        })
    }

    /// The tensors of `file` (`ema.safetensors`), when the checkpoint lists it; on the CPU.
    pub fn load_tensor_file(&self, file: &str) -> Result<Option<Vec<(String, Tensor)>>, CheckpointError> {
        if !self.state.files.contains_key(file) {
            return Ok(None);
        }
        let path = self.dir.join(file);
        Tensor::read_safetensors(&path)
            .map(Some)
            .map_err(|e| CheckpointError::Tensors {
                path,
                message: e.to_string(),
            })
    }

    /// Loads the model weights into `vs`.
    pub fn load_weights(&self, vs: &VarStore) -> Result<(), CheckpointError> {
        load_safetensors(vs, self.dir.join(MODEL_FILE))?;
        Ok(())
    }

    /// Every rank's optimizer shard of a sharded checkpoint, in rank order (what a resume on
    /// another worker count regathers); the one optimizer file otherwise.
    pub fn optim_shards(&self) -> Result<Vec<Vec<(String, Tensor)>>, CheckpointError> {
        let files: Vec<String> = match self.state.optim_shards {
            true => (0..self.state.world_size).map(optim_shard_file).collect(),
            false => vec![OPTIM_FILE.to_string()],
        };
        files
            .into_iter()
            .map(|file| {
                let path = self.dir.join(file);
                Tensor::read_safetensors(&path).map_err(|e| CheckpointError::Tensors {
                    path,
                    message: e.to_string(),
                })
            })
            .collect()
    }

    /// The saved config parsed as a TOML table.
    pub fn config_table(&self) -> Result<toml::Table, CheckpointError> {
        self.config_toml
            .parse()
            .map_err(|e: toml::de::Error| CheckpointError::Corrupt {
                dir: self.dir.clone(),
                message: format!("{CONFIG_FILE} is not valid TOML: {e}"),
            })
    }
}

/// Compares a checkpoint's resolved config (`saved`) with the current one. Any
/// difference under `model` is [`CheckpointError::Incompatible`], listing the
/// keys; other differences come back as warnings such as
/// `optim.lr: 0.001 -> 0.0005`. Top-level `name` and `out_dir` are ignored.
pub fn config_compatibility(saved: &toml::Table, current: &toml::Table) -> Result<Vec<String>, CheckpointError> {
    let mut old = BTreeMap::new();
    let mut new = BTreeMap::new();
    flatten("", saved, &mut old);
    flatten("", current, &mut new);
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut model_changes = Vec::new();
    let mut warnings = Vec::new();
    for key in keys {
        let (a, b) = (old.get(key), new.get(key));
        if a == b || IGNORED_CONFIG_KEYS.contains(&key.as_str()) {
            continue;
        }
        let show = |v: Option<&toml::Value>| v.map_or_else(|| "(absent)".to_string(), ToString::to_string);
        let change = format!("{key}: {} -> {}", show(a), show(b));
        // Activation checkpointing is under `model` but changes no weight: a warning.
        let architecture = (key == "model" || key.starts_with("model.")) && !key.ends_with(".grad_checkpointing");
        if architecture {
            model_changes.push(change);
        } else {
            warnings.push(change);
        }
    }
    if model_changes.is_empty() {
        Ok(warnings)
    } else {
        Err(CheckpointError::Incompatible { keys: model_changes })
    }
}

/// Dotted key → leaf value; arrays are leaves.
fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => flatten(&path, inner, out),
            leaf => {
                out.insert(path, leaf.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests;
