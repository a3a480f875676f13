//! The static (torchrun-style) multi-node launch: every node runs
//! `ferroclip launch --nnodes M --node-rank i --master ADDR:PORT --nproc N`;
//! node 0's launcher also serves the [`rendezvous`](crate::rendezvous). Each
//! node joins, learns its global ranks, passes a barrier, starts its workers
//! directly with `RANK`/`WORLD_SIZE`/`LOCAL_RANK`/`MASTER_ADDR`/`MASTER_PORT`
//! plus `FERROCLIP_RENDEZVOUS`/`FERROCLIP_RUN_TOKEN` (the NCCL unique id goes
//! through the launcher's relay), and stops them when another node fails.
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use protocol::env;

use crate::error::LaunchError;
use crate::local::{Backend, LaunchReport, LocalLaunch, Placement};
use crate::output::Console;
use crate::rendezvous::{self, NodeSpec, RendezvousError, ServerSpec, World};
use crate::signals::{self, StopHandle};

/// How long node 0 waits for the master's own verdict after its node side ended.
const SERVER_VERDICT_PATIENCE: Duration = Duration::from_secs(5);

/// Why a static multi-node launch failed.
#[derive(Debug, thiserror::Error)]
pub enum MultiNodeError {
    /// The rendezvous failed: a node missing, lost or failed, the master unreachable.
    #[error(transparent)]
    Rendezvous(#[from] RendezvousError),
    /// This node's workers failed (the other nodes were told).
    #[error("node {node_rank}: {source}")]
    Workers {
        /// This node's rank.
        node_rank: usize,
        /// The worker failure.
        source: LaunchError,
    },
    /// The flags do not describe a static launch.
    #[error("{0}")]
    Config(String),
    /// `--bind-iface` names no interface with an address.
    #[error("network interface {iface:?} {reason}")]
    Interface {
        /// The interface name.
        iface: String,
        /// What is wrong.
        reason: String,
    },
}

/// One node of a static multi-node launch.
#[derive(Debug, Clone)]
pub struct StaticLaunch {
    /// This node's workers (program, args, `nproc`, log folder, grace,
    /// heartbeats); the backend must start workers directly (nccl).
    pub launch: LocalLaunch,
    /// The master, node rank, node count, bind address and timeouts; its
    /// `nproc` is taken from `launch`.
    pub node: NodeSpec,
    /// `--bind-iface`: also given to the workers as `NCCL_SOCKET_IFNAME`
    /// (unless that is set already), so NCCL uses the same network.
    pub bind_iface: Option<String>,
}

/// What a static launch that ended well did.
#[derive(Debug, Clone)]
pub struct StaticReport {
    /// This node's place in the world.
    pub world: World,
    /// This node's workers.
    pub last: LaunchReport,
}

impl StaticLaunch {
    /// Runs this node with output on stdout/stderr; SIGINT/SIGTERM/SIGHUP stop
    /// the workers (and, through the closed connection, the other nodes).
    pub fn run(&self) -> Result<StaticReport, MultiNodeError> {
        signals::install_signal_handlers();
        self.run_with(&Console::std(), &StopHandle::new())
    }

    /// Runs this node: serve (node 0), join, barrier, workers, final report.
    /// `stop` stops the workers; it is also triggered when another node fails.
    pub fn run_with(&self, console: &Console, stop: &StopHandle) -> Result<StaticReport, MultiNodeError> {
        if self.launch.backend != Backend::Nccl {
            return Err(MultiNodeError::Config(format!(
                "a static multi-node launch (--nnodes) starts workers directly: use --backend nccl, not {} \
                 (for MPI across hosts use --hosts or --hostfile)",
                self.launch.backend
            )));
        }
        if self.node.node_rank >= self.node.nnodes {
            return Err(MultiNodeError::Config(format!(
                "--node-rank {} is not below --nnodes {}",
                self.node.node_rank, self.node.nnodes
            )));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(RendezvousError::Runtime)?;
        runtime.block_on(self.run_async(console, stop))
    }

    async fn run_async(&self, console: &Console, stop: &StopHandle) -> Result<StaticReport, MultiNodeError> {
        let node = NodeSpec {
            nproc: self.launch.nproc,
            ..self.node.clone()
        };
        let server = if node.node_rank == 0 {
            Some(tokio::spawn(rendezvous::serve(
                self.listen(&node).await?,
                ServerSpec {
                    arrival_timeout: node.timeout,
                    heartbeat_timeout: node.heartbeat_timeout,
                    ..ServerSpec::new(node.nnodes, node.secret.clone())
                },
            )))
        } else {
            None
        };
        let result = self.run_node(&node, console, stop).await;
        match (result, server) {
            (Ok(report), Some(server)) => match tokio::time::timeout(SERVER_VERDICT_PATIENCE, server).await {
                Ok(Ok(Err(e))) => Err(e.into()),
                _ => Ok(report),
            },
            (Ok(report), None) => Ok(report),
            // On node 0 the master's own error is the most precise (it names
            // the missing or failed node); prefer it to what the node side heard,
            // except this node's own worker failure, which says more.
            (Err(err), Some(server)) => match tokio::time::timeout(SERVER_VERDICT_PATIENCE, server).await {
                Ok(Ok(Err(server_err))) if !matches!(err, MultiNodeError::Workers { .. }) => Err(server_err.into()),
                _ => Err(err),
            },
            (Err(err), None) => Err(err),
        }
    }

    /// Node 0's listener: at `--bind-addr`/`--bind-iface` if given, else at the
    /// master address itself (which must then be one of this host's).
    async fn listen(&self, node: &NodeSpec) -> Result<tokio::net::TcpListener, MultiNodeError> {
        let bad = |reason: String| RendezvousError::BadAddress {
            addr: node.master.clone(),
            reason,
        };
        let addrs = rendezvous::resolve_master(&node.master).await.map_err(bad)?;
        let port = addrs[0].port();
        let candidates: Vec<SocketAddr> = match node.bind {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => addrs,
        };
        let mut last = None;
        for addr in &candidates {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => return Ok(listener),
                Err(e) => last = Some((addr, e)),
            }
        }
        let (addr, source) = last.expect("resolve returns at least one address");
        Err(RendezvousError::Bind {
            addr: addr.to_string(),
            source,
        }
        .into())
    }

