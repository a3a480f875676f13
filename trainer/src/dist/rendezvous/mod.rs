//! A small TCP rendezvous: rank 0 hands a fixed-size blob (the NCCL unique id)
//! to every other rank, at `MASTER_ADDR:MASTER_PORT` as `ferroclip launch
//! --backend nccl` and torchrun set them. No MPI needed (the GPU machines have none).
//!
//! Protocol ([`protocol::hello`], [`rank0`]): rank 0 listens at `MASTER_ADDR` (only there:
//! never on every interface); every other rank connects (retrying until rank 0 is up),
//! answers rank 0's challenge with its hello (`HELLO_MAGIC`, its rank and the world size)
//! and its proof of the job secret ([`protocol::auth`], `FERROCLIP_JOB_SECRET`). Once all
//! `world_size - 1` ranks have proved themselves, rank 0 answers each with the payload and
//! its own proof. Rank 0 answers nobody until everyone arrived, so a rank that never comes
//! makes every rank fail at the deadline with the missing ranks named, instead of some
//! ranks entering a collective initialisation that would wait forever. A connection that
//! does not prove the secret gets nothing and is logged with its address; handshakes run
//! concurrently, each with its own deadline, so a silent or slow client stalls no other.
//!
//! Under a static multi-node `ferroclip launch --nnodes`, the launchers already
//! run a rendezvous server (`launcher::rendezvous`, at `--master ADDR:PORT`)
//! and give every worker `FERROCLIP_RENDEZVOUS=ADDR:PORT` and
//! `FERROCLIP_RUN_TOKEN`. Then rank 0 does not listen itself: it publishes
//! the payload to that server's relay and the other ranks fetch it there, one
//! JSON line each way (`{"type":"publish","token":…,"key":…,"value_hex":…}` /
//! `{"type":"fetch","token":…,"key":…}`, answered by
//! `{"type":"value","key":…,"value_hex":…}` or `{"type":"error","reason":…}`:
//! [`protocol::Message`], which the launcher's rendezvous speaks too), after the same
//! challenge–response over the job secret ([`relay`]).

mod net;
mod rank0;
mod relay;

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::time::{Duration, Instant};

use protocol::{env, JobSecret};

use super::DistError;

use net::rendezvous_error;
pub use rank0::{fetch, serve, Rejection, ServeReport};
pub use relay::Relay;
/// Default for how long the rendezvous waits for all ranks.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Where rank 0 listens and how long everyone waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// Host name or address of rank 0 (`MASTER_ADDR`).
    pub host: String,
    /// Port rank 0 listens on (`MASTER_PORT`).
    pub port: u16,
    /// Deadline for the whole exchange, counted from the call.
    pub timeout: Duration,
    /// The launcher's relay, when a multi-node launcher serves one
    /// (`FERROCLIP_RENDEZVOUS`); rank 0 then publishes there instead of listening.
    pub relay: Option<Relay>,
    /// The job's secret (`FERROCLIP_JOB_SECRET` or `FERROCLIP_JOB_SECRET_FILE`), which
    /// every peer proves it holds.
    pub secret: JobSecret,
}

/// The relay key of the payload (the NCCL unique id), as the launcher names it.
pub use protocol::NCCL_ID_KEY as RELAY_KEY;

