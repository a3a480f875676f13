//! The workers' own TCP rendezvous, without a multi-node launcher: rank 0 listens at
//! `MASTER_ADDR:MASTER_PORT` and greets every connection with a challenge
//! ([`encode_challenge`]: [`CHALLENGE_MAGIC`] and its nonce). The rank answers with its
//! hello ([`encode_hello`]: [`HELLO_MAGIC`], its rank and the world size, u32 big-endian
//! each), its own nonce and its proof over both nonces and the hello ([`crate::auth`]):
//! [`AUTH_HELLO_LEN`] bytes in all. Once every rank has said hello, rank 0 answers each
//! with one payload frame ([`encode_payload`]: the length as u32 big-endian, then the
//! bytes) followed by its own proof over the nonces and the payload.

/// Sent first by every connecting rank, so a stray connection is told apart.
pub const HELLO_MAGIC: &[u8; 8] = b"FCRDV\x00\x00\x01";
/// Bytes of a hello: the magic, the rank and the world size.
pub const HELLO_LEN: usize = 16;
/// Sent first by rank 0 on every connection, before its nonce.
pub const CHALLENGE_MAGIC: &[u8; 8] = b"FCRDV\x00\x01\x00";
/// Bytes of a challenge: the magic and rank 0's nonce.
pub const CHALLENGE_LEN: usize = 8 + crate::auth::NONCE_BYTES;
/// Bytes of an authenticated hello: the hello, the rank's nonce and its proof.
pub const AUTH_HELLO_LEN: usize = HELLO_LEN + crate::auth::NONCE_BYTES + crate::auth::MAC_BYTES;
/// Bytes of a payload frame's length prefix.
pub const PAYLOAD_LEN_BYTES: usize = 4;
/// The longest payload accepted (a guard against a garbled length).
pub const MAX_PAYLOAD: usize = 1 << 20;

/// The hello of `rank` in a world of `world` ranks.
pub fn encode_hello(rank: u32, world: u32) -> Vec<u8> {
    let mut hello = Vec::with_capacity(HELLO_LEN);
    hello.extend_from_slice(HELLO_MAGIC);
    hello.extend_from_slice(&rank.to_be_bytes());
    hello.extend_from_slice(&world.to_be_bytes());
    hello
}

/// `Some((rank, world))` for a well-formed hello, `None` for anything else.
pub fn decode_hello(hello: &[u8; HELLO_LEN]) -> Option<(u32, u32)> {
    if &hello[..8] != HELLO_MAGIC {
        return None;
    }
    let rank = u32::from_be_bytes([hello[8], hello[9], hello[10], hello[11]]);
    let world = u32::from_be_bytes([hello[12], hello[13], hello[14], hello[15]]);
    Some((rank, world))
}

/// Rank 0's greeting: [`CHALLENGE_MAGIC`] then its nonce.
pub fn encode_challenge(nonce: &[u8; crate::auth::NONCE_BYTES]) -> Vec<u8> {
    let mut challenge = Vec::with_capacity(CHALLENGE_LEN);
    challenge.extend_from_slice(CHALLENGE_MAGIC);
    challenge.extend_from_slice(nonce);
    challenge
}

/// The nonce of a well-formed challenge, `None` for anything else.
pub fn decode_challenge(challenge: &[u8; CHALLENGE_LEN]) -> Option<[u8; crate::auth::NONCE_BYTES]> {
    if &challenge[..8] != CHALLENGE_MAGIC {
        return None;
    }
    challenge[8..].try_into().ok()
}

/// Rank 0's answer: the payload's length (u32 big-endian), then the payload.
/// The caller checks `payload.len() <= MAX_PAYLOAD` first.
pub fn encode_payload(payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(PAYLOAD_LEN_BYTES + payload.len());
    message.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    message.extend_from_slice(payload);
    message
}

/// The payload length announced by a frame's prefix.
pub fn decode_payload_len(prefix: [u8; PAYLOAD_LEN_BYTES]) -> usize {
    u32::from_be_bytes(prefix) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_and_payload_frames_round_trip() {
        let hello = encode_hello(3, 8);
        assert_eq!(hello, b"FCRDV\x00\x00\x01\x00\x00\x00\x03\x00\x00\x00\x08");
        let fixed: [u8; HELLO_LEN] = hello.as_slice().try_into().unwrap();
        assert_eq!(decode_hello(&fixed), Some((3, 8)));
        assert_eq!(decode_hello(b"GET / HTTP/1.0\r\n"), None);
        let frame = encode_payload(b"id");
        assert_eq!(frame, b"\x00\x00\x00\x02id");
        assert_eq!(decode_payload_len([0, 0, 1, 0]), 256);
        let nonce = [7u8; crate::auth::NONCE_BYTES];
        let challenge: [u8; CHALLENGE_LEN] = encode_challenge(&nonce).try_into().unwrap();
        assert_eq!(decode_challenge(&challenge), Some(nonce));
        let mut hello_instead = challenge;
        hello_instead[..8].copy_from_slice(HELLO_MAGIC);
        assert_eq!(decode_challenge(&hello_instead), None);
    }
}
