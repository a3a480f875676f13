//! The fuzzing harness of the rendezvous wire formats, shared by the cargo-fuzz target
//! (`fuzz/fuzz_targets/rendezvous_message.rs`, nightly) and the seeded stable-Rust test
//! (`tests/fuzz_messages.rs`, run in CI), so both exercise exactly the same code.
//!
//! Arbitrary bytes are read as everything a rendezvous peer may send before or after
//! authenticating: a JSON message line ([`Message::from_line`]), a hello and a challenge
//! frame, a secret in hex. Nothing may panic; a message that parses must survive both of
//! its line forms unchanged, and a secret its hex form.
use crate::auth::{JobSecret, NONCE_BYTES};
use crate::hello::{decode_challenge, decode_hello, encode_challenge, encode_hello, CHALLENGE_LEN, HELLO_LEN};
use crate::Message;

/// What one run saw, so a test can check that its inputs reach the deeper paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reached {
    /// The bytes parsed as a message.
    pub message: bool,
    /// The first bytes were a well-formed hello.
    pub hello: bool,
    /// The first bytes were a well-formed challenge.
    pub challenge: bool,
    /// The bytes were a secret in hex.
    pub secret: bool,
}

/// Runs every parser on `data`; panics only on a bug (a round trip that changes a value).
pub fn rendezvous_message_harness(data: &[u8]) -> Reached {
    let mut reached = Reached::default();
    if let Ok(message) = Message::from_line(data) {
        reached.message = true;
        let line = message.to_line().expect("a parsed message serialises");
        assert_eq!(Message::from_line(&line).expect("its own line parses"), message);
        let request = message.to_request_line().expect("a parsed message serialises");
        assert_eq!(
            Message::from_line(request.as_bytes()).expect("its request line parses"),
            message
        );
    }
    if let Some(hello) = data.get(..HELLO_LEN) {
        if let Some((rank, world)) = decode_hello(hello.try_into().expect("HELLO_LEN bytes")) {
            reached.hello = true;
            assert_eq!(encode_hello(rank, world), hello);
        }
    }
    if let Some(challenge) = data.get(..CHALLENGE_LEN) {
        if let Some(nonce) = decode_challenge(challenge.try_into().expect("CHALLENGE_LEN bytes")) {
            reached.challenge = true;
            assert_eq!(nonce.len(), NONCE_BYTES);
            assert_eq!(encode_challenge(&nonce), challenge);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(secret) = JobSecret::from_hex(text, "fuzz") {
            reached.secret = true;
            assert_eq!(
                JobSecret::from_hex(&secret.to_hex(), "fuzz").expect("its own hex"),
                secret
            );
        }
    }
    reached
}
