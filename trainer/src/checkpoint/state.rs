//! `state.json`, the checkpoint's table of contents: progress, the data position of every
//! rank, counters, and the size and SHA-256 of every other file. It is read from disk that
//! anyone with access to the run folder may have edited, so [`CheckpointState::parse`]
//! bounds what it accepts (its size, the files it may name, the ranks it may claim) before
//! anything acts on it; `fuzz/` runs it on arbitrary bytes.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the folder layout and `state.json` written by this code.
pub const FORMAT: u32 = 1;
/// Model weights, open_clip names (see [`crate::model::weights`]).
pub const MODEL_FILE: &str = "model.safetensors";
/// Optimizer state tensors, by name.
pub const OPTIM_FILE: &str = "optim.safetensors";
/// The resolved config the run was started with.
pub const CONFIG_FILE: &str = "config.toml";
/// [`CheckpointState`] as JSON.
pub const STATE_FILE: &str = "state.json";
/// The file of rank `rank`'s optimizer shard in a checkpoint folder.
pub fn optim_shard_file(rank: usize) -> String {
    format!("optim.rank{rank}.safetensors")
}

/// The largest `state.json` read (real ones are a few KB per rank).
pub const MAX_STATE_BYTES: u64 = 64 << 20;

/// Size and SHA-256 of one file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Length in bytes.
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
}

/// What `state.json` holds: progress, the data position of every rank, counters,
/// and the checksums of the other files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointState {
    /// Layout version ([`FORMAT`]).
    pub format: u32,
    /// Optimizer steps done.
    pub step: u64,
    /// Training samples consumed over all ranks.
    pub samples_seen: u64,
    /// Number of ranks that wrote `loader`.
    pub world_size: usize,
    /// Lower-case hex SHA-256 of `config.toml`; set by `Checkpoints::save`.
    pub config_hash: String,
    /// Data-loader position, one entry per rank (opaque here).
    pub loader: Vec<serde_json::Value>,
    /// Run counters such as skipped steps (opaque here).
    pub counters: serde_json::Value,
    /// File name → digest of every other file in the folder; set by
    /// `Checkpoints::save`.
    #[serde(default)]
    pub files: BTreeMap<String, FileDigest>,
    /// The optimizer state is one file per rank ([`optim_shard_file`], `optim.shard`)
    /// instead of [`OPTIM_FILE`].
    #[serde(default, skip_serializing_if = "is_false")]
    pub optim_shards: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl CheckpointState {
    /// Parses and checks `state.json`'s bytes: JSON of this layout, this [`FORMAT`], files
    /// named as plain names inside the folder, and one optimizer file per rank at most as many
    /// as it lists. `Err` says what is wrong (the caller names the folder).
    pub fn parse(bytes: &[u8]) -> Result<CheckpointState, String> {
        if bytes.len() as u64 > MAX_STATE_BYTES {
            return Err(format!(
                "{STATE_FILE} has {} bytes, more than the {MAX_STATE_BYTES} a checkpoint's state may have",
                bytes.len()
            ));
        }
        let state: CheckpointState =
            serde_json::from_slice(bytes).map_err(|e| format!("{STATE_FILE} is not valid: {e}"))?;
        if state.format != FORMAT {
            return Err(format!(
                "{STATE_FILE} has format {}, this build reads format {FORMAT}",
                state.format
            ));
        }
        for name in state.files.keys() {
            // Names come from a file: only plain names inside the folder.
            if name.is_empty() || name.contains(['/', '\\', '\0']) || name == "." || name == ".." {
                return Err(format!("{STATE_FILE} lists a file outside the folder: {name:?}"));
            }
        }
        // Each rank's optimizer shard is a listed file: a world larger than the list is a
        // lie (and would make the check below count to it).
        if state.optim_shards && state.world_size > state.files.len() {
            return Err(format!(
                "{STATE_FILE} claims optimizer shards of {} ranks but lists {} files",
                state.world_size,
                state.files.len()
            ));
        }
        let missing: Vec<String> = state
            .required_files()
            .into_iter()
            .filter(|f| !state.files.contains_key(f))
            .collect();
        if !missing.is_empty() {
            return Err(format!("{STATE_FILE} lists no checksum for {}", missing.join(", ")));
        }
        Ok(state)
    }

    /// The files a checkpoint of this state must have: the model, the config and the
    /// optimizer state (whole, or one shard per rank).
    pub fn required_files(&self) -> Vec<String> {
        let optim: Vec<String> = match self.optim_shards {
            true => (0..self.world_size).map(optim_shard_file).collect(),
            false => vec![OPTIM_FILE.to_string()],
        };
        [MODEL_FILE.to_string(), CONFIG_FILE.to_string()]
            .into_iter()
            .chain(optim)
            .collect()
    }
}

