//! Processes and clusters: starting and supervising `ferroclip train` workers
//! (local, mpirun, SLURM), sbatch generation and config-grid sweeps.
//!
//! Nothing here links tch or the other crates' internals: the launcher starts
//! processes and reads the files they write (see DESIGN.md §2). The multi-worker
//! launcher lands with the distributed-training issue; today this crate holds the
//! run-directory layout that the trainer writes and the launcher will read.
#![deny(missing_docs)]

mod run_dir;

pub use run_dir::RunDir;
