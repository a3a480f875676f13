//! Pair scores: the scoring pass over shards, and score files (JSON lines) that let a later
//! run change the threshold without rescoring.
//!
//! A score file line is `{"shard": "00003.tar", "key": "000000042", "score": 0.3125}`;
//! `score` is `null` for a pair the scorer could not score (no image, undecodable image, no
//! caption). Scores are keyed by the shard's *file name* and the sample key, so a saved file
//! still applies when the shards are read from another folder.
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use dataloader::RawSample;
use serde::{Deserialize, Serialize};

use crate::error::CurateError;

/// Why a scorer failed as a whole (a bad pair is not an error: it scores `None`).
#[derive(Debug, thiserror::Error)]
#[error("pair scorer: {0}")]
pub struct ScoreError(pub String);

/// Scores image–text pairs; the binary implements it with a ferroclip checkpoint (curator
/// links no model code).
pub trait PairScorer {
    /// One score per sample of `batch`, in order (higher = better matched; DFN uses the cosine
    /// similarity of the image and text embeddings); `None` for a pair that cannot be scored.
    fn score(&self, batch: &[RawSample]) -> Result<Vec<Option<f32>>, ScoreError>;
}

/// One line of a score file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ScoreLine {
    shard: String,
    key: String,
    score: Option<f32>,
}

/// Scores by shard file name, then sample key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoreTable {
    by_shard: HashMap<String, HashMap<String, Option<f32>>>,
}

/// The name scores are filed under for `shard`: its file name.
pub fn shard_name(shard: &Path) -> String {
    shard
        .file_name()
        .map_or_else(|| shard.display().to_string(), |n| n.to_string_lossy().into_owned())
}

impl ScoreTable {
    /// The score of the sample `key` of the shard named `shard` (see [`shard_name`]):
    /// `None` when the table has no entry, `Some(None)` when the pair could not be scored.
    pub fn get(&self, shard: &str, key: &str) -> Option<Option<f32>> {
        self.by_shard.get(shard)?.get(key).copied()
    }

    /// Record a score.
    pub fn insert(&mut self, shard: &str, key: &str, score: Option<f32>) {
        self.by_shard
            .entry(shard.to_string())
            .or_default()
            .insert(key.to_string(), score);
    }

    /// Whether the table has any score of the shard named `shard`.
    pub fn has_shard(&self, shard: &str) -> bool {
        self.by_shard.contains_key(shard)
    }

    /// Number of pairs in the table (scored or not).
    pub fn len(&self) -> usize {
        self.by_shard.values().map(HashMap::len).sum()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The finite scores of the named shards, for the threshold.
    pub fn scores_of<'a>(&'a self, shards: impl IntoIterator<Item = &'a str>) -> Vec<f32> {
        shards
            .into_iter()
            .filter_map(|s| self.by_shard.get(s))
            .flat_map(|keys| keys.values().filter_map(|s| *s))
            .collect()
    }

    /// Read a score file, or every `*.jsonl` in a folder (sorted by name). The same pair
    /// appearing twice with different scores is an error naming the file and the pair.
    pub fn load(path: &Path) -> Result<Self, CurateError> {
        let files = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| CurateError::io(path, e))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(CurateError::Scores {
                    path: path.to_path_buf(),
                    reason: "the folder holds no .jsonl score files".into(),
                });
            }
            files
        } else {
            vec![path.to_path_buf()]
        };
        let mut table = ScoreTable::default();
        for file in files {
            table.read_file(&file)?;
        }
        Ok(table)
    }

    fn read_file(&mut self, path: &Path) -> Result<(), CurateError> {
        let reader = BufReader::new(File::open(path).map_err(|e| CurateError::io(path, e))?);
        for (i, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| CurateError::io(path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let bad = |reason: String| CurateError::Scores {
                path: path.to_path_buf(),
                reason: format!("line {}: {reason}", i + 1),
            };
            let parsed: ScoreLine = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
            if parsed.score.is_some_and(|s| !s.is_finite()) {
                return Err(bad("the score is not a finite number".into()));
            }
            match self.get(&parsed.shard, &parsed.key) {
                Some(old) if old != parsed.score => {
                    return Err(bad(format!(
                        "{}/{} was already scored {old:?}, now {:?}",
                        parsed.shard, parsed.key, parsed.score
                    )))
                }
                _ => self.insert(&parsed.shard, &parsed.key, parsed.score),
            }
        }
        Ok(())
    }
}

