//! `ferroclip launch --backend mpi --mpi-transport ucx`: the ranks talk through UCX (Open MPI's
//! `pml ucx`, allowed on any device) instead of Open MPI's default choice. The workers' own MPI
//! reports (`pml_base_verbose`) show which transport each rank selected, and the run trains to
//! the weights of the default transport, byte for byte. Over a shaped TCP link UCX doubles the
//! all-reduce rate (scripts/bench/overlap, docs/benchmarks.md); here both run on one host.
mod common;

use std::path::Path;

use common::{f32_tensors, launch_mpi_with, max_abs_diff, require_mpirun, write_shape_shards};

fn config() -> &'static str {
    "name = \"x\"\nmodel = \"nano\"\nseed = 6\nthreads = 1\n\
     [data]\ntrain = \"shards\"\nbatch_size = 4\nworkers = 1\nshuffle_buffer = 8\n\
     [optim]\nlr = 2e-3\n[schedule]\nsteps = 3\nwarmup_steps = 1\n[log]\nevery = 1\n"
}

/// Every log of run `name`, concatenated.
fn logs(dir: &Path, name: &str) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir.join(format!("logs-{name}"))).expect("log dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            text += &std::fs::read_to_string(&path).unwrap_or_default();
        }
    }
    text
}

#[test]
fn the_ucx_transport_is_selected_and_trains_like_the_default_one() {
    require_mpirun();
    let dir = tempfile::tempdir().expect("tempdir");
    write_shape_shards(&dir.path().join("shards"), 48, 12);
    std::fs::write(dir.path().join("t.toml"), config()).expect("config");
    let verbose = ["--mpirun-arg=--mca", "--mpirun-arg=pml_base_verbose", "--mpirun-arg=10"];
    let mut ucx = vec!["--mpi-transport", "ucx"];
    ucx.extend(verbose);
    launch_mpi_with(dir.path(), "ucx", 2, &ucx, &[]);
    launch_mpi_with(dir.path(), "default", 2, &verbose, &[]);
    let (ucx_logs, default_logs) = (logs(dir.path(), "ucx"), logs(dir.path(), "default"));
    assert_eq!(
        ucx_logs.matches("select: component ucx selected").count(),
        2,
        "both ranks selected UCX:\n{ucx_logs}"
    );
    assert!(
        !default_logs.contains("component ucx selected"),
        "the default transport on one host is not UCX:\n{default_logs}"
    );
    let weights = |name: &str| f32_tensors(&dir.path().join("runs").join(name).join("model.safetensors"));
    assert_eq!(
        max_abs_diff(&weights("ucx"), &weights("default")),
        0.0,
        "the transport changed the weights"
    );
}
