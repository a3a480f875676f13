//! The async side of the wire format ([`protocol::message`]): one message per line over
//! tokio streams, for the launchers and the master. The messages, the version, the line
//! limit and the encoding live in the `protocol` crate, shared with the trainer's worker half.
use protocol::{Message, MAX_LINE};
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
    Message::from_line(&line)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
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
