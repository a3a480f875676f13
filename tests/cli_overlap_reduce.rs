//! `optim.overlap_reduce` through the real CLI and real MPI processes (issue 16): the image
//! tower's gradients are all-reduced on a communication thread (MPI called from a thread
//! other than the one that initialised it) while the text tower backpropagates. On 2 and 3
//! workers the run ends with the weights and losses of the plain run, byte for byte; its
//! metrics report communication hidden behind the backward pass, which the plain run's never
//! do. The in-process tests are trainer/tests/overlap_reduce.rs.
mod common;

use std::path::Path;

use common::{f32_tensors, launch_mpi, max_abs_diff, require_mpirun, write_shape_shards};

fn config() -> &'static str {
    "name = \"x\"\nmodel = \"nano\"\nseed = 4\nthreads = 1\n\
     [data]\ntrain = \"shards\"\nbatch_size = 4\nworkers = 1\nshuffle_buffer = 8\n\
     [optim]\nlr = 2e-3\n[schedule]\nsteps = 5\nwarmup_steps = 1\n[log]\nevery = 1\n"
}

fn launch(dir: &Path, name: &str, workers: usize, overlap: bool) {
    launch_mpi(dir, name, workers, &[format!("optim.overlap_reduce={overlap}")]);
}

/// Every metrics record's `field`.
fn series(dir: &Path, name: &str, field: &str) -> Vec<f64> {
    std::fs::read_to_string(dir.join("runs").join(name).join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")[field]
                .as_f64()
                .expect(field)
        })
        .collect()
}

#[test]
fn the_overlapped_reduce_trains_like_the_plain_one_over_mpi() {
    require_mpirun();
    let dir = tempfile::tempdir().expect("tempdir");
    write_shape_shards(&dir.path().join("shards"), 72, 12); // 6 shards: 2 or 3 per rank
    std::fs::write(dir.path().join("t.toml"), config()).expect("config");
    for workers in [2usize, 3] {
        let (plain, overlapped) = (format!("plain{workers}"), format!("overlap{workers}"));
        launch(dir.path(), &plain, workers, false);
        launch(dir.path(), &overlapped, workers, true);
        let weights = |name: &str| f32_tensors(&dir.path().join("runs").join(name).join("model.safetensors"));
        let diff = max_abs_diff(&weights(&plain), &weights(&overlapped));
        println!("{workers} workers: max |overlapped − plain| weight difference {diff:e}");
        assert_eq!(diff, 0.0, "{workers} workers: the overlap changed the weights");
        assert_eq!(
            series(dir.path(), &plain, "loss"),
            series(dir.path(), &overlapped, "loss"),
            "{workers} workers: losses"
        );
        // The comparison has teeth: training moved the weights from their start.
        let start = series(dir.path(), &plain, "loss");
        assert!(
            start.first() != start.last(),
            "{workers} workers: the loss never moved: {start:?}"
        );
        // The overlap happened: communication ran during backward passes, in the overlapped
        // run only.
        let hidden = |name: &str| series(dir.path(), name, "comm_hidden_frac").iter().sum::<f64>();
        println!(
            "{workers} workers: comm_hidden_frac summed over steps: plain {}, overlapped {}",
            hidden(&plain),
            hidden(&overlapped)
        );
        assert_eq!(
            hidden(&plain),
            0.0,
            "{workers} workers: the plain run hid communication"
        );
        assert!(hidden(&overlapped) > 0.0, "{workers} workers: nothing overlapped");
    }
}

#[test]
fn overlap_reduce_with_a_sharded_optimizer_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("t.toml"), config()).expect("config");
    let out = common::ferroclip_in(
        dir.path(),
        &[
            "train",
            "--config",
            "t.toml",
            "--set",
            "optim.overlap_reduce=true",
            "--set",
            "optim.shard=true",
        ],
    );
    assert!(!out.status.success(), "the combination was accepted");
    let text = common::output_text(&out);
    assert!(
        text.contains("optim.overlap_reduce"),
        "the error names the field: {text}"
    );
}