impl Rendezvous {
    /// Reads `MASTER_ADDR`, `MASTER_PORT`, the job secret and the optional
    /// `FERROCLIP_RENDEZVOUS_TIMEOUT_S` (seconds, default 300) through `lookup`.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Rendezvous, DistError> {
        let env_error = |var: &str, value: &str, reason: &str| DistError::Env {
            var: var.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let host = lookup(env::MASTER_ADDR)
            .filter(|h| !h.trim().is_empty())
            .ok_or_else(|| {
                env_error(
                    env::MASTER_ADDR,
                    "",
                    "is not set; the NCCL rendezvous needs rank 0's address",
                )
            })?;
        let port_text = lookup(env::MASTER_PORT).unwrap_or_default();
        let port = port_text
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| env_error(env::MASTER_PORT, &port_text, "expected a TCP port in 1..=65535"))?;
        let timeout = match lookup(env::RENDEZVOUS_TIMEOUT_S) {
            None => DEFAULT_TIMEOUT,
            Some(text) => text
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    env_error(
                        env::RENDEZVOUS_TIMEOUT_S,
                        &text,
                        "expected a positive number of seconds",
                    )
                })?,
        };
        let relay = match lookup(env::RENDEZVOUS).filter(|a| !a.trim().is_empty()) {
            None => None,
            Some(addr) => {
                let token = lookup(env::RUN_TOKEN).filter(|t| !t.trim().is_empty()).ok_or_else(|| {
                    env_error(
                        env::RUN_TOKEN,
                        "",
                        &format!(
                            "is not set, but {} is (both come from ferroclip launch --nnodes)",
                            env::RENDEZVOUS
                        ),
                    )
                })?;
                Some(Relay {
                    addr: addr.trim().to_string(),
                    token: token.trim().to_string(),
                })
            }
        };
        let secret = JobSecret::from_lookup(lookup)
            .map_err(|e| env_error(env::JOB_SECRET, "", &e.to_string()))?
            .ok_or_else(|| {
                env_error(
                    env::JOB_SECRET,
                    "",
                    &format!(
                        "is not set (nor {}): the rendezvous admits only ranks that prove the job's \
                         secret; start the workers with `ferroclip launch` (which sets it), or give every \
                         rank the same secret (`ferroclip secret FILE`, then {}=FILE)",
                        env::JOB_SECRET_FILE,
                        env::JOB_SECRET_FILE
                    ),
                )
            })?;
        Ok(Rendezvous {
            host: host.trim().to_string(),
            port,
            timeout,
            relay,
            secret,
        })
    }

    /// [`Rendezvous::from_lookup`] over the process environment.
    pub fn from_env() -> Result<Rendezvous, DistError> {
        Rendezvous::from_lookup(&|name| std::env::var(name).ok())
    }

    /// Rank 0 passes `Some(payload)` and gets it back; the other ranks pass
    /// `None` and get rank 0's payload. Rank 0 listens at `host:port` (the first of
    /// `MASTER_ADDR`'s addresses it can bind: an address of its own host); the others
    /// connect there.
    pub fn broadcast_from_rank0(
        &self,
        rank: usize,
        world_size: usize,
        payload: Option<&[u8]>,
    ) -> Result<Vec<u8>, DistError> {
        let deadline = Instant::now() + self.timeout;
        if let Some(relay) = &self.relay {
            return match (rank, payload) {
                (0, Some(payload)) => {
                    relay::request(relay, &self.secret, "publish", Some(payload), deadline)?;
                    Ok(payload.to_vec())
                }
                (0, None) => Err(rendezvous_error("rank 0 must provide the payload".into())),
                (_, Some(_)) => Err(rendezvous_error(format!(
                    "rank {rank} must not provide a payload; rank 0 does"
                ))),
                (_, None) => relay::request(relay, &self.secret, "fetch", None, deadline),
            };
        }
        match (rank, payload) {
            (0, Some(payload)) => {
                let listener = self.listen()?;
                serve(&listener, world_size, payload, &self.secret, deadline)?;
                Ok(payload.to_vec())
            }
            (0, None) => Err(rendezvous_error("rank 0 must provide the payload".into())),
            (_, Some(_)) => Err(rendezvous_error(format!(
                "rank {rank} must not provide a payload; rank 0 does"
            ))),
            (_, None) => fetch(&self.addresses()?, rank, world_size, &self.secret, deadline),
        }
    }

    /// `MASTER_ADDR:MASTER_PORT` resolved.
    fn addresses(&self) -> Result<Vec<SocketAddr>, DistError> {
        Ok((self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| rendezvous_error(format!("cannot resolve MASTER_ADDR {:?}: {e}", self.host)))?
            .collect())
    }

    /// Rank 0's listener at the first of `MASTER_ADDR`'s addresses this host can bind.
    fn listen(&self) -> Result<TcpListener, DistError> {
        let mut last = String::from("it resolves to no address");
        for addr in self.addresses()? {
            match TcpListener::bind(addr) {
                Ok(listener) => return Ok(listener),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(rendezvous_error(format!(
            "rank 0 cannot listen at MASTER_ADDR {:?} port {} ({last}); MASTER_ADDR must be an address of rank 0's host",
            self.host, self.port
        )))
    }
}

#[cfg(test)]
mod tests;
