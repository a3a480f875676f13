//! What `ferroclip launch` and its workers agree on, defined once: the environment
//! variables the launcher sets and the workers read ([`env`]), and the rendezvous wire
//! protocol ([`message`]: the launchers' JSON lines and the workers' relay requests;
//! [`hello`]: the workers' own rank-0 TCP exchange; [`auth`]: the job secret and the
//! challenge–response that opens every connection of both). See docs/architecture.md §10.
//!
//! The launcher (which owns the async, tokio side of the connections) and the trainer
//! (which speaks the worker half, blocking) both depend on this crate; it depends on
//! nothing of ours, so the one-way crate graph stays one way.
//!
//! ```
//! use protocol::{env, Message, NCCL_ID_KEY};
//! // What a worker sends the launcher's relay to fetch rank 0's NCCL id ...
//! let request = Message::Fetch { token: "run-token".into(), key: NCCL_ID_KEY.into() };
//! let line = request.to_request_line()?;
//! assert_eq!(line, "{\"key\":\"nccl_unique_id\",\"token\":\"run-token\",\"type\":\"fetch\"}\n");
//! // ... and how the launcher reads it back.
//! assert_eq!(Message::from_line(line.as_bytes())?, request);
//! // The relay's address reaches the worker in this variable:
//! assert_eq!(env::RENDEZVOUS, "FERROCLIP_RENDEZVOUS");
//! # Ok::<(), serde_json::Error>(())
//! ```
#![deny(missing_docs)]

pub mod auth;
pub mod env;
pub mod fuzz_harness;
pub mod hello;
pub mod message;

pub use auth::{AuthError, JobSecret};
pub use message::{from_hex, to_hex, Message, NodeInfo, MAX_AUTH_LINE, MAX_LINE, NCCL_ID_KEY, VERSION};
