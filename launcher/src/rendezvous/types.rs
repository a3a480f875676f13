//! The rendezvous's shared vocabulary: its defaults, the formed [`World`] and
//! [`RendezvousError`] (used by both the node and the server side).
use std::time::Duration;

use protocol::NodeInfo;

/// How often nodes and the master send heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// A peer silent this long is lost.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(15);
/// Default for how long nodes wait for each other (`--rendezvous-timeout-s`).
pub const DEFAULT_RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(300);

/// A node's place in the formed world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    /// Workers across all nodes.
    pub world_size: usize,
    /// This node's rank among the nodes.
    pub node_rank: usize,
    /// Global rank of this node's first worker.
    pub rank_start: usize,
    /// Workers on this node.
    pub nproc: usize,
    /// Random token shared by every node of this run (workers pass it to the relay).
    pub run_token: String,
    /// Every node, by node rank.
    pub nodes: Vec<NodeInfo>,
}

/// Why the rendezvous failed. Messages name the node rank(s) or the address at fault.
#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    /// The master could not listen at its address.
    #[error("cannot serve the rendezvous at {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// `--master` is not `HOST:PORT` or does not resolve.
    #[error("bad rendezvous address {addr:?}: {reason}")]
    BadAddress {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The master did not accept a connection before the deadline.
    #[error("rendezvous master {addr} unreachable for {waited_s:.1}s (last error: {last_error})")]
    MasterUnreachable {
        /// `ADDR:PORT`.
        addr: String,
        /// How long the node tried.
        waited_s: f64,
        /// The last connection error.
        last_error: String,
    },
    /// The master closed the connection or fell silent.
    #[error("lost the rendezvous master {addr}: {reason}")]
    MasterLost {
        /// `ADDR:PORT`.
        addr: String,
        /// EOF, silence, or an IO error.
        reason: String,
    },
    /// Not every node registered before the deadline (reported by the master).
    #[error("node rank(s) {missing} never arrived at the rendezvous {addr} within {waited_s:.1}s ({arrived} of {nnodes} nodes registered)",
        missing = join_ranks(.missing))]
    NodesMissing {
        /// The node ranks that never registered.
        missing: Vec<usize>,
        /// How many did.
        arrived: usize,
        /// `--nnodes`.
        nnodes: usize,
        /// The master's address.
        addr: String,
        /// The deadline.
        waited_s: f64,
    },
    /// Two nodes disagree about the run, or a node breaks the protocol.
    #[error("rendezvous at {addr}: {reason}")]
    Protocol {
        /// The master's address.
        addr: String,
        /// What is wrong, naming the node.
        reason: String,
    },
    /// A node died, fell silent or its workers failed (reported by the master).
    #[error("node {node_rank} ({node_addr}) {what}")]
    NodeFailed {
        /// The node at fault.
        node_rank: usize,
        /// Its address.
        node_addr: String,
        /// "lost: connection closed", "sent no heartbeat for 15.0s", "workers failed: …".
        what: String,
    },
    /// The master aborted the run; `reason` names the node at fault.
    #[error("the rendezvous master {addr} aborted the run: {reason}")]
    Aborted {
        /// `ADDR:PORT`.
        addr: String,
        /// The master's explanation.
        reason: String,
    },
    /// A relay request was refused or timed out.
    #[error("rendezvous relay at {addr}: {reason}")]
    Relay {
        /// `ADDR:PORT`.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The async runtime could not be started.
    #[error("cannot start the rendezvous runtime: {0}")]
    Runtime(std::io::Error),
}

fn join_ranks(ranks: &[usize]) -> String {
    ranks.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
}
