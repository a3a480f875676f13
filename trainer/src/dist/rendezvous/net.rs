//! What both halves of the workers' rendezvous share: connecting with retries, deadlines,
//! and the error type they report.
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::dist::DistError;

/// Pause between connection attempts while the server is not listening yet.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The rendezvous' error, with its reason.
pub(super) fn rendezvous_error(reason: String) -> DistError {
    DistError::Backend {
        backend: "rendezvous",
        reason,
    }
}

/// A connection to the first of `addrs` that answers, retrying until `deadline`; on time-out
/// the last attempt's error (`no_attempt` when there was none).
pub(super) fn connect_with_retries(
    addrs: &[SocketAddr],
    deadline: Instant,
    no_attempt: String,
) -> Result<TcpStream, String> {
    let mut last_error = no_attempt;
    loop {
        if let Some(stream) = addrs.iter().find_map(|addr| {
            TcpStream::connect_timeout(addr, remaining(deadline).min(Duration::from_secs(5)))
                .map_err(|e| last_error = format!("{addr}: {e}"))
                .ok()
        }) {
            return Ok(stream);
        }
        if Instant::now() >= deadline {
            return Err(last_error);
        }
        std::thread::sleep(RETRY_PAUSE);
    }
}

/// Time left until `deadline`, never zero (a zero timeout means "block forever" to std).
pub(super) fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}
