//! Runs stages over shards: observation passes, then one decide-and-write pass.
//!
//! Output layout mirrors the input: the kept samples of input shard i (in the order of the
//! input list) go to `DIR/{i:05}.tar`, members byte for byte under the same keys (the
//! extension as the reader lowercased it), in input order, so the output does not depend
//! on the thread count. A shard whose samples are all dropped is still written (an empty
//! tar) so that `{00000..N}` specs keep working. Then `sizes.json`, `report.json` and
//! `report.png`.
//!
//! Each stage with an observation sees every sample that the earlier stages keep (the
//! input is re-read once per such stage, and the earlier decisions are recomputed, which
//! is cheap and deterministic); the last pass decides and writes.
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use dataloader::writer::ShardFile;
use dataloader::{Compression, RawSample, SkipReason};
use serde::Serialize;

use crate::error::CurateError;
use crate::reduce::CountReducer;
use crate::stage::{Decision, NamedStage};

/// The report file names written next to the shards.
pub const REPORT_JSON: &str = "report.json";
/// See [`REPORT_JSON`].
pub const REPORT_PNG: &str = "report.png";

/// Input skip reasons the tar reader produces; anything else is counted as `other`.
const INPUT_SKIP_REASONS: [SkipReason; 6] = [
    SkipReason::TruncatedMember,
    SkipReason::DuplicateMember,
    SkipReason::ShardReadError,
    SkipReason::UnreadableShard,
    SkipReason::OversizedMember,
    SkipReason::OversizedShard,
];

/// What happened in one run (written as report.json).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CurateReport {
    /// Input shards (all ranks).
    pub input_shards: usize,
    /// Samples read (all ranks).
    pub input_samples: u64,
    /// Unreadable samples and shards, by reason.
    pub input_skipped: BTreeMap<String, u64>,
    /// The output folder.
    pub output_dir: PathBuf,
    /// Output shard files (all ranks).
    pub output_shards: Vec<PathBuf>,
    /// Samples written.
    pub output_samples: u64,
    /// Worker threads per process.
    pub threads: usize,
    /// Processes.
    pub ranks: usize,
    /// Wall time of this process.
    pub seconds: f64,
    /// One entry per stage, in order.
    pub stages: Vec<StageReport>,
}

/// One stage's part of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageReport {
    /// Stage name.
    pub name: String,
    /// Stage kind.
    pub kind: String,
    /// Samples that reached the stage.
    pub samples_in: u64,
    /// Passed on unchanged.
    pub kept: u64,
    /// Passed on rewritten.
    pub rewritten: u64,
    /// Dropped, by reason (every reason listed, zeros included).
    pub dropped: BTreeMap<String, u64>,
    /// `kept + rewritten`.
    pub samples_out: u64,
    /// Wall time of the stage's observation pass (this process; 0 without one).
    pub observe_seconds: f64,
    /// Thread time spent in the stage's decisions, summed over threads and processes.
    pub decide_cpu_seconds: f64,
    /// Stage-specific figures.
    pub stats: serde_json::Value,
}

