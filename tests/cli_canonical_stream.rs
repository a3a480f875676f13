//! One data stream for any number of workers (issue 17), through the real CLI and real MPI
//! processes: with the canonical stream (the default), `launch --nproc 2` with batch B,
//! `launch --nproc 4` with B/2 and one `train` process with 2B read the same global batches
//! (the same keys in the same order, random crops and shuffle buffer included) and train to
//! the same losses and weights; per-rank streams (`data.stream = "per_rank"`), the negative
//! control, do not. A 4-worker run SIGKILLed and resumed on 2 workers ends where an
//! uninterrupted 4-worker run does, batch for batch.
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{
    assert_ok, f32_tensors, last_logged_step, max_abs_diff, output_text, require_mpirun, resumed_step, send_signal,
    tagged_pids, wait_for_step, write_shape_shards, KillTagged,
};

const STEPS: usize = 20;
const GLOBAL: usize = 8;
const TOLERANCE: f64 = 1e-5;

/// 8 shards of 12 shapes of several sizes, 4 partitions (2 shards each, 24 samples an
/// epoch: 20 steps of 2 samples per partition cross an epoch), a shuffle buffer, random
/// crops, 2 loader threads.
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_shape_shards(&dir.path().join("shards"), 96, 12);
    std::fs::write(
        dir.path().join("t.toml"),
        format!(
            "name = \"t\"\nmodel = \"nano\"\nseed = 9\nthreads = 1\n\
             [data]\ntrain = \"shards\"\nglobal_batch = {GLOBAL}\nworkers = 2\nshuffle_buffer = 6\npartitions = 4\n\
             dump_keys = true\n\
             [optim]\nlr = 2e-3\n[schedule]\nsteps = {STEPS}\nwarmup_steps = 2\n[log]\nevery = 1\n\
             [checkpoint]\nevery = 5\nkeep_last = 2\n"
        ),
    )
    .unwrap();
    dir
}

fn ferroclip(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroclip"));
    cmd.current_dir(dir).env("RUST_LOG", "info").env("OMP_NUM_THREADS", "1");
    cmd
}

/// `ferroclip train` (nproc 0) or `ferroclip launch --nproc N --backend mpi` of run `name`.
fn run_args(nproc: usize, name: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = match nproc {
        0 => vec!["train".into()],
        n => ["launch", "--nproc", &n.to_string(), "--backend", "mpi", "--log-dir"]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("runs/{name}/logs"), "--".into()])
            .collect(),
    };
    args.extend(["--config".into(), "t.toml".into(), format!("--set=name={name}")]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run(dir: &Path, nproc: usize, name: &str, extra: &[&str]) -> Output {
    let out = ferroclip(dir).args(run_args(nproc, name, extra)).output().unwrap();
    assert_ok(&out);
    out
}

/// The loss of every step of run `name`.
fn losses(dir: &Path, name: &str) -> Vec<f64> {
    std::fs::read_to_string(dir.join("runs").join(name).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

fn weights(dir: &Path, name: &str) -> BTreeMap<String, Vec<f32>> {
    f32_tensors(&dir.join("runs").join(name).join("model.safetensors"))
}

/// The keys of every global batch of run `name`, from its `data.dump_keys` files: the ranks'
/// keys joined in rank order. Where processes of several attempts logged a batch (a kill
/// and a resume), the latest attempt's records count.
fn global_batch_keys(dir: &Path, name: &str) -> Vec<Vec<String>> {
    // batch -> (attempt's first batch, world size) -> rank -> keys
    let mut by_batch: BTreeMap<u64, BTreeMap<(u64, u64), BTreeMap<u64, Vec<String>>>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir.join("runs").join(name).join("batch_keys")).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let from: u64 = file
            .rsplit_once("-from")
            .unwrap()
            .1
            .trim_end_matches(".jsonl")
            .parse()
            .unwrap();
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            let keys = record["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_string());
            by_batch
                .entry(record["batch"].as_u64().unwrap())
                .or_default()
                .entry((from, record["world_size"].as_u64().unwrap()))
                .or_default()
                .insert(record["rank"].as_u64().unwrap(), keys.collect());
        }
    }
    by_batch
        .into_values()
        .map(|attempts| {
            let ((_, world), ranks) = attempts.into_iter().next_back().unwrap();
            assert_eq!(ranks.len() as u64, world, "a batch without every rank's keys");
            ranks.into_values().flatten().collect()
        })
        .collect()
}

/// The weights whose true gradient is not zero: every value except the key third of each
/// attention `in_proj_bias`. Adding a constant to every key's bias adds the same number to
/// every attention logit of a query, which softmax ignores, so that bias's gradient is
/// rounding noise (~1e-10) whose sign differs with the order of a sum, and AdamW, which
/// divides by the gradient's own scale, turns it into steps of about the learning rate
/// either way: those values differ between two correct runs at any tolerance.
fn without_key_biases(weights: &BTreeMap<String, Vec<f32>>) -> BTreeMap<String, Vec<f32>> {
    weights
        .iter()
        .map(|(name, values)| {
            let kept = match name.ends_with("attn.in_proj_bias") {
                true => {
                    let third = values.len() / 3;
                    values[..third].iter().chain(&values[2 * third..]).copied().collect()
                }
                false => values.clone(),
            };
            (name.clone(), kept)
        })
        .collect()
}

/// Losses step by step and final weights (but the key biases, see [`without_key_biases`])
/// within [`TOLERANCE`].
fn assert_same_training(dir: &Path, want: &str, got: &str) {
    let (a, b) = (losses(dir, want), losses(dir, got));
    assert_eq!(
        (a.len(), b.len()),
        (STEPS, STEPS),
        "{want}, {got}: one logged loss per step"
    );
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= TOLERANCE,
            "step {}: loss {x} ({want}) vs {y} ({got})",
            step + 1
        );
    }
    let (wa, wb) = (weights(dir, want), weights(dir, got));
    let all = max_abs_diff(&wa, &wb);
    let diff = max_abs_diff(&without_key_biases(&wa), &without_key_biases(&wb));
    println!("{got} vs {want}: max |weights| difference {diff:.3e} ({all:.3e} with the key biases)");
    assert!(diff <= TOLERANCE, "{got} vs {want}: weights differ by {diff}");
}