    async fn run_node(
        &self,
        node: &NodeSpec,
        console: &Console,
        stop: &StopHandle,
    ) -> Result<StaticReport, MultiNodeError> {
        let mut session = rendezvous::join(node).await?;
        let world = session.world().clone();
        console.note(&format!(
            "node {} of {}: ranks {}..{} of {} (rendezvous {})",
            world.node_rank,
            node.nnodes,
            world.rank_start,
            world.rank_start + world.nproc,
            world.world_size,
            node.master
        ));
        session.barrier("workers-start").await?;

        let mut launch = self.launch.clone();
        launch.placement = Some(self.placement(node, &world));
        let workers = {
            let (console, stop) = (console.clone(), stop.clone());
            tokio::task::spawn_blocking(move || launch.run_with(&console, &stop))
        };
        tokio::pin!(workers);
        let outcome = tokio::select! {
            outcome = &mut workers => outcome,
            err = session.watch() => {
                console.note(&format!("{err}; stopping this node's workers"));
                stop.stop();
                let _ = workers.await;
                return Err(err.into());
            }
        };
        let outcome = outcome.unwrap_or_else(|join_error| {
            Err(LaunchError::Spawn {
                program: self.launch.program.clone(),
                source: std::io::Error::other(join_error),
            })
        });
        match outcome {
            Ok(last) => {
                session.finish(true, String::new()).await?;
                Ok(StaticReport { world, last })
            }
            Err(source) => {
                let _ = session.finish(false, source.to_string()).await;
                Err(MultiNodeError::Workers {
                    node_rank: node.node_rank,
                    source,
                })
            }
        }
    }