/// File name of the scores of input shard `index` (mirrors the output shard names).
pub fn score_file_name(index: usize) -> String {
    format!("{index:05}.jsonl")
}

/// Score the samples of the input shards `mine` (indices into `shards`), `batch_size` pairs
/// per scorer call (a batch never spans two shards, so a pair's score does not depend on how
/// shards are split over ranks), writing `out_dir/{index:05}.jsonl` per shard. Unreadable
/// samples are skipped here as the pipeline skips them.
pub fn score_shards(
    shards: &[PathBuf],
    mine: &[usize],
    scorer: &dyn PairScorer,
    batch_size: usize,
    out_dir: &Path,
) -> Result<ScoreTable, CurateError> {
    check_unique_names(shards)?;
    std::fs::create_dir_all(out_dir).map_err(|e| CurateError::io(out_dir, e))?;
    let mut table = ScoreTable::default();
    for &index in mine {
        let shard = &shards[index];
        let name = shard_name(shard);
        let out_path = out_dir.join(score_file_name(index));
        let mut out = BufWriter::new(File::create(&out_path).map_err(|e| CurateError::io(&out_path, e))?);
        let mut batch: Vec<RawSample> = Vec::with_capacity(batch_size);
        let mut failure = None;
        let mut flush = |batch: &mut Vec<RawSample>, table: &mut ScoreTable| -> Result<(), CurateError> {
            if batch.is_empty() {
                return Ok(());
            }
            let scores = scorer.score(batch).map_err(|e| CurateError::Scores {
                path: shard.clone(),
                reason: e.to_string(),
            })?;
            if scores.len() != batch.len() {
                return Err(CurateError::Scores {
                    path: shard.clone(),
                    reason: format!("the scorer gave {} scores for {} pairs", scores.len(), batch.len()),
                });
            }
            for (sample, score) in batch.iter().zip(scores) {
                // A NaN (e.g. a zero embedding) cannot be ranked: treat it as unscorable.
                let score = score.filter(|s| s.is_finite());
                let line = ScoreLine {
                    shard: name.clone(),
                    key: sample.key.clone(),
                    score,
                };
                serde_json::to_writer(&mut out, &line).map_err(|e| CurateError::Scores {
                    path: out_path.clone(),
                    reason: e.to_string(),
                })?;
                out.write_all(b"\n").map_err(|e| CurateError::io(&out_path, e))?;
                table.insert(&name, &sample.key, score);
            }
            batch.clear();
            Ok(())
        };
        dataloader::tar_reader::for_each_sample(shard, |item| {
            if let Ok(sample) = item {
                batch.push(sample);
                if batch.len() >= batch_size {
                    if let Err(e) = flush(&mut batch, &mut table) {
                        failure = Some(e);
                        return ControlFlow::Break(());
                    }
                }
            }
            ControlFlow::Continue(())
        });
        if let Some(e) = failure {
            return Err(e);
        }
        flush(&mut batch, &mut table)?;
        out.flush().map_err(|e| CurateError::io(&out_path, e))?;
        tracing::info!(shard = %shard.display(), "scored");
    }
    Ok(table)
}

