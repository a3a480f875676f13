//! The rendezvous messages: one JSON object per line, tagged by `"type"`.
//!
//! Every connection opens with the handshake of [`crate::auth`]: the master sends
//! `challenge`, the peer answers `auth`, the master `authenticated` (or `error`, and
//! closes). Then launchers (nodes) send `register`, `heartbeat`, `barrier`, `done`; the
//! master answers `world`, `heartbeat`, `barrier_done`, `finished` or `abort`.
//! Workers (the trainer's NCCL bootstrap) open their own short connection and
//! send one `publish` or `fetch`, answered by `value` or `error`.
//!
//! Launchers and the master write a message with [`Message::to_line`] (fields in the
//! order declared here, `type` first); workers write their request with
//! [`Message::to_request_line`] (keys sorted, as the worker has always written them).
//! Readers accept either order: [`Message::from_line`].
use serde::{Deserialize, Serialize};

/// The protocol version a node announces; the master refuses others.
pub const VERSION: u32 = 1;

/// The longest line the launchers accept (a guard against a peer that is not ours).
pub const MAX_LINE: u64 = 1 << 20;
/// The longest line read before a peer has authenticated (an `auth` is ~180 bytes).
pub const MAX_AUTH_LINE: u64 = 1024;

/// The relay key under which global rank 0 publishes the NCCL unique id.
pub const NCCL_ID_KEY: &str = "nccl_unique_id";

/// One node as the master sees it once the world is formed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's rank among the nodes (`--node-rank`).
    pub node_rank: usize,
    /// The address the node's launcher connected from (or `--bind-addr`).
    pub addr: String,
    /// Workers on that node.
    pub nproc: usize,
    /// Global rank of the node's first worker.
    pub rank_start: usize,
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Master → peer, first on every connection: the master's nonce.
    Challenge {
        /// [`crate::auth::NONCE_BYTES`] random bytes, hex.
        nonce_hex: String,
    },
    /// Peer → master, the answer to `challenge`: the peer's nonce and its proof
    /// ([`crate::JobSecret::client_proof`] with an empty claim).
    Auth {
        /// The peer's nonce, hex.
        nonce_hex: String,
        /// The proof, hex.
        mac_hex: String,
    },
    /// Master → peer: the proof held; the master's own ([`crate::JobSecret::server_proof`]
    /// with an empty reply).
    Authenticated {
        /// The master's proof, hex.
        mac_hex: String,
    },
    /// Node → master, first message of a node.
    Register {
        /// The sender's [`VERSION`].
        version: u32,
        /// The node's rank among the nodes (`--node-rank`).
        node_rank: usize,
        /// The number of nodes the node was told (`--nnodes`); every node must agree.
        nnodes: usize,
        /// Workers on the node (`--nproc`).
        nproc: usize,
        /// The node's address: `--bind-addr`, else the local address of its connection.
        addr: String,
    },
    /// Both ways: "still alive".
    Heartbeat,
    /// Node → master: this node reached barrier `name`.
    Barrier {
        /// The barrier's name.
        name: String,
    },
    /// Master → nodes: every node reached barrier `name`.
    BarrierDone {
        /// The barrier's name.
        name: String,
    },
    /// Node → master: the node's workers ended (`ok`: all exited 0).
    Done {
        /// Whether every worker of the node exited 0.
        ok: bool,
        /// The failure when not `ok` (which rank, how).
        detail: String,
    },
    /// Master → node: the world is formed; this node's place in it.
    World {
        /// Workers across all nodes.
        world_size: usize,
        /// This node's rank among the nodes.
        node_rank: usize,
        /// Global rank of this node's first worker.
        rank_start: usize,
        /// Workers on this node.
        nproc: usize,
        /// Random token shared by every node of this run (workers pass it to the relay).
        run_token: String,
        /// Every node, by node rank.
        nodes: Vec<NodeInfo>,
    },
    /// Master → nodes: every node's workers exited 0.
    Finished,
    /// Master → nodes: stop the workers; `reason` names the node at fault.
    Abort {
        /// Why, naming the node at fault.
        reason: String,
    },
    /// Worker → master: store `value_hex` under `key` for this run.
    Publish {
        /// The run token (`FERROCLIP_RUN_TOKEN`).
        token: String,
        /// The key, e.g. [`NCCL_ID_KEY`].
        key: String,
        /// The value, lower-case hex ([`to_hex`]).
        value_hex: String,
    },
    /// Worker → master: wait for the value stored under `key`.
    Fetch {
        /// The run token (`FERROCLIP_RUN_TOKEN`).
        token: String,
        /// The key, e.g. [`NCCL_ID_KEY`].
        key: String,
    },
    /// Master → worker: the value (an echo of it for `publish`).
    Value {
        /// The key asked for.
        key: String,
        /// The value, lower-case hex ([`from_hex`]).
        value_hex: String,
    },
    /// Master → worker or node: the request was refused.
    Error {
        /// Why.
        reason: String,
    },
}

impl Message {
    /// The message as one line, `\n` included, with the fields in declaration order
    /// (`type` first): how launchers and the master write.
    pub fn to_line(&self) -> serde_json::Result<Vec<u8>> {
        let mut line = serde_json::to_vec(self)?;
        line.push(b'\n');
        Ok(line)
    }

    /// The message as one line, `\n` included, with the keys in `serde_json::Value`'s
    /// (sorted) order: how a worker writes its `publish` or `fetch`.
    pub fn to_request_line(&self) -> serde_json::Result<String> {
        let mut line = serde_json::to_value(self)?.to_string();
        line.push('\n');
        Ok(line)
    }

    /// Parses one line (a trailing `\n` is allowed); an error when it is not a message.
    pub fn from_line(line: &[u8]) -> serde_json::Result<Message> {
        serde_json::from_slice(line)
    }
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string; `None` when it is not hex of whole bytes.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_json_lines_that_round_trip() {
        let message = Message::Publish {
            token: "t".into(),
            key: "nccl_unique_id".into(),
            value_hex: to_hex(&[0, 1, 254, 255]),
        };
        let text = serde_json::to_string(&message).unwrap();
        assert_eq!(
            text,
            r#"{"type":"publish","token":"t","key":"nccl_unique_id","value_hex":"0001feff"}"#
        );
        assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), message);
        assert_eq!(from_hex("0001feff"), Some(vec![0, 1, 254, 255]));
        assert_eq!(from_hex("0g"), None);
        assert_eq!(from_hex("abc"), None);
    }

    #[test]
    fn both_line_forms_end_in_a_newline_and_read_back() {
        let message = Message::Fetch {
            token: "tok".into(),
            key: NCCL_ID_KEY.into(),
        };
        let line = message.to_line().unwrap();
        assert_eq!(
            line,
            b"{\"type\":\"fetch\",\"token\":\"tok\",\"key\":\"nccl_unique_id\"}\n"
        );
        let request = message.to_request_line().unwrap();
        assert_eq!(
            request,
            "{\"key\":\"nccl_unique_id\",\"token\":\"tok\",\"type\":\"fetch\"}\n"
        );
        assert_eq!(Message::from_line(&line).unwrap(), message);
        assert_eq!(Message::from_line(request.as_bytes()).unwrap(), message);
        assert!(Message::from_line(b"{\"type\":\"nonsense\"}\n").is_err());
    }
}