/// The fuzzing harness of [`CheckpointState::parse`] (`fuzz/fuzz_targets/checkpoint_state.rs`
/// under libFuzzer; the seeded test below on stable Rust): arbitrary bytes as `state.json`.
/// Nothing may panic; a state that parses names at most as many required files as it lists
/// (plus the model and config), and writes back to bytes that parse to the same state.
/// Returns whether the bytes parsed.
pub fn state_json_harness(data: &[u8]) -> bool {
    let Ok(state) = CheckpointState::parse(data) else {
        return false;
    };
    assert!(state.required_files().len() <= state.files.len() + 2);
    let again = serde_json::to_vec(&state).expect("a parsed state serialises");
    assert_eq!(CheckpointState::parse(&again).expect("its own bytes parse"), state);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_json(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let digest = serde_json::json!({"bytes": 1, "sha256": "00"});
        let mut value = serde_json::json!({
            "format": FORMAT, "step": 3, "samples_seen": 12, "world_size": 2, "config_hash": "00",
            "loader": [], "counters": {},
            "files": {"model.safetensors": digest, "optim.safetensors": digest, "config.toml": digest},
        });
        edit(&mut value);
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn a_good_state_parses_and_bad_ones_say_why() {
        assert_eq!(CheckpointState::parse(&state_json(|_| {})).unwrap().step, 3);
        let cases: [(&str, fn(&mut serde_json::Value)); 6] = [
            ("lists a file outside the folder: \"../model.safetensors\"", |v| {
                v["files"]["../model.safetensors"] = v["files"]["model.safetensors"].clone()
            }),
            ("lists a file outside the folder: \"/etc/passwd\"", |v| {
                v["files"]["/etc/passwd"] = v["files"]["model.safetensors"].clone()
            }),
            ("has format 99", |v| v["format"] = 99.into()),
            ("lists no checksum for model.safetensors", |v| {
                v["files"].as_object_mut().unwrap().remove("model.safetensors");
            }),
            (
                "claims optimizer shards of 1000000000000000000 ranks but lists 3 files",
                |v| {
                    v["optim_shards"] = true.into();
                    v["world_size"] = 1_000_000_000_000_000_000u64.into();
                },
            ),
            ("is not valid: unknown field `surprise`", |v| v["surprise"] = 1.into()),
        ];
        for (want, edit) in cases {
            let err = CheckpointState::parse(&state_json(edit)).unwrap_err();
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
        let huge = vec![b' '; MAX_STATE_BYTES as usize + 1];
        assert!(CheckpointState::parse(&huge).unwrap_err().contains("more than"));
    }

    /// Found by the fuzzer: a float of 19 significant digits in the (opaque) loader state
    /// came back one ulp off after a write and a read, with serde_json's default float
    /// parser; the workspace enables its exact one (`float_roundtrip`).
    #[test]
    fn states_with_long_floats_round_trip_exactly() {
        let input = state_json(|v| v["loader"] = serde_json::json!([{"shards_hash": 0}]));
        let text = String::from_utf8(input)
            .unwrap()
            .replace("{\"shards_hash\":0}", "{\"shards_hash\":131548953116.5144568}");
        assert!(state_json_harness(text.as_bytes()));
    }

    /// [`state_json_harness`] on 5,000 seeded mutations of a real state (bit flips, cuts,
    /// spliced spans, numbers swapped for huge ones), as CI's stand-in for the fuzzer.
    #[test]
    fn the_state_parser_survives_seeded_mutations() {
        let seed = state_json(|v| v["optim_shards"] = false.into());
        let mut x = 0x5eed_u64;
        let mut next = move |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n.max(1) as u64) as usize
        };
        let (mut parsed, mut refused) = (0, 0);
        for _ in 0..5_000 {
            let mut input = seed.clone();
            for _ in 0..1 + next(3) {
                let len = input.len();
                match next(5) {
                    _ if len == 0 => input.push(b'{'),
                    0 => {
                        let at = next(len);
                        input[at] ^= 1 << next(8);
                    }
                    1 => input.truncate(next(len + 1)),
                    2 => {
                        let (a, b) = (next(len), next(len));
                        let span = input[a.min(b)..a.max(b)].to_vec();
                        let at = next(input.len() + 1);
                        input.splice(at..at, span);
                    }
                    3 => {
                        let digits = input.iter().position(|c| c.is_ascii_digit()).unwrap_or(0);
                        input.splice(digits..digits, b"99999999999999999999".iter().copied());
                    }
                    _ => {
                        let at = next(len + 1);
                        input.insert(at, b"{}[]\":,./0"[next(10)]);
                    }
                }
            }
            if state_json_harness(&input) {
                parsed += 1;
            } else {
                refused += 1;
            }
        }
        assert!(parsed > 50 && refused > 50, "parsed {parsed}, refused {refused}");
    }
}