#[test]
fn two_and_four_workers_train_exactly_as_one_with_the_whole_batch() {
    require_mpirun();
    let dir = setup();
    let dir = dir.path();
    run(dir, 0, "one", &[]);
    run(dir, 2, "two", &[]);
    run(dir, 4, "four", &[]);
    let one = global_batch_keys(dir, "one");
    assert_eq!(one.len(), STEPS);
    assert!(one.iter().all(|keys| keys.len() == GLOBAL));
    for name in ["two", "four"] {
        assert_eq!(global_batch_keys(dir, name), one, "{name}: keys of the global batches");
        assert_same_training(dir, "one", name);
    }
    // The runs trained: the loss moved.
    let curve = losses(dir, "one");
    assert!((curve[0] - curve[STEPS - 1]).abs() > 1e-3, "{curve:?}");

    // Negative control: per-rank streams (each worker its share of the shards, its own
    // shuffle and crops) give 2 workers other batches, so other losses and weights.
    run(
        dir,
        2,
        "per-rank",
        &["--set=data.stream=\"per_rank\"", "--set=data.partitions=0"],
    );
    let keys = global_batch_keys(dir, "per-rank");
    assert_ne!(keys, one, "per-rank streams read the same batches");
    let (a, b) = (losses(dir, "one"), losses(dir, "per-rank"));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let diff = max_abs_diff(&weights(dir, "one"), &weights(dir, "per-rank"));
    println!("per-rank control: worst loss difference {worst:.3e}, weights {diff:.3e}");
    assert!(
        worst > 1e-3 && diff > 1e-3,
        "per-rank streams should differ: losses {worst}, weights {diff}"
    );
}

/// A 4-worker run SIGKILLed after step 12 and resumed on 2 workers ends as an uninterrupted
/// 4-worker run, batch for batch; `settings` are extra `--set`s for every run.
fn killed_on_four_resumed_on_two(settings: &[&str]) {
    require_mpirun();
    let dir = setup();
    let dir = dir.path();
    run(dir, 4, "ref", settings);

    let tag_value = format!("elastic-{}-{}", std::process::id(), settings.join(","));
    let tag = format!("FERROCLIP_TEST_TAG={tag_value}");
    let _cleanup = KillTagged(tag.clone());
    let child = ferroclip(dir)
        .args(run_args(4, "b", settings))
        .env("FERROCLIP_TEST_TAG", &tag_value)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = dir.join("runs/b/metrics.jsonl");
    wait_for_step(&metrics, 12, Duration::from_secs(300));
    let victims = tagged_pids(&tag, "OMPI_COMM_WORLD_RANK=1");
    assert!(!victims.is_empty(), "rank 1 not found");
    let killed_after = last_logged_step(&metrics);
    for pid in victims {
        send_signal(pid, 9);
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "the killed run should fail: {}",
        output_text(&out)
    );

    // Resumed on 2 workers: the same global batch of 8, now 4 per worker.
    let resume: Vec<&str> = settings.iter().copied().chain(["--resume", "latest"]).collect();
    let out = run(dir, 2, "b", &resume);
    let log = output_text(&out);
    let resumed_at = resumed_step(&log, "runs/b/checkpoints/step_");
    assert!(
        (1..=killed_after).contains(&resumed_at),
        "resumed from step {resumed_at}, killed after step {killed_after}"
    );
    assert!(
        std::fs::read_dir(dir.join("runs/b/batch_keys")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("-of2-")),
        "the resumed run ran on 2 workers"
    );
    assert_eq!(
        global_batch_keys(dir, "b"),
        global_batch_keys(dir, "ref"),
        "keys of the global batches"
    );
    // metrics.jsonl holds each step once (the resume truncates what followed its checkpoint).
    assert_same_training(dir, "ref", "b");

    // A worker count that does not divide the 4 partitions is refused, naming both numbers.
    let out = ferroclip(dir).args(run_args(3, "b", &resume)).output().unwrap();
    let log = output_text(&out);
    assert!(!out.status.success());
    assert!(log.contains("4 partitions") && log.contains("3 workers"), "{log}");
}

#[test]
fn a_four_worker_run_killed_and_resumed_on_two_workers_ends_as_the_uninterrupted_one() {
    killed_on_four_resumed_on_two(&[]);
}

#[test]
fn a_sharded_optimizer_is_regathered_when_a_run_resumes_on_fewer_workers() {
    // The 4 saved optimizer shards become 2 (ShardedAdamW::load_resharded).
    killed_on_four_resumed_on_two(&["--set=optim.shard=true"]);
}
