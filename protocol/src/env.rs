//! The environment variables the launcher sets for its workers, and the workers read.
//!
//! The torchrun-compatible names (`RANK`, `WORLD_SIZE`, …) are set by `ferroclip launch`
//! for the solo and nccl backends (under mpirun, Open MPI's own `OMPI_COMM_WORLD_*` take
//! their place). The `FERROCLIP_*` names are ferroclip's own: every variable whose name
//! starts with [`PREFIX`] is also forwarded to ranks on other hosts under mpirun (`-x`).

/// The worker's global rank, `0..WORLD_SIZE` (torchrun's name).
pub const RANK: &str = "RANK";
/// Workers in the whole run, all nodes together (torchrun's name).
pub const WORLD_SIZE: &str = "WORLD_SIZE";
/// The worker's rank on its node, `0..LOCAL_WORLD_SIZE` (torchrun's name).
pub const LOCAL_RANK: &str = "LOCAL_RANK";
/// Workers on this node (torchrun's name).
pub const LOCAL_WORLD_SIZE: &str = "LOCAL_WORLD_SIZE";
/// Host of global rank 0, where the workers' NCCL rendezvous listens (torchrun's name).
pub const MASTER_ADDR: &str = "MASTER_ADDR";
/// Port of the workers' NCCL rendezvous at `MASTER_ADDR` (torchrun's name).
pub const MASTER_PORT: &str = "MASTER_PORT";

/// The prefix of ferroclip's own variables; the launcher forwards every variable with it.
pub const PREFIX: &str = "FERROCLIP_";
/// The folder in which each worker rewrites its heartbeat file `rank<R>` (set by the
/// launcher for every worker; read by the trainer's heartbeat).
pub const HEARTBEAT_DIR: &str = "FERROCLIP_HEARTBEAT_DIR";
/// `HOST:PORT` of the multi-node launcher's rendezvous server, whose relay hands the NCCL
/// unique id from rank 0 to the others (set under `launch --nnodes`).
pub const RENDEZVOUS: &str = "FERROCLIP_RENDEZVOUS";
/// The run token the rendezvous master drew for this run; a worker's relay request must
/// carry it (set under `launch --nnodes`).
pub const RUN_TOKEN: &str = "FERROCLIP_RUN_TOKEN";
/// The job's shared secret, hex: every rendezvous peer proves it knows it
/// ([`crate::auth`]). Set by `ferroclip launch` for its workers (drawn per job on one node;
/// given by the user for `--nnodes`); takes precedence over [`JOB_SECRET_FILE`].
pub const JOB_SECRET: &str = "FERROCLIP_JOB_SECRET";
/// A file holding the job's secret (hex, readable by its owner only), as `ferroclip secret`
/// writes it and `ferroclip submit` makes one per job.
pub const JOB_SECRET_FILE: &str = "FERROCLIP_JOB_SECRET_FILE";
/// Seconds the workers' rendezvous waits for every rank (default 300; set by the launcher
/// from `--rendezvous-timeout-s`).
pub const RENDEZVOUS_TIMEOUT_S: &str = "FERROCLIP_RENDEZVOUS_TIMEOUT_S";
/// This node's rank among the nodes (set under `launch --nnodes`; informational).
pub const NODE_RANK: &str = "FERROCLIP_NODE_RANK";
/// The number of nodes (set under `launch --nnodes`; informational).
pub const NNODES: &str = "FERROCLIP_NNODES";
/// Fault injection for tests, `<step>:<marker file>`: the trainer aborts half-way through
/// the checkpoint of that step (once: the marker file records that it did). Read only by
/// builds with the trainer's `fault-injection` feature (`cargo test`), never by a release.
pub const FAULT_ABORT_IN_SAVE: &str = "FERROCLIP_FAULT_ABORT_IN_SAVE";