/// Run `stages` over `shards`, writing into `output` (created; it must hold no shards yet).
///
/// `threads` = 0 uses all available cores. With several ranks, rank r handles the input
/// shards i with i mod world_size = r, and rank 0 writes sizes.json and the reports.
pub fn run_pipeline(
    mut stages: Vec<NamedStage>,
    shards: &[PathBuf],
    output: &Path,
    threads: usize,
    reducer: &dyn CountReducer,
) -> Result<CurateReport, CurateError> {
    let started = Instant::now();
    if shards.is_empty() {
        return Err(CurateError::Output {
            path: output.to_path_buf(),
            reason: "no input shards".into(),
        });
    }
    prepare_output(output)?;
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    let (rank, world) = (reducer.rank(), reducer.world_size());
    let mine: Vec<usize> = (0..shards.len()).filter(|i| i % world == rank).collect();

    // Observation passes.
    let mut observe_seconds = vec![0.0; stages.len()];
    for s in 0..stages.len() {
        let len = stages[s].stage.observation_len();
        if len == 0 {
            continue;
        }
        let pass_started = Instant::now();
        let prefix = &stages[..s];
        let observer = &stages[s].stage;
        let states = for_each_shard_parallel(
            &mine,
            threads,
            || (vec![0u64; len], new_tallies(prefix)),
            |(counts, tallies), shard| {
                read_shard(&shards[shard], |sample| {
                    if let Some(sample) = apply_stages(prefix, sample, tallies, |_, _, _| {}) {
                        observer.observe(&sample, counts);
                    }
                });
                Ok(())
            },
        )?;
        let mut counts = sum_vectors(states.into_iter().map(|(c, _)| c), len);
        reducer.all_reduce_sum(&mut counts)?;
        stages[s].stage.exchange_observation(reducer)?;
        stages[s].stage.set_observation(counts);
        observe_seconds[s] = pass_started.elapsed().as_secs_f64();
        tracing::info!(stage = %stages[s].name, seconds = observe_seconds[s], "observation pass done");
    }

    // Decide-and-write pass.
    let layout = CounterLayout::new(&stages, shards.len());
    let stages_ref = &stages;
    let layout_ref = &layout;
    let states = for_each_shard_parallel(
        &mine,
        threads,
        || (vec![0u64; layout.len], new_tallies(stages_ref)),
        |(counters, tallies), shard| {
            let out_path = output.join(shard_file_name(shard));
            let mut writer = ShardFile::create(&out_path, Compression::None).map_err(CurateError::OutputShard)?;
            let mut written = 0u64;
            let mut write_error = None;
            for_each_raw(&shards[shard], |item| match item {
                Ok(sample) => {
                    counters[layout_ref.input_samples] += 1;
                    let kept = apply_stages(stages_ref, sample, tallies, |s, outcome, nanos| {
                        counters[layout_ref.stage_base(s) + outcome] += 1;
                        counters[layout_ref.decide_nanos(s)] += nanos;
                    });
                    if let Some(sample) = kept {
                        if let Err(e) = writer.append_raw(&sample) {
                            write_error = Some(CurateError::OutputShard(e));
                            return ControlFlow::Break(());
                        }
                        written += 1;
                    }
                    ControlFlow::Continue(())
                }
                Err(reason) => {
                    let slot = INPUT_SKIP_REASONS.iter().position(|r| *r == reason);
                    counters[layout_ref.input_skip(slot)] += 1;
                    ControlFlow::Continue(())
                }
            });
            if let Some(e) = write_error {
                return Err(e);
            }
            writer.finish().map_err(CurateError::OutputShard)?;
            counters[layout_ref.shard_samples(shard)] = written;
            Ok(())
        },
    )?;
    let mut tallies: Vec<Vec<u64>> = new_tallies(&stages);
    let mut counters = vec![0u64; layout.len];
    for (c, t) in states {
        add_into(&mut counters, &c);
        for (total, part) in tallies.iter_mut().zip(&t) {
            add_into(total, part);
        }
    }
    reducer.all_reduce_sum(&mut counters)?;
    for tally in &mut tallies {
        reducer.all_reduce_sum(tally)?;
    }

    let report = build_report(
        &stages,
        &layout,
        &counters,
        &tallies,
        shards.len(),
        output,
        threads,
        world,
        &observe_seconds,
        started,
    );
    for stage in &report.stages {
        let dropped: Vec<String> = stage
            .dropped
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        tracing::info!(stage = %stage.name, samples_in = stage.samples_in, kept = stage.kept, rewritten = stage.rewritten, dropped = %dropped.join(" "), "stage done");
    }
    if rank == 0 {
        let sizes: BTreeMap<String, u64> = (0..shards.len())
            .map(|i| (shard_file_name(i), counters[layout.shard_samples(i)]))
            .collect();
        write_json(&output.join(dataloader::sizes::SIZES_FILE), &sizes)?;
        write_json(&output.join(REPORT_JSON), &report)?;
        let funnel = std::iter::once(("input".to_string(), report.input_samples))
            .chain(report.stages.iter().map(|s| (s.name.clone(), s.samples_out)))
            .collect::<Vec<_>>();
        let panels: Vec<_> = stages
            .iter()
            .zip(&tallies)
            .filter_map(|(s, t)| s.stage.plot(t))
            .collect();
        let plot_started = Instant::now();
        crate::plot::write_report_png(&output.join(REPORT_PNG), &funnel, &panels)?;
        tracing::info!(seconds = plot_started.elapsed().as_secs_f64(), "{REPORT_PNG} written");
    }
    Ok(report)
}

