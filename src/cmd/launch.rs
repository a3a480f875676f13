//! `ferroclip launch`: start N local `ferroclip train` workers, supervise them,
//! and restart the group from its latest checkpoint when one fails.
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use launcher::rendezvous::NodeSpec;
use launcher::{
    Backend, HeartbeatPolicy, HostList, LocalLaunch, MpiHosts, MpiTransport, RestartPolicy, StaticLaunch,
    SupervisedLaunch,
};

/// Start N local workers, multiplex their output by rank and stop them all if one fails.
///
/// Each rank's output also goes to `<log-dir>/rank<R>.log` (and mpirun's own
/// messages to `mpirun.log`). The launcher does not read the train config, so
/// pass `--log-dir runs/<name>/logs` to keep the logs beside the run.
///
/// With `--max-restarts K` a failed group (a worker exited non-zero, was killed
/// by a signal, or missed its heartbeat) is stopped and started again with
/// `--resume latest` appended, after a back-off that doubles per consecutive
/// failure (capped at 60 s; an attempt that ran 10 minutes resets it). Before a
/// restart, the failed attempt's logs are renamed to `rank<R>.attempt<N>.log`
/// (and `mpirun.attempt<N>.log`): `rank<R>.log` always holds the current
/// attempt. After K restarts the launcher gives up, listing every attempt.
/// Ctrl-C or SIGTERM to the launcher stops the workers and is never restarted.
///
/// Workers get `FERROCLIP_HEARTBEAT_DIR=<log-dir>/heartbeat` (emptied at every
/// start) and touch `rank<R>` in it after every step.
///
/// Several hosts, MPI: `--backend mpi --hosts a:2,b:2` (or `--hostfile FILE`)
/// runs mpirun with that hostfile; `--rsh-agent CMD` replaces ssh and
/// `--mpi-if-include NET` pins Open MPI to one network. FERROCLIP_* variables
/// are forwarded to every rank.
///
/// Several hosts, static (torchrun-style, for NCCL): run on every node
/// `--nnodes M --node-rank i --master ADDR:PORT --nproc N`. Node 0 serves the
/// rendezvous at ADDR:PORT; the nodes register, get global ranks, and start
/// their workers together; a node that dies or whose workers fail stops the
/// others, naming it; nodes missing after `--rendezvous-timeout-s` are named.
#[derive(clap::Args)]
pub struct Args {
    /// Number of worker processes (on this node). With --hosts/--hostfile, defaults to
    /// the total slot count.
    #[arg(long)]
    nproc: Option<usize>,
    /// solo (one worker), mpi (through mpirun) or nccl (RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT
    /// rendezvous). Default: solo for --nproc 1, mpi otherwise.
    #[arg(long)]
    backend: Option<Backend>,
    /// Folder for the per-rank logs. `rank<R>.log` holds the current attempt; before a
    /// restart the failed attempt's logs are renamed to `rank<R>.attempt<N>.log`.
    #[arg(long, default_value = "runs/launch-logs")]
    log_dir: PathBuf,
    /// Seconds the workers get between SIGTERM and SIGKILL when they are stopped.
    #[arg(long, default_value_t = launcher::DEFAULT_GRACE.as_secs_f64())]
    grace_s: f64,
    /// Restart the whole group up to this many times when a worker fails (0: never).
    #[arg(long, default_value_t = 0)]
    max_restarts: usize,
    /// mpi with --hosts/--hostfile: before a restart, drop the hosts that no longer answer
    /// (probed through the rsh agent) and restart on the largest divisor of --nproc that
    /// the others hold, but never fewer than this many workers. The run must be able to
    /// continue on fewer workers: the canonical data stream (the default) with
    /// `data.global_batch` set (its partition count is a multiple of --nproc).
    #[arg(long)]
    min_nproc: Option<usize>,
    /// Seconds to wait before the first restart; doubled per consecutive failure, at most 60.
    #[arg(long, default_value_t = 5.0)]
    restart_backoff_s: f64,
    /// A worker whose heartbeat file (`$FERROCLIP_HEARTBEAT_DIR/rank<R>`, in
    /// `<log-dir>/heartbeat`) is older than this many seconds is hung and the group is
    /// stopped (0: no heartbeat checks).
    #[arg(long, default_value_t = 0.0)]
    heartbeat_timeout_s: f64,
    /// Seconds a worker may take to write its first heartbeat (with --heartbeat-timeout-s).
    #[arg(long, default_value_t = launcher::DEFAULT_STARTUP_TIMEOUT.as_secs_f64())]
    startup_timeout_s: f64,
    /// mpi: hosts and ranks per host, `a:2,b:2` (written to `<log-dir>/hostfile`).
    #[arg(long, conflicts_with = "hostfile")]
    hosts: Option<HostList>,
    /// mpi: an Open MPI hostfile (`host slots=N` per line).
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// mpi: the command mpirun uses to reach other hosts instead of ssh (`--mca plm_rsh_agent`).
    #[arg(long)]
    rsh_agent: Option<String>,
    /// mpi: interface or CIDR network for MPI traffic (btl_tcp_if_include and oob_tcp_if_include).
    #[arg(long)]
    mpi_if_include: Option<String>,
    /// mpi: the transport between ranks: `default` (Open MPI's choice) or `ucx` (UCX on any
    /// device; over TCP about twice the tcp btl's all-reduce rate, docs/benchmarks.md). UCX picks
    /// its interfaces itself (`UCX_NET_DEVICES` pins them; UCX_* variables reach every rank).
    #[arg(long, default_value = "default")]
    mpi_transport: MpiTransport,
    /// mpi: one more argument for mpirun, as is (repeat the flag for several).
    #[arg(long, allow_hyphen_values = true)]
    mpirun_arg: Vec<OsString>,
    /// Static multi-node launch: the number of nodes (each runs this command).
    #[arg(long, requires_all = ["node_rank", "master"])]
    nnodes: Option<usize>,
    /// Static multi-node launch: this node's rank, 0..nnodes (node 0 serves the rendezvous).
    #[arg(long, requires = "nnodes")]
    node_rank: Option<usize>,
    /// Static multi-node launch: the rendezvous address, ADDR:PORT of node 0.
    #[arg(long, requires = "nnodes")]
    master: Option<String>,
    /// Static multi-node launch: use this interface's address (and give it to NCCL as NCCL_SOCKET_IFNAME).
    #[arg(long, conflicts_with = "bind_addr", requires = "nnodes")]
    bind_iface: Option<String>,
    /// Static multi-node launch: use this local address for the rendezvous.
    #[arg(long, requires = "nnodes")]
    bind_addr: Option<std::net::IpAddr>,
    /// Static multi-node launch: the job's secret, a file readable by its owner only, the same
    /// on every node (make one with `ferroclip secret FILE`); instead, FERROCLIP_JOB_SECRET or
    /// FERROCLIP_JOB_SECRET_FILE may hold it. Nodes and workers prove it to the rendezvous.
    #[arg(long, requires = "nnodes")]
    secret_file: Option<PathBuf>,
    /// Static multi-node launch: seconds to reach the master and for all nodes to arrive.
    #[arg(long, default_value_t = launcher::rendezvous::DEFAULT_RENDEZVOUS_TIMEOUT.as_secs_f64())]
    rendezvous_timeout_s: f64,
    /// Static multi-node launch: a node (or the master) silent this many seconds is lost.
    #[arg(long, default_value_t = launcher::rendezvous::DEFAULT_HEARTBEAT_TIMEOUT.as_secs_f64())]
    node_heartbeat_timeout_s: f64,
    /// Run this program with the arguments after `--` instead of `ferroclip train`
    /// (for testing the launcher without the trainer).
    #[arg(long, hide = true)]
    worker_cmd: Option<PathBuf>,
    /// Arguments for `ferroclip train`, after `--` (e.g. `-- --config configs/train/demo.toml`).
    #[arg(last = true)]
    train_args: Vec<OsString>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mpi_hosts = MpiHosts {
        hostfile: args.hostfile.clone(),
        hosts: args.hosts.clone().unwrap_or_default(),
        rsh_agent: args.rsh_agent.clone(),
        if_include: args.mpi_if_include.clone(),
        transport: args.mpi_transport,
        extra_args: args.mpirun_arg.clone(),
    };
    let host_slots = match (&args.hostfile, &args.hosts) {
        (Some(file), _) => Some(launcher::read_hostfile(file)?.slots()),
        (None, Some(hosts)) => Some(hosts.slots()),
        (None, None) => None,
    };
    let nproc = match (args.nproc, host_slots) {
        (Some(n), _) => n,
        (None, Some(slots)) => slots,
        (None, None) => anyhow::bail!("--nproc is required (or --hosts/--hostfile for mpi)"),
    };
    let multi_node = args.nnodes.is_some();
    let backend = args.backend.unwrap_or(if multi_node {
        Backend::Nccl
    } else if nproc == 1 && host_slots.is_none() {
        Backend::Solo
    } else {
        Backend::Mpi
    });
    if mpi_hosts.is_multi_host() && backend != Backend::Mpi {
        anyhow::bail!("--hosts/--hostfile place ranks through mpirun: use --backend mpi, not {backend}");
    }
    if multi_node && args.max_restarts > 0 {
        anyhow::bail!(
            "--max-restarts is not supported with --nnodes: a failed node stops the whole run; start the launchers again with `-- ... --resume latest`"
        );
    }
    let (program, worker_args) = match args.worker_cmd {
        Some(cmd) => (cmd, args.train_args),
        None => {
            let exe = std::env::current_exe().context("cannot find the ferroclip executable to start workers")?;
            (
                exe,
                std::iter::once(OsString::from("train"))
                    .chain(args.train_args)
                    .collect(),
            )
        }
    };
    let mut launch = LocalLaunch::new(program, worker_args, nproc, backend, args.log_dir);
    launch.mpi_hosts = mpi_hosts;
    launch.grace = seconds("--grace-s", args.grace_s)?;
    let heartbeat_timeout = seconds("--heartbeat-timeout-s", args.heartbeat_timeout_s)?;
    launch.heartbeat = HeartbeatPolicy {
        timeout: (!heartbeat_timeout.is_zero()).then_some(heartbeat_timeout),
        startup_timeout: seconds("--startup-timeout-s", args.startup_timeout_s)?,
    };
    if let (Some(nnodes), Some(node_rank), Some(master)) = (args.nnodes, args.node_rank, args.master) {
        let bind = match (&args.bind_iface, args.bind_addr) {
            (Some(iface), _) => Some(launcher::interface_address(iface)?),
            (None, addr) => addr,
        };
        let node = NodeSpec {
            bind,
            timeout: seconds("--rendezvous-timeout-s", args.rendezvous_timeout_s)?,
            heartbeat_timeout: seconds("--node-heartbeat-timeout-s", args.node_heartbeat_timeout_s)?,
            ..NodeSpec::new(
                master,
                node_rank,
                nnodes,
                nproc,
                job_secret(args.secret_file.as_deref())?,
            )
        };
        let report = StaticLaunch {
            launch,
            node,
            bind_iface: args.bind_iface,
        }
        .run()?;
        eprintln!(
            "[launch] node {}: all {} workers (ranks {}..{} of {}) exited 0 in {:.1}s, and so did every other node (logs in {})",
            report.world.node_rank,
            report.last.nproc,
            report.world.rank_start,
            report.world.rank_start + report.last.nproc,
            report.world.world_size,
            report.last.elapsed.as_secs_f64(),
            report.last.log_dir.display()
        );
        return Ok(());
    }
    if let Some(min) = args.min_nproc {
        if min == 0 || min > nproc {
            anyhow::bail!("--min-nproc {min} must be between 1 and --nproc {nproc}");
        }
        if args.max_restarts == 0 {
            anyhow::bail!("--min-nproc {min} needs --max-restarts: it decides how many workers a restart runs");
        }
        if !(backend == Backend::Mpi && launch.mpi_hosts.is_multi_host()) {
            anyhow::bail!(
                "--min-nproc {min} needs --backend mpi with --hosts or --hostfile: it restarts without the hosts that \
                 are gone, and one machine has none to lose"
            );
        }
    }
    let policy = RestartPolicy {
        max_restarts: args.max_restarts,
        min_nproc: args.min_nproc,
        backoff: seconds("--restart-backoff-s", args.restart_backoff_s)?,
        ..RestartPolicy::default()
    };
    let report = SupervisedLaunch::new(launch, policy).run()?;
    let restarts = match report.failed_attempts.len() {
        0 => String::new(),
        n => format!(" after {n} restart{}", if n == 1 { "" } else { "s" }),
    };
    eprintln!(
        "[launch] all {} workers exited 0 in {:.1}s{restarts} (logs in {})",
        report.last.nproc,
        report.elapsed.as_secs_f64(),
        report.last.log_dir.display()
    );
    Ok(())
}

/// A flag's seconds as a Duration; negative, NaN or infinite values are refused.
fn seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| anyhow::anyhow!("{flag} must be a non-negative number of seconds, got {value}"))
}

/// The secret every node of a static multi-node launch shares: `--secret-file`, else the
/// environment; an error saying how to make one when there is none (never a default: a
/// rendezvous open to anyone who can reach the port is what the secret is there to prevent).
fn job_secret(secret_file: Option<&std::path::Path>) -> anyhow::Result<protocol::JobSecret> {
    if let Some(path) = secret_file {
        return Ok(protocol::JobSecret::read_file(path)?);
    }
    protocol::JobSecret::from_env()?.with_context(|| {
        format!(
            "a static multi-node launch (--nnodes) needs the job's secret on every node: \
             make one with `ferroclip secret FILE`, copy it to each node, and pass --secret-file FILE \
             (or set {} / {})",
            protocol::env::JOB_SECRET_FILE,
            protocol::env::JOB_SECRET
        )
    })
}