/// Scores are filed by shard file name, so two input shards may not share one.
pub fn check_unique_names(shards: &[PathBuf]) -> Result<(), CurateError> {
    let mut seen: HashMap<String, &Path> = HashMap::new();
    for shard in shards {
        if let Some(first) = seen.insert(shard_name(shard), shard) {
            return Err(CurateError::Scores {
                path: shard.clone(),
                reason: format!(
                    "has the same file name as {}; DFN scores are filed by shard file name, so give input shards distinct names",
                    first.display()
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Scores a pair by the length of its caption; no caption → None.
    struct CaptionLength;
    impl PairScorer for CaptionLength {
        fn score(&self, batch: &[RawSample]) -> Result<Vec<Option<f32>>, ScoreError> {
            assert!(batch.len() <= 3, "batches respect batch_size");
            Ok(batch
                .iter()
                .map(|s| s.members.get("txt").map(|t| t.len() as f32 / 10.0))
                .collect())
        }
    }

    fn write_shard(path: &Path, samples: &[(&str, Option<&str>)]) {
        let mut members: Vec<(String, &[u8])> = Vec::new();
        for (key, caption) in samples {
            let mut sample: BTreeMap<&str, &[u8]> = BTreeMap::new();
            sample.insert("jpg", b"fake");
            if let Some(c) = caption {
                sample.insert("txt", c.as_bytes());
            }
            members.extend(sample.into_iter().map(|(ext, data)| (format!("{key}.{ext}"), data)));
        }
        crate::test_shards::write_tar(path, members);
    }

    #[test]
    fn scoring_writes_files_that_load_back_identically() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.tar");
        let b = dir.path().join("b.tar");
        write_shard(
            &a,
            &[("k1", Some("x")), ("k2", Some("xyz")), ("k3", None), ("k4", Some("ab"))],
        );
        write_shard(&b, &[("k1", Some("12345"))]);
        let shards = vec![a, b];
        let out = dir.path().join("scores");
        let table = score_shards(&shards, &[0, 1], &CaptionLength, 3, &out).unwrap();
        assert_eq!(table.len(), 5);
        assert_eq!(table.get("a.tar", "k2"), Some(Some(0.3)));
        assert_eq!(table.get("a.tar", "k3"), Some(None));
        assert_eq!(table.get("b.tar", "k1"), Some(Some(0.5)));
        assert_eq!(table.get("b.tar", "k9"), None);
        assert!(out.join("00000.jsonl").is_file() && out.join("00001.jsonl").is_file());
        assert_eq!(ScoreTable::load(&out).unwrap(), table);
        let mut only_a = ScoreTable::load(&out.join("00000.jsonl")).unwrap();
        assert!(!only_a.has_shard("b.tar"));
        let mut finite = only_a.scores_of(["a.tar"]);
        finite.sort_by(f32::total_cmp);
        assert_eq!(finite, [0.1, 0.2, 0.3]);
        only_a.insert("b.tar", "k1", Some(0.5));
        assert_eq!(only_a, table);
    }

    #[test]
    fn bad_score_files_and_clashing_names_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.jsonl");
        std::fs::write(&file, "{\"shard\":\"a.tar\",\"key\":\"k\",\"score\":0.5}\nnot json\n").unwrap();
        let err = ScoreTable::load(&file).unwrap_err().to_string();
        assert!(err.contains("s.jsonl") && err.contains("line 2"), "{err}");
        std::fs::write(
            &file,
            "{\"shard\":\"a.tar\",\"key\":\"k\",\"score\":0.5}\n{\"shard\":\"a.tar\",\"key\":\"k\",\"score\":0.25}\n",
        )
        .unwrap();
        let err = ScoreTable::load(&file).unwrap_err().to_string();
        assert!(err.contains("a.tar/k"), "{err}");
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(ScoreTable::load(&empty).unwrap_err().to_string().contains("no .jsonl"));

        let shards = [PathBuf::from("x/00000.tar"), PathBuf::from("y/00000.tar")];
        let err = check_unique_names(&shards).unwrap_err().to_string();
        assert!(err.contains("y/00000.tar") && err.contains("x/00000.tar"), "{err}");
    }

    struct Failing;
    impl PairScorer for Failing {
        fn score(&self, _batch: &[RawSample]) -> Result<Vec<Option<f32>>, ScoreError> {
            Err(ScoreError("out of memory".into()))
        }
    }

    #[test]
    fn a_failing_scorer_stops_with_the_shard_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.tar");
        write_shard(&a, &[("k1", Some("x"))]);
        let err = score_shards(&[a], &[0], &Failing, 8, &dir.path().join("s"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.tar") && err.contains("out of memory"), "{err}");
    }
}