/// `00000.tar` for shard 0.
fn shard_file_name(index: usize) -> String {
    format!("{index:05}.tar")
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    stages: &[NamedStage],
    layout: &CounterLayout,
    counters: &[u64],
    tallies: &[Vec<u64>],
    input_shards: usize,
    output: &Path,
    threads: usize,
    ranks: usize,
    observe_seconds: &[f64],
    started: Instant,
) -> CurateReport {
    let mut input_skipped = BTreeMap::new();
    for (slot, reason) in INPUT_SKIP_REASONS.iter().enumerate() {
        input_skipped.insert(reason.as_str().to_string(), counters[layout.input_skip(Some(slot))]);
    }
    input_skipped.insert("other".into(), counters[layout.input_skip(None)]);
    let stage_reports = stages
        .iter()
        .enumerate()
        .map(|(s, named)| {
            let base = layout.stage_base(s);
            let kept = counters[base + OUTCOME_KEPT];
            let rewritten = counters[base + OUTCOME_REWRITTEN];
            let dropped: BTreeMap<String, u64> = named
                .stage
                .drop_reasons()
                .iter()
                .enumerate()
                .map(|(i, r)| (r.to_string(), counters[base + OUTCOME_FIRST_DROP + i]))
                .chain(std::iter::once((
                    "unlisted_reason".to_string(),
                    counters[base + OUTCOME_UNLISTED_DROP],
                )))
                .filter(|(r, n)| r != "unlisted_reason" || *n > 0)
                .collect();
            StageReport {
                name: named.name.clone(),
                kind: named.stage.kind().to_string(),
                samples_in: kept + rewritten + dropped.values().sum::<u64>(),
                kept,
                rewritten,
                dropped,
                samples_out: kept + rewritten,
                observe_seconds: observe_seconds[s],
                decide_cpu_seconds: counters[layout.decide_nanos(s)] as f64 * 1e-9,
                stats: named.stage.stats(&tallies[s]),
            }
        })
        .collect();
    CurateReport {
        input_shards,
        input_samples: counters[layout.input_samples],
        input_skipped,
        output_dir: output.to_path_buf(),
        output_shards: (0..input_shards).map(|i| output.join(shard_file_name(i))).collect(),
        output_samples: (0..input_shards).map(|i| counters[layout.shard_samples(i)]).sum(),
        threads,
        ranks,
        seconds: started.elapsed().as_secs_f64(),
        stages: stage_reports,
    }
}

// Per-stage outcome slots: kept, rewritten, a drop whose reason the stage did not list, then
// one per listed drop reason.
const OUTCOME_KEPT: usize = 0;
const OUTCOME_REWRITTEN: usize = 1;
const OUTCOME_UNLISTED_DROP: usize = 2;
const OUTCOME_FIRST_DROP: usize = 3;

/// Where each count lives in the one flat vector that is reduced across ranks.
struct CounterLayout {
    stage_bases: Vec<usize>,
    decide_nanos_base: usize,
    input_samples: usize,
    input_skips_base: usize,
    shard_samples_base: usize,
    len: usize,
}

