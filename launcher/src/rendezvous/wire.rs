//! The async side of the wire format ([`protocol::message`]): one message per line over
//! tokio streams, for the launchers and the master. The messages, the version, the line
//! limit and the encoding live in the `protocol` crate, shared with the trainer's worker half.
use protocol::auth::nonce;
use protocol::{from_hex, to_hex, JobSecret, Message, MAX_AUTH_LINE, MAX_LINE};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// Writes `message` as one line and flushes.
pub(crate) async fn write_message<W: AsyncWrite + Unpin>(writer: &mut W, message: &Message) -> std::io::Result<()> {
    let line = message.to_line().map_err(std::io::Error::other)?;
    writer.write_all(&line).await?;
    writer.flush().await
}

/// Reads the next message; `Ok(None)` at end of stream. A line that is too long
/// or not a message is an `InvalidData` error.
pub(crate) async fn read_message<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Option<Message>> {
    read_message_within(reader, MAX_LINE).await
}

/// [`read_message`] with a line limit of `limit` bytes.
async fn read_message_within<R: AsyncBufRead + Unpin>(reader: &mut R, limit: u64) -> std::io::Result<Option<Message>> {
    use tokio::io::AsyncReadExt;
    let mut line = Vec::new();
    let n = (&mut *reader).take(limit).read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        let why = if n as u64 >= limit {
            format!("line longer than {limit} bytes")
        } else {
            "stream ended mid-line".to_string()
        };
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
    }
    Message::from_line(&line)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The master's half of the handshake ([`protocol::auth`]): challenge, check the peer's
/// proof, answer with the master's. `Err` says why the peer was refused (nothing else was
/// read from it; the caller closes the connection without an answer).
pub(crate) async fn authenticate_peer<R, W>(read: &mut R, write: &mut W, secret: &JobSecret) -> Result<(), String>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let server_nonce = nonce().map_err(|e| e.to_string())?;
    let challenge = Message::Challenge {
        nonce_hex: to_hex(&server_nonce),
    };
    write_message(write, &challenge)
        .await
        .map_err(|e| format!("sending the challenge: {e}"))?;
    let (client_nonce, proof) = match read_message_within(read, MAX_AUTH_LINE).await {
        Ok(Some(Message::Auth { nonce_hex, mac_hex })) => (from_hex(&nonce_hex), from_hex(&mac_hex)),
        Ok(Some(other)) => return Err(format!("sent {} before authenticating", message_type(&other))),
        Ok(None) => return Err("closed before answering the challenge".into()),
        Err(e) => return Err(format!("unreadable answer to the challenge: {e}")),
    };
    let (Some(client_nonce), Some(proof)) = (client_nonce, proof) else {
        return Err("an answer to the challenge that is not hex".into());
    };
    if !secret.check_client_proof(&server_nonce, &client_nonce, b"", &proof) {
        return Err("a wrong proof (another job's secret, or a replay)".into());
    }
    let mine = secret.server_proof(&server_nonce, &client_nonce, b"");
    write_message(write, &Message::Authenticated { mac_hex: to_hex(&mine) })
        .await
        .map_err(|e| format!("answering the proof: {e}"))
}

/// Why a peer's handshake failed.
#[derive(Debug)]
pub(crate) struct HandshakeError {
    /// The master closed the connection before its challenge: turned away unread (it was at
    /// its limit of handshakes in progress), worth another try.
    pub turned_away: bool,
    /// What went wrong, for the caller's error naming the master.
    pub reason: String,
}

impl From<String> for HandshakeError {
    fn from(reason: String) -> Self {
        Self {
            turned_away: false,
            reason,
        }
    }
}

impl From<&str> for HandshakeError {
    fn from(reason: &str) -> Self {
        reason.to_string().into()
    }
}

/// A peer's half of the handshake: answer the master's challenge and check its proof.
pub(crate) async fn authenticate_to_master<R, W>(
    read: &mut R,
    write: &mut W,
    secret: &JobSecret,
) -> Result<(), HandshakeError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let server_nonce = match read_message_within(read, MAX_AUTH_LINE).await {
        Ok(Some(Message::Challenge { nonce_hex })) => {
            from_hex(&nonce_hex).ok_or("the master's challenge is not hex")?
        }
        Ok(Some(other)) => return Err(format!("expected a challenge, got {}", message_type(&other)).into()),
        Ok(None) => {
            return Err(HandshakeError {
                turned_away: true,
                reason: "closed the connection before its challenge".into(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            return Err(HandshakeError {
                turned_away: true,
                reason: format!("reset the connection before its challenge: {e}"),
            })
        }
        Err(e) => return Err(format!("no challenge: {e}").into()),
    };
    let client_nonce = nonce().map_err(|e| e.to_string())?;
    let auth = Message::Auth {
        nonce_hex: to_hex(&client_nonce),
        mac_hex: to_hex(&secret.client_proof(&server_nonce, &client_nonce, b"")),
    };
    write_message(write, &auth)
        .await
        .map_err(|e| format!("sending our proof: {e}"))?;
    match read_message_within(read, MAX_AUTH_LINE).await {
        Ok(Some(Message::Authenticated { mac_hex })) => {
            let proof = from_hex(&mac_hex).unwrap_or_default();
            if secret.check_server_proof(&server_nonce, &client_nonce, b"", &proof) {
                Ok(())
            } else {
                Err("its proof of the job secret does not hold (not this job's master?)".into())
            }
        }
        Ok(None) | Err(_) => Err(
            "refused our proof of the job secret (do all nodes have the same FERROCLIP_JOB_SECRET / --secret-file?)"
                .into(),
        ),
        Ok(Some(other)) => Err(format!("expected its proof, got {}", message_type(&other)).into()),
    }
}

/// The `type` of a message, for errors (never its contents).
fn message_type(message: &Message) -> String {
    serde_json::to_value(message)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_else(|| "a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

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
