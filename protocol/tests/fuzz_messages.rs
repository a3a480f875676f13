//! The rendezvous parsers on 20,000 seeded inputs (stable Rust, in CI): noise, and valid
//! messages, hellos, challenges and secrets mutated (bit flips, truncation, splices,
//! duplicated and deleted spans). The same harness runs under libFuzzer (`fuzz/`).
use protocol::fuzz_harness::{rendezvous_message_harness, Reached};
use protocol::hello::{encode_challenge, encode_hello};
use protocol::{Message, NodeInfo};

/// xorshift64*: a seeded generator without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let messages = [
        Message::Challenge {
            nonce_hex: "ab".repeat(32),
        },
        Message::Auth {
            nonce_hex: "cd".repeat(32),
            mac_hex: "ef".repeat(32),
        },
        Message::Authenticated {
            mac_hex: "01".repeat(32),
        },
        Message::Register {
            version: 1,
            node_rank: 1,
            nnodes: 2,
            nproc: 8,
            addr: "10.0.0.2".into(),
        },
        Message::Heartbeat,
        Message::Barrier {
            name: "workers-start".into(),
        },
        Message::Done {
            ok: false,
            detail: "rank 3 exited with status 1".into(),
        },
        Message::World {
            world_size: 16,
            node_rank: 1,
            rank_start: 8,
            nproc: 8,
            run_token: "t".repeat(32),
            nodes: vec![NodeInfo {
                node_rank: 0,
                addr: "10.0.0.1".into(),
                nproc: 8,
                rank_start: 0,
            }],
        },
        Message::Publish {
            token: "t".into(),
            key: "nccl_unique_id".into(),
            value_hex: "00ff".repeat(64),
        },
        Message::Fetch {
            token: "t".into(),
            key: "nccl_unique_id".into(),
        },
        Message::Error {
            reason: "refused".into(),
        },
    ];
    let mut seeds: Vec<Vec<u8>> = messages.iter().map(|m| m.to_line().unwrap()).collect();
    seeds.push(encode_hello(3, 8));
    seeds.push(encode_challenge(&[7; 32]));
    seeds.push("5e".repeat(32).into_bytes());
    seeds
}

fn mutate(rng: &mut Rng, input: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        match rng.below(6) {
            0 if len > 0 => {
                let at = rng.below(len);
                out[at] ^= 1 << rng.below(8);
            }
            1 => out.truncate(rng.below(len + 1)),
            2 if len > 0 => {
                let (a, b) = (rng.below(len), rng.below(len));
                let span = out[a.min(b)..a.max(b)].to_vec();
                let at = rng.below(out.len() + 1);
                out.splice(at..at, span);
            }
            3 if len > 0 => {
                let (a, b) = (rng.below(len), rng.below(len));
                out.drain(a.min(b)..a.max(b));
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(other.len() + 1);
                let at = rng.below(out.len() + 1);
                out.splice(at..at, other[..cut].iter().copied());
            }
            _ => {
                let at = rng.below(len + 1);
                out.insert(at, b"{}\":,[]0123456789abcdef\\\n"[rng.below(25)]);
            }
        }
    }
    out
}

#[test]
fn rendezvous_parsers_survive_seeded_mutations() {
    let seeds = seeds();
    let mut rng = Rng(0x5eed_f00d);
    let mut seen = Reached::default();
    let mut parsed = 0;
    for i in 0..20_000 {
        let input = match i % 10 {
            0 => (0..rng.below(200)).map(|_| rng.next() as u8).collect(),
            _ => {
                let pick = rng.below(seeds.len());
                mutate(&mut rng, &seeds[pick], &seeds)
            }
        };
        let reached = rendezvous_message_harness(&input);
        parsed += usize::from(reached.message);
        seen.message |= reached.message;
        seen.hello |= reached.hello;
        seen.challenge |= reached.challenge;
        seen.secret |= reached.secret;
    }
    // The inputs reach every parser's accepting path, not only its error path.
    assert!(seen.message && seen.hello && seen.challenge && seen.secret, "{seen:?}");
    assert!(parsed > 500, "only {parsed} mutated inputs parsed as messages");
}
