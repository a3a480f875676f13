//! The multi-node rendezvous of a static (torchrun-style) launch, over TCP with tokio.
//!
//! Node 0's launcher serves it at `--master ADDR:PORT` ([`serve`]); every node's
//! launcher (node 0's included) joins it ([`join`]): it proves the job secret (a
//! challenge–response, [`protocol::auth`]; so does every worker's relay request), registers its node rank,
//! worker count and address, and once all `nnodes` have arrived the master
//! assigns global ranks in node order and hands each node its [`World`]
//! (world size, first global rank, a run token shared by the run). Then:
//!
//! - barriers ([`NodeSession::barrier`]): released when every node reached them;
//! - heartbeats both ways: a node that closes its connection or falls silent
//!   makes the master abort the run on every other node, naming it; a master
//!   that goes away makes every node stop, naming `ADDR:PORT`;
//! - a small key–value relay for the workers: global rank 0 publishes the NCCL
//!   unique id, the other ranks fetch it (env `FERROCLIP_RENDEZVOUS=ADDR:PORT`,
//!   `FERROCLIP_RUN_TOKEN`; see `trainer::dist::rendezvous`).
//!
//! Timeouts: a node that never arrives fails the run at the arrival deadline
//! with the missing node ranks and the master's address in the error; a master
//! that cannot be reached fails the node at the same deadline naming `ADDR:PORT`.
mod node;
mod server;
mod types;
mod wire;

pub(crate) use node::resolve as resolve_master;
pub use node::{fetch, join, publish, NodeSession, NodeSpec};
pub use protocol::{NodeInfo, NCCL_ID_KEY};
pub use server::{serve, Rejection, Rejections, ServerSpec};
pub use types::{
    RendezvousError, World, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_RENDEZVOUS_TIMEOUT,
};

#[cfg(test)]
mod tests;