impl CounterLayout {
    fn new(stages: &[NamedStage], shards: usize) -> Self {
        let mut next = 0;
        let stage_bases = stages
            .iter()
            .map(|s| {
                let base = next;
                next += OUTCOME_FIRST_DROP + s.stage.drop_reasons().len();
                base
            })
            .collect();
        let decide_nanos_base = next;
        next += stages.len();
        let input_samples = next;
        next += 1;
        let input_skips_base = next;
        next += INPUT_SKIP_REASONS.len() + 1;
        let shard_samples_base = next;
        next += shards;
        Self {
            stage_bases,
            decide_nanos_base,
            input_samples,
            input_skips_base,
            shard_samples_base,
            len: next,
        }
    }
    fn stage_base(&self, stage: usize) -> usize {
        self.stage_bases[stage]
    }
    fn decide_nanos(&self, stage: usize) -> usize {
        self.decide_nanos_base + stage
    }
    /// `None` = the `other` slot.
    fn input_skip(&self, slot: Option<usize>) -> usize {
        self.input_skips_base + slot.unwrap_or(INPUT_SKIP_REASONS.len())
    }
    fn shard_samples(&self, shard: usize) -> usize {
        self.shard_samples_base + shard
    }
}

fn new_tallies(stages: &[NamedStage]) -> Vec<Vec<u64>> {
    stages.iter().map(|s| vec![0; s.stage.tally_len()]).collect()
}

/// Pass `sample` through `stages`; `record(stage, outcome slot, nanoseconds)` per stage
/// reached. Returns the sample as it leaves the last stage, or `None` when dropped.
fn apply_stages(
    stages: &[NamedStage],
    mut sample: RawSample,
    tallies: &mut [Vec<u64>],
    mut record: impl FnMut(usize, usize, u64),
) -> Option<RawSample> {
    for (s, named) in stages.iter().enumerate() {
        let started = Instant::now();
        let decision = named.stage.decide(&sample, &mut tallies[s]);
        let nanos = started.elapsed().as_nanos() as u64;
        let outcome = match decision {
            Decision::Keep => OUTCOME_KEPT,
            Decision::Rewrite(new) => {
                sample = new;
                OUTCOME_REWRITTEN
            }
            Decision::Drop(reason) => {
                let listed = named.stage.drop_reasons().iter().position(|r| *r == reason);
                record(
                    s,
                    listed.map_or(OUTCOME_UNLISTED_DROP, |i| OUTCOME_FIRST_DROP + i),
                    nanos,
                );
                return None;
            }
        };
        record(s, outcome, nanos);
    }
    Some(sample)
}

/// Samples of one shard, unreadable ones ignored (they are counted in the final pass).
fn read_shard(shard: &Path, mut visit: impl FnMut(RawSample)) {
    for_each_raw(shard, |item| {
        if let Ok(sample) = item {
            visit(sample);
        }
        ControlFlow::Continue(())
    });
}

fn for_each_raw(shard: &Path, mut visit: impl FnMut(Result<RawSample, SkipReason>) -> ControlFlow<()>) {
    dataloader::tar_reader::for_each_sample(shard, |item| visit(item.map_err(|skip| skip.reason)));
}

/// Run `work(state, shard)` for every shard on `threads` threads, each with its own state
/// from `init`; returns the states. The first error stops the others.
fn for_each_shard_parallel<S: Send>(
    shards: &[usize],
    threads: usize,
    init: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, usize) -> Result<(), CurateError> + Sync,
) -> Result<Vec<S>, CurateError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let workers = threads.clamp(1, shards.len().max(1));
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut state = init();
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&shard) = shards.get(i) else { break };
                        if let Err(e) = work(&mut state, shard) {
                            failed.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                    Ok(state)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    })
}

fn sum_vectors(parts: impl Iterator<Item = Vec<u64>>, len: usize) -> Vec<u64> {
    let mut total = vec![0; len];
    for part in parts {
        add_into(&mut total, &part);
    }
    total
}

fn add_into(total: &mut [u64], part: &[u64]) {
    for (t, p) in total.iter_mut().zip(part) {
        *t += p;
    }
}

