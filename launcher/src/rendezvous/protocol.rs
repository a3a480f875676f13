//! The wire format: one JSON object per line, tagged by `"type"`.
//!
//! Launchers (nodes) send `register`, `heartbeat`, `barrier`, `done`; the master
//! answers `world`, `heartbeat`, `barrier_done`, `finished` or `abort`.
//! Workers (the trainer's NCCL bootstrap) open their own short connection and
//! send one `publish` or `fetch`, answered by `value` or `error`; this half of
//! the protocol is mirrored by hand in `trainer/src/dist/rendezvous.rs` (the
//! trainer does not depend on the launcher), so change both together.
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version a node announces; the master refuses others.
pub(crate) const VERSION: u32 = 1;

/// The longest line accepted (a guard against a peer that is not ours).
const MAX_LINE: u64 = 1 << 20;

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
pub(crate) enum Message {
    /// Node → master, first message of a node.
    Register {
        version: u32,
        node_rank: usize,
        nnodes: usize,
        nproc: usize,
        addr: String,
    },
    /// Both ways: "still alive".
    Heartbeat,
    /// Node → master: this node reached barrier `name`.
    Barrier { name: String },
    /// Master → nodes: every node reached barrier `name`.
    BarrierDone { name: String },
    /// Node → master: the node's workers ended (`ok`: all exited 0).
    Done { ok: bool, detail: String },
    /// Master → node: the world is formed; this node's place in it.
    World {
        world_size: usize,
        node_rank: usize,
        rank_start: usize,
        nproc: usize,
        run_token: String,
        nodes: Vec<NodeInfo>,
    },
    /// Master → nodes: every node's workers exited 0.
    Finished,
    /// Master → nodes: stop the workers; `reason` names the node at fault.
    Abort { reason: String },
    /// Worker → master: store `value_hex` under `key` for this run.
    Publish {
        token: String,
        key: String,
        value_hex: String,
    },
    /// Worker → master: wait for the value stored under `key`.
    Fetch { token: String, key: String },
    /// Master → worker: the value (an echo of it for `publish`).
    Value { key: String, value_hex: String },
    /// Master → worker or node: the request was refused.
    Error { reason: String },
}

/// Writes `message` as one line and flushes.
pub(crate) async fn write_message<W: AsyncWrite + Unpin>(writer: &mut W, message: &Message) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line).await?;
    writer.flush().await
}

/// Reads the next message; `Ok(None)` at end of stream. A line that is too long
/// or not a message is an `InvalidData` error.
pub(crate) async fn read_message<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Option<Message>> {
    use tokio::io::AsyncReadExt;
    let mut line = Vec::new();
    let n = (&mut *reader).take(MAX_LINE).read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        let why = if n as u64 >= MAX_LINE {
            "line longer than 1 MiB"
        } else {
            "stream ended mid-line"
        };
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Lower-case hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string; `None` when it is not hex of whole bytes.
pub(crate) fn from_hex(text: &str) -> Option<Vec<u8>> {
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

    #[tokio::test]
    async fn reading_stops_at_eof_and_rejects_garbage() {
        let mut input: &[u8] = b"{\"type\":\"heartbeat\"}\nnot json\n{\"type\":\"finished\"}";
        assert_eq!(read_message(&mut input).await.unwrap(), Some(Message::Heartbeat));
        let err = read_message(&mut input).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        let err = read_message(&mut input).await.unwrap_err();
        assert!(err.to_string().contains("mid-line"), "{err}");
        assert_eq!(read_message(&mut input).await.unwrap(), None);
    }
}
