//! A worker's one request to the multi-node launcher's relay (`FERROCLIP_RENDEZVOUS`):
//! the challenge–response over the job secret, then `publish` or `fetch` as one JSON line.
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Instant;

use protocol::auth::nonce;
use protocol::hello::MAX_PAYLOAD;
use protocol::{env, from_hex, to_hex, JobSecret, Message, MAX_AUTH_LINE};

use super::net::{connect_with_retries, remaining, rendezvous_error};
use crate::dist::DistError;

/// The relay key of the payload (the NCCL unique id), as the launcher names it.
const RELAY_KEY: &str = protocol::NCCL_ID_KEY;

/// The launcher's rendezvous relay and this run's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// `HOST:PORT` of the launcher's rendezvous server (`FERROCLIP_RENDEZVOUS`).
    pub addr: String,
    /// The run token the launcher handed out (`FERROCLIP_RUN_TOKEN`).
    pub token: String,
}

/// One request to the launcher's relay: `publish` (with `value`) or `fetch`;
/// returns the value the relay answers with. Connects with retries until
/// `deadline`, proves the job secret and checks the relay's proof, then waits for the
/// answer until `deadline`.
pub(super) fn request(
    relay: &Relay,
    secret: &JobSecret,
    kind: &str,
    value: Option<&[u8]>,
    deadline: Instant,
) -> Result<Vec<u8>, DistError> {
    let fail = |reason: String| rendezvous_error(format!("relay {} ({kind}): {reason}", relay.addr));
    let addrs: Vec<SocketAddr> = relay
        .addr
        .to_socket_addrs()
        .map_err(|e| fail(format!("cannot resolve {}: {e}", env::RENDEZVOUS)))?
        .collect();
    let no_address = format!("{} resolves to no address", env::RENDEZVOUS);
    let stream = connect_with_retries(&addrs, deadline, no_address)
        .map_err(|last_error| fail(format!("timed out connecting (last attempt: {last_error})")))?;
    stream
        .set_read_timeout(Some(remaining(deadline)))
        .map_err(|e| fail(format!("socket: {e}")))?;
    let mut writer = stream.try_clone().map_err(|e| fail(format!("socket: {e}")))?;
    let mut reader = BufReader::new(stream);
    let read_error = |e: std::io::Error| {
        fail(if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            "timed out waiting for the answer (did rank 0 start?)".into()
        } else {
            e.to_string()
        })
    };

    // The handshake: the relay's nonce, ours and our proof, the relay's proof.
    let server_nonce = match read_line(&mut reader, MAX_AUTH_LINE).map_err(read_error)? {
        Some(Message::Challenge { nonce_hex }) => {
            from_hex(&nonce_hex).ok_or_else(|| fail("the challenge's nonce is not hex".into()))?
        }
        other => return Err(fail(format!("expected a challenge, got {other:?}"))),
    };
    let client_nonce = nonce().map_err(|e| fail(e.to_string()))?;
    let auth = Message::Auth {
        nonce_hex: to_hex(&client_nonce),
        mac_hex: to_hex(&secret.client_proof(&server_nonce, &client_nonce, b"")),
    };
    send(&mut writer, &auth).map_err(|e| fail(format!("sending the proof: {e}")))?;
    match read_line(&mut reader, MAX_AUTH_LINE).map_err(read_error)? {
        Some(Message::Authenticated { mac_hex }) => {
            let proof = from_hex(&mac_hex).unwrap_or_default();
            if !secret.check_server_proof(&server_nonce, &client_nonce, b"", &proof) {
                return Err(fail(
                    "the relay's proof does not hold (not this job's launcher? check FERROCLIP_JOB_SECRET)".into(),
                ));
            }
        }
        Some(Message::Error { reason }) => return Err(fail(reason)),
        None => {
            return Err(fail(
                "the relay closed the connection after our proof (do the launchers and workers share FERROCLIP_JOB_SECRET?)"
                    .into(),
            ))
        }
        Some(other) => return Err(fail(format!("unexpected answer {other:?}"))),
    }

    let request = match value {
        Some(value) => Message::Publish {
            token: relay.token.clone(),
            key: RELAY_KEY.into(),
            value_hex: to_hex(value),
        },
        None => Message::Fetch {
            token: relay.token.clone(),
            key: RELAY_KEY.into(),
        },
    };
    send(&mut writer, &request).map_err(|e| fail(format!("sending the request: {e}")))?;
    match read_line(&mut reader, 2 * MAX_PAYLOAD as u64 + 1024).map_err(read_error)? {
        Some(Message::Value { value_hex, .. }) => {
            from_hex(&value_hex).ok_or_else(|| fail("the answer's value is not hex".into()))
        }
        Some(Message::Error { reason }) => Err(fail(reason)),
        other => Err(fail(format!("unexpected answer {other:?}"))),
    }
}

/// Writes `message` as the worker's request line.
fn send(writer: &mut impl Write, message: &Message) -> std::io::Result<()> {
    let line = message.to_request_line().map_err(std::io::Error::other)?;
    writer.write_all(line.as_bytes())?;
    writer.flush()
}

/// The next message (at most `limit` bytes); `None` at end of stream.
fn read_line(reader: &mut impl BufRead, limit: u64) -> std::io::Result<Option<Message>> {
    let mut line = Vec::new();
    reader.by_ref().take(limit).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Ok(None);
    }
    Message::from_line(&line)
        .map(Some)
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, format!("unreadable line: {e}")))
}