fn prepare_output(output: &Path) -> Result<(), CurateError> {
    std::fs::create_dir_all(output).map_err(|e| CurateError::io(output, e))?;
    for entry in std::fs::read_dir(output).map_err(|e| CurateError::io(output, e))? {
        let path = entry.map_err(|e| CurateError::io(output, e))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.ends_with(".tar") || name == dataloader::sizes::SIZES_FILE || name == REPORT_JSON {
            return Err(CurateError::Output {
                path,
                reason: "the output folder already holds curated shards; choose an empty folder".into(),
            });
        }
    }
    Ok(())
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), CurateError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CurateError::Output {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    std::fs::write(path, text + "\n").map_err(|e| CurateError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metaclip::{MetaclipConfig, MetaclipStage, Metadata};
    use crate::reduce::SingleProcess;

    /// A tar with one sample per caption: `key.txt`, `key.jpg` (fake bytes) and `key.cls`.
    fn write_shard(path: &Path, first_key: usize, captions: &[&[u8]]) {
        let keys: Vec<String> = (0..captions.len()).map(|i| format!("{:09}", first_key + i)).collect();
        let jpgs: Vec<Vec<u8>> = keys
            .iter()
            .map(|key| format!("jpeg bytes of {key}").into_bytes())
            .collect();
        let members = keys.iter().zip(&jpgs).zip(captions).flat_map(|((key, jpg), caption)| {
            [("jpg", jpg.as_slice()), ("txt", caption), ("cls", b"3".as_slice())]
                .map(|(ext, data)| (format!("{key}.{ext}"), data))
        });
        crate::test_shards::write_tar(path, members);
    }

    fn stages(t: u64) -> Vec<NamedStage> {
        let cfg = MetaclipConfig {
            t,
            seed: 5,
            wordnet: false,
            numbers: false,
            ..MetaclipConfig::default()
        };
        let metadata = Metadata::from_entries(["cat", "dog", "red heart"].map(String::from));
        vec![NamedStage {
            name: "metaclip".into(),
            stage: Box::new(MetaclipStage::new(metadata, &cfg).unwrap()),
        }]
    }

    fn inputs(dir: &Path) -> Vec<PathBuf> {
        let captions: [&[u8]; 6] = [b"a cat", b"a dog", b"a red heart, a cat", b"nothing here", b"\xff", b""];
        let mut shards = Vec::new();
        for s in 0..5 {
            let path = dir.join(format!("in-{s}.tar"));
            let many: Vec<&[u8]> = (0..40).map(|i| captions[(i * 7 + s) % captions.len()]).collect();
            write_shard(&path, s * 1000, &many);
            shards.push(path);
        }
        std::fs::write(dir.join("broken.tar"), b"not a tar file at all, just some bytes....").unwrap();
        shards.push(dir.join("broken.tar"));
        shards
    }

    fn read_all(dir: &Path, files: &[&str]) -> Vec<Vec<u8>> {
        files.iter().map(|f| std::fs::read(dir.join(f)).unwrap()).collect()
    }

    #[test]
    fn output_is_independent_of_threads_and_counts_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let shards = inputs(dir.path());
        let one = run_pipeline(stages(10), &shards, &dir.path().join("out1"), 1, &SingleProcess).unwrap();
        let three = run_pipeline(stages(10), &shards, &dir.path().join("out3"), 3, &SingleProcess).unwrap();
        let files = [
            "00000.tar",
            "00001.tar",
            "00002.tar",
            "00003.tar",
            "00004.tar",
            "00005.tar",
            "sizes.json",
        ];
        assert_eq!(
            read_all(&dir.path().join("out1"), &files),
            read_all(&dir.path().join("out3"), &files)
        );
        assert_eq!(one.stages, {
            let mut s = three.stages.clone();
            for (a, b) in s.iter_mut().zip(&one.stages) {
                // Timings differ from run to run; everything else must not.
                a.decide_cpu_seconds = b.decide_cpu_seconds;
                a.observe_seconds = b.observe_seconds;
            }
            s
        });

        let stage = &one.stages[0];
        assert_eq!(one.input_samples, 200);
        assert_eq!(stage.samples_in, 200);
        assert_eq!(
            stage.samples_out + stage.dropped.values().sum::<u64>(),
            stage.samples_in
        );
        assert_eq!(one.output_samples, stage.samples_out);
        assert!(stage.dropped["invalid_caption"] > 0 && stage.dropped["empty_caption"] > 0);
        assert!(stage.dropped["no_match"] > 0 && stage.dropped["balanced_out"] > 0);
        // "cat" is matched by 2/6 of 200 texts; with t = 10 about 10 are kept through it.
        assert!(stage.stats["entries_over_t"].as_u64().unwrap() >= 2);
        let skipped: u64 = one.input_skipped.values().sum();
        assert!(skipped >= 1, "{:?}", one.input_skipped);

        // Kept samples come back with all their members, byte for byte.
        let sizes: BTreeMap<String, u64> =
            serde_json::from_slice(&std::fs::read(dir.path().join("out1/sizes.json")).unwrap()).unwrap();
        let mut total = 0;
        for (name, count) in &sizes {
            let mut samples = Vec::new();
            read_shard(&dir.path().join("out1").join(name), |s| samples.push(s));
            assert_eq!(samples.len() as u64, *count);
            for s in &samples {
                assert_eq!(s.members.keys().collect::<Vec<_>>(), ["cls", "jpg", "txt"]);
                assert_eq!(s.members["jpg"], format!("jpeg bytes of {}", s.key).into_bytes());
            }
            total += count;
        }
        assert_eq!(total, one.output_samples);
        assert!(dir.path().join("out1").join(REPORT_JSON).exists());
        assert!(dir.path().join("out1").join(REPORT_PNG).exists());
    }

    #[test]
    fn refuses_an_output_folder_with_shards() {
        let dir = tempfile::tempdir().unwrap();
        let shards = inputs(dir.path());
        let out = dir.path().join("out");
        run_pipeline(stages(10), &shards, &out, 2, &SingleProcess).unwrap();
        let err = run_pipeline(stages(10), &shards, &out, 2, &SingleProcess)
            .unwrap_err()
            .to_string();
        assert!(err.contains("already holds"), "{err}");
    }

    /// A stage that rewrites every sample's caption, to check rewrites reach the output.
    struct Shout;
    impl crate::stage::Stage for Shout {
        fn kind(&self) -> &'static str {
            "shout"
        }
        fn drop_reasons(&self) -> &'static [&'static str] {
            &[]
        }
        fn decide(&self, sample: &RawSample, _tally: &mut [u64]) -> Decision {
            let mut new = sample.clone();
            if let Some(txt) = new.members.get_mut("txt") {
                txt.make_ascii_uppercase();
            }
            Decision::Rewrite(new)
        }
    }

    #[test]
    fn rewrites_reach_later_stages_and_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join("in.tar");
        write_shard(&shard, 0, &[b"a cat", b"a CAT"]);
        // The upper-cased text matches "CAT" only after the rewrite: the matcher is case-sensitive.
        let cfg = MetaclipConfig {
            wordnet: false,
            numbers: false,
            ..MetaclipConfig::default()
        };
        let metaclip = MetaclipStage::new(Metadata::from_entries(["CAT".to_string()]), &cfg).unwrap();
        let stages = vec![
            NamedStage {
                name: "shout".into(),
                stage: Box::new(Shout),
            },
            NamedStage {
                name: "metaclip".into(),
                stage: Box::new(metaclip),
            },
        ];
        let report = run_pipeline(stages, &[shard], &dir.path().join("out"), 1, &SingleProcess).unwrap();
        assert_eq!(report.stages[0].rewritten, 2);
        assert_eq!(report.stages[1].kept, 2);
        let mut captions = Vec::new();
        read_shard(&dir.path().join("out/00000.tar"), |s| {
            captions.push(s.members["txt"].clone())
        });
        assert_eq!(captions, [b"A CAT".to_vec(), b"A CAT".to_vec()]);
    }
}