    fn placement(&self, node: &NodeSpec, world: &World) -> Placement {
        let (host, port) = node.master.rsplit_once(':').unwrap_or((node.master.as_str(), "0"));
        let mut env = vec![
            (env::RENDEZVOUS.to_string(), node.master.clone()),
            (env::RUN_TOKEN.to_string(), world.run_token.clone()),
            (env::JOB_SECRET.to_string(), node.secret.to_hex()),
            (env::NODE_RANK.to_string(), world.node_rank.to_string()),
            (env::NNODES.to_string(), node.nnodes.to_string()),
            (
                env::RENDEZVOUS_TIMEOUT_S.to_string(),
                node.timeout.as_secs_f64().to_string(),
            ),
        ];
        if let Some(iface) = &self.bind_iface {
            if std::env::var_os("NCCL_SOCKET_IFNAME").is_none() {
                env.push(("NCCL_SOCKET_IFNAME".to_string(), iface.clone()));
            }
        }
        Placement {
            rank_start: world.rank_start,
            world_size: world.world_size,
            master_addr: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            master_port: port.parse().unwrap_or(0),
            env,
        }
    }
}

/// The first IPv4 address (else IPv6) of network interface `iface`.
pub fn interface_address(iface: &str) -> Result<IpAddr, MultiNodeError> {
    let mut first_v6 = None;
    let mut found = false;
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below; every
    // pointer is checked for null before it is read.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return Err(MultiNodeError::Interface {
                iface: iface.into(),
                reason: format!("cannot be looked up: {}", std::io::Error::last_os_error()),
            });
        }
        let mut cursor = list;
        let mut v4 = None;
        while !cursor.is_null() {
            let entry = &*cursor;
            cursor = entry.ifa_next;
            if entry.ifa_name.is_null() || std::ffi::CStr::from_ptr(entry.ifa_name).to_bytes() != iface.as_bytes() {
                continue;
            }
            found = true;
            if entry.ifa_addr.is_null() {
                continue;
            }
            match i32::from((*entry.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
                    v4 = Some(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()));
                    break;
                }
                libc::AF_INET6 => {
                    let sin6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                    first_v6.get_or_insert(IpAddr::from(sin6.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        libc::freeifaddrs(list);
        if let Some(ip) = v4 {
            return Ok(ip);
        }
    }
    first_v6.ok_or_else(|| MultiNodeError::Interface {
        iface: iface.into(),
        reason: if found {
            "has no IP address".into()
        } else {
            "does not exist on this host".into()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    }

    fn test_secret() -> protocol::JobSecret {
        protocol::JobSecret::from_hex(&"5e".repeat(32), "test").unwrap()
    }

    fn node_launch(script: &str, dir: &std::path::Path, master: &str, node_rank: usize, nnodes: usize) -> StaticLaunch {
        let mut launch = LocalLaunch::new(
            "sh",
            ["-c", script],
            2,
            Backend::Nccl,
            dir.join(format!("node{node_rank}")),
        );
        launch.grace = Duration::from_secs(2);
        StaticLaunch {
            launch,
            node: NodeSpec {
                timeout: Duration::from_secs(10),
                heartbeat_interval: Duration::from_millis(100),
                heartbeat_timeout: Duration::from_secs(3),
                ..NodeSpec::new(master, node_rank, nnodes, 0, test_secret())
            },
            bind_iface: None,
        }
    }

    fn quiet() -> (Console, Arc<Mutex<Vec<u8>>>) {
        let out: Arc<Mutex<Vec<u8>>> = Arc::default();
        (
            Console {
                stdout: out.clone(),
                stderr: out.clone(),
            },
            out,
        )
    }

    #[test]
    fn two_nodes_start_their_workers_with_global_ranks() {
        let dir = tempfile::tempdir().unwrap();
        let master = format!("127.0.0.1:{}", free_port());
        let script = "echo \"rank=$RANK world=$WORLD_SIZE local=$LOCAL_RANK master=$MASTER_ADDR:$MASTER_PORT \
                      rdv=$FERROCLIP_RENDEZVOUS node=$FERROCLIP_NODE_RANK token=${#FERROCLIP_RUN_TOKEN}\"";
        let nodes: Vec<_> = (0..2)
            .map(|r| {
                let launch = node_launch(script, dir.path(), &master, r, 2);
                std::thread::spawn(move || launch.run_with(&quiet().0, &StopHandle::new()))
            })
            .collect();
        for node in nodes {
            let report = node.join().unwrap().expect("node succeeds");
            assert_eq!(report.world.world_size, 4);
        }
        let log = |node: usize, rank: usize| {
            std::fs::read_to_string(dir.path().join(format!("node{node}/rank{rank}.log"))).unwrap()
        };
        assert_eq!(
            log(1, 3).trim(),
            format!("rank=3 world=4 local=1 master={master} rdv={master} node=1 token=32")
        );
        assert!(log(0, 0).starts_with("rank=0 world=4 local=0"), "{}", log(0, 0));
    }

    #[test]
    fn a_failing_node_stops_the_others_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let master = format!("127.0.0.1:{}", free_port());
        let healthy = node_launch("sleep 30", dir.path(), &master, 0, 2);
        let failing = node_launch(
            "if [ \"$RANK\" = 3 ]; then exit 5; fi; sleep 30",
            dir.path(),
            &master,
            1,
            2,
        );
        let started = std::time::Instant::now();
        let threads: Vec<_> = [healthy, failing]
            .into_iter()
            .map(|launch| std::thread::spawn(move || launch.run_with(&quiet().0, &StopHandle::new())))
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "took {:?}",
            started.elapsed()
        );
        let node0 = results[0].as_ref().expect_err("node 0 is stopped").to_string();
        assert!(
            node0.contains("node 1 (127.0.0.1) workers failed: rank 3 exited with status 5"),
            "{node0}"
        );
        let node1 = results[1].as_ref().expect_err("node 1 failed").to_string();
        assert!(node1.starts_with("node 1: rank 3 exited with status 5"), "{node1}");
    }

    #[test]
    fn a_missing_node_fails_node0_within_the_timeout_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let master = format!("127.0.0.1:{}", free_port());
        let mut launch = node_launch("true", dir.path(), &master, 0, 3);
        launch.node.timeout = Duration::from_millis(700);
        let started = std::time::Instant::now();
        let err = launch.run_with(&quiet().0, &StopHandle::new()).unwrap_err().to_string();
        assert!(
            err.contains("node rank(s) 1, 2 never arrived") && err.contains(&master),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn the_mpi_backend_and_unknown_interfaces_are_refused_by_name() {
        let mut launch = node_launch("true", std::path::Path::new("unused"), "127.0.0.1:1", 0, 2);
        launch.launch.backend = Backend::Mpi;
        let err = launch.run_with(&quiet().0, &StopHandle::new()).unwrap_err();
        assert!(err.to_string().contains("--backend nccl"), "{err}");
        let err = interface_address("no-such-if0").unwrap_err().to_string();
        assert!(err.contains("\"no-such-if0\" does not exist"), "{err}");
        assert_eq!(interface_address("lo").unwrap(), IpAddr::from([127, 0, 0, 1]));
    }
}
