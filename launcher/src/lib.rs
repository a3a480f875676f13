//! Processes and clusters: starting and supervising `ferroclip train` workers
//! (local, mpirun, SLURM), sbatch generation and config-grid sweeps.
//!
//! Nothing here links tch or the other crates' internals: the launcher starts
//! processes and reads the files they write (see docs/architecture.md §2).
//!
//! - [`LocalLaunch`] starts N copies of a program on this machine — directly with
//!   `RANK`/`WORLD_SIZE`/`LOCAL_RANK`/`LOCAL_WORLD_SIZE`/`MASTER_ADDR`/`MASTER_PORT`
//!   ([`Backend::Solo`], [`Backend::Nccl`]) or through `mpirun` ([`Backend::Mpi`]) —
//!   prints their output line by line as `[rank R] …`, writes `rank<R>.log` per
//!   rank, and when one fails stops the rest (SIGTERM, then SIGKILL) and returns a
//!   [`LaunchError`] naming the rank.
//! - [`SupervisedLaunch`] restarts such a group with `--resume latest` when a
//!   worker fails or stops writing heartbeats ([`HeartbeatPolicy`]), with
//!   back-off, up to [`RestartPolicy::max_restarts`] times.
//! - Several hosts over MPI: [`MpiHosts`] (`--hosts a:2,b:2`, a hostfile, an rsh
//!   agent, the network to use) makes the mpi backend's mpirun place ranks there.
//! - [`StaticLaunch`]: one node of a torchrun-style multi-node launch; node 0
//!   serves the tokio [`rendezvous`] that forms the world, relays the NCCL
//!   unique id and watches the nodes' heartbeats.
//! - [`RunDir`] is the run-directory layout that the trainer writes; [`report`] makes
//!   a run folder into one HTML page.
//! - [`slurm`] writes and submits sbatch scripts and reads a job's state.
//!
//! ```no_run
//! use launcher::{Backend, LocalLaunch};
//! let launch = LocalLaunch::new("sh", ["-c", "echo rank $RANK of $WORLD_SIZE"], 2, Backend::Nccl, "runs/launch-logs");
//! let report = launch.run()?; // prints "[rank 0] rank 0 of 2", "[rank 1] rank 1 of 2"
//! assert_eq!(report.nproc, 2);
//! # Ok::<(), launcher::LaunchError>(())
//! ```
#![deny(missing_docs)]

mod error;
mod heartbeat;
mod hosts;
mod local;
mod mpirun;
mod multinode;
mod output;
mod process;
pub mod rendezvous;
pub mod report;
mod run_dir;
mod shrink;
mod signals;
pub mod slurm;
mod supervise;
pub mod sweep;

pub use error::{signal_name, FailedAttempt, LaunchError};
pub use heartbeat::{heartbeat_file, HeartbeatPolicy, DEFAULT_STARTUP_TIMEOUT, HEARTBEAT_DIR_ENV};
pub use hosts::{read_hostfile, HostList, HostSlots, HostfileError, MpiHosts, MpiTransport};
pub use local::{Backend, LaunchReport, LocalLaunch, Placement, DEFAULT_GRACE};
pub use multinode::{interface_address, MultiNodeError, StaticLaunch, StaticReport};
pub use output::{Console, SharedWriter};
pub use run_dir::RunDir;
pub use signals::{install_signal_handlers, StopHandle};
pub use supervise::{RestartPolicy, SupervisedLaunch, SupervisedReport};
