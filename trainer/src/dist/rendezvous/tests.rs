use super::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use protocol::{from_hex, to_hex, Message};

fn secret() -> JobSecret {
    JobSecret::from_hex(&"ab".repeat(32), "test").unwrap()
}

fn local_listener() -> (TcpListener, Vec<SocketAddr>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    (listener, vec![addr])
}

#[test]
fn every_rank_gets_rank0s_payload() {
    let (listener, addrs) = local_listener();
    let payload: Vec<u8> = (0..128u32).map(|i| (i * 7 % 251) as u8).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let clients: Vec<_> = (1..4)
        .map(|rank| {
            let addrs = addrs.clone();
            std::thread::spawn(move || fetch(&addrs, rank, 4, &secret(), deadline))
        })
        .collect();
    let report = serve(&listener, 4, &payload, &secret(), deadline).expect("serve");
    assert_eq!(report.rejected, vec![]);
    for client in clients {
        let got = client.join().expect("client thread").expect("fetch");
        assert_eq!(got, payload);
    }
}

/// A rendezvous of this job on 127.0.0.1 at a port that was free a moment ago.
fn on_a_free_loopback_port(timeout: Duration) -> Rendezvous {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    Rendezvous {
        host: "127.0.0.1".into(),
        port,
        timeout,
        relay: None,
        secret: secret(),
    }
}

#[test]
fn client_started_before_rank0_retries() {
    // A port that was free, the client trying first, then rank 0 listening on it.
    let rdv = on_a_free_loopback_port(Duration::from_secs(20));
    let client = {
        let rdv = rdv.clone();
        std::thread::spawn(move || rdv.broadcast_from_rank0(1, 2, None))
    };
    std::thread::sleep(Duration::from_millis(300));
    let id = [42u8; 128];
    assert_eq!(rdv.broadcast_from_rank0(0, 2, Some(&id)).expect("rank 0"), id.to_vec());
    assert_eq!(client.join().expect("thread").expect("rank 1"), id.to_vec());
}

#[test]
fn a_rank_that_never_arrives_times_out_on_every_side() {
    let (listener, addrs) = local_listener();
    let deadline = Instant::now() + Duration::from_millis(800);
    // World of 3: rank 1 comes, rank 2 never does.
    let client = std::thread::spawn(move || fetch(&addrs, 1, 3, &secret(), deadline));
    let err = serve(&listener, 3, &[1, 2, 3], &secret(), deadline).expect_err("rank 2 is missing");
    assert!(err.to_string().contains("rank(s) 2 of 3"), "{err}");
    drop(listener);
    let err = client.join().expect("thread").expect_err("rank 1 gets nothing");
    assert!(err.to_string().contains("rank 1"), "{err}");
}

#[test]
fn nobody_listening_times_out() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let started = Instant::now();
    let err = fetch(&[port], 1, 2, &secret(), Instant::now() + Duration::from_millis(300)).expect_err("no rank 0");
    assert!(err.to_string().contains("timed out connecting"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn stray_connections_are_ignored_and_bad_worlds_rejected() {
    let (listener, addrs) = local_listener();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Two strays before the rank: a short HTTP request, and a hello-sized line of garbage.
    // Both stay open (only their sending side is shut) so that rank 0 reads what they sent.
    let strays: Vec<TcpStream> = [b"GET / HTTP/1.0\r\n\r\n".to_vec(), vec![b'x'; 80]]
        .iter()
        .map(|bytes| {
            let mut s = TcpStream::connect(addrs[0]).expect("connect");
            s.write_all(bytes).expect("write");
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            s
        })
        .collect();
    // Their handshakes end at once (end of stream, a wrong magic); give rank 0 a moment to
    // see both before the rank completes the world.
    let seen_by = Instant::now() + Duration::from_millis(300);
    let serving = std::thread::spawn(move || {
        let report = serve(&listener, 2, b"id", &secret(), deadline);
        (listener, report)
    });
    std::thread::sleep(seen_by.saturating_duration_since(Instant::now()));
    let client = {
        let addrs = addrs.clone();
        std::thread::spawn(move || fetch(&addrs, 1, 2, &secret(), deadline))
    };
    let (_listener, report) = serving.join().expect("rank 0");
    let report = report.expect("serve despite the strays");
    let mut reasons: Vec<&str> = report.rejected.iter().map(|r| r.reason.as_str()).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        ["closed before answering the challenge", "not a ferroclip hello"]
    );
    drop(strays);
    assert_eq!(client.join().expect("thread").expect("fetch"), b"id".to_vec());

    let (listener, addrs) = local_listener();
    let client = std::thread::spawn(move || fetch(&addrs, 1, 3, &secret(), deadline));
    let err = serve(&listener, 2, b"id", &secret(), deadline).expect_err("world mismatch");
    assert!(err.to_string().contains("world size is 3"), "{err}");
    drop(listener);
    assert!(client.join().expect("thread").is_err());
}

/// A stand-in for the launcher's relay: the handshake over [`secret`], then each
/// connection's one JSON request by the launcher's rules (publish stores, fetch returns),
/// checking the token.
fn fake_relay(token: &'static str, connections: usize) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = std::thread::spawn(move || {
        let mut stored: Option<String> = None;
        let mut waiting = Vec::new();
        let mut requests = Vec::new();
        for _ in 0..connections {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let server_nonce = protocol::auth::nonce().unwrap();
            let challenge = Message::Challenge {
                nonce_hex: to_hex(&server_nonce),
            };
            stream.write_all(&challenge.to_line().unwrap()).expect("challenge");
            let mut line = String::new();
            reader.read_line(&mut line).expect("read the proof");
            let Ok(Message::Auth { nonce_hex, mac_hex }) = Message::from_line(line.as_bytes()) else {
                panic!("expected auth, got {line:?}");
            };
            let client_nonce = from_hex(&nonce_hex).unwrap();
            if !secret().check_client_proof(&server_nonce, &client_nonce, b"", &from_hex(&mac_hex).unwrap()) {
                continue; // refused: closed without an answer, as the launcher does
            }
            let proof = secret().server_proof(&server_nonce, &client_nonce, b"");
            let authenticated = Message::Authenticated {
                mac_hex: to_hex(&proof),
            };
            stream
                .write_all(&authenticated.to_line().unwrap())
                .expect("authenticated");
            line.clear();
            reader.read_line(&mut line).expect("read");
            requests.push(line.trim_end().to_string());
            let request: serde_json::Value = serde_json::from_str(&line).expect("json");
            if request["token"] != token {
                let _ = stream.write_all(b"{\"type\":\"error\",\"reason\":\"run token mismatch\"}\n");
                continue;
            }
            // The publisher is answered with an echo of its value, as the launcher does.
            if request["type"] == "publish" {
                stored = request["value_hex"].as_str().map(String::from);
            }
            waiting.push(stream);
            if let Some(hex) = &stored {
                let answer = format!("{{\"type\":\"value\",\"key\":\"{RELAY_KEY}\",\"value_hex\":\"{hex}\"}}\n");
                for mut s in waiting.drain(..) {
                    s.write_all(answer.as_bytes()).expect("answer");
                }
            }
        }
        requests
    });
    (addr, server)
}

#[test]
fn under_a_multi_node_launcher_the_payload_goes_through_its_relay() {
    let (addr, server) = fake_relay("tok", 3);
    let env = |rank: &str| {
        let vars: HashMap<String, String> = [
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "1"),
            ("FERROCLIP_RENDEZVOUS", addr.as_str()),
            ("FERROCLIP_RUN_TOKEN", "tok"),
            ("FERROCLIP_JOB_SECRET", &"ab".repeat(32)),
            ("RANK", rank),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Rendezvous::from_lookup(&|name| vars.get(name).cloned()).expect("env")
    };
    let rdv = env("1");
    assert_eq!(rdv.relay.as_ref().map(|r| r.token.as_str()), Some("tok"));
    // Ranks 1 and 2 ask before rank 0 publishes.
    let fetchers: Vec<_> = (1..3)
        .map(|rank| {
            let rdv = rdv.clone();
            std::thread::spawn(move || rdv.broadcast_from_rank0(rank, 3, None))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let id = [0u8, 1, 0xfe, 0xff];
    assert_eq!(
        env("0").broadcast_from_rank0(0, 3, Some(&id)).expect("publish"),
        id.to_vec()
    );
    for fetcher in fetchers {
        assert_eq!(fetcher.join().expect("thread").expect("fetch"), id.to_vec());
    }
    let requests = server.join().expect("server");
    assert!(
        requests
            .contains(&r#"{"key":"nccl_unique_id","token":"tok","type":"publish","value_hex":"0001feff"}"#.to_string()),
        "{requests:?}"
    );

    let (addr, _server) = fake_relay("tok", 1);
    let stale = Rendezvous {
        relay: Some(Relay {
            addr,
            token: "old".into(),
        }),
        ..rdv
    };
    let err = stale.clone().broadcast_from_rank0(1, 3, None).expect_err("stale token");
    assert!(err.to_string().contains("run token mismatch"), "{err}");

    // A worker with another job's secret is refused before it can ask for anything.
    let (addr, server) = fake_relay("tok", 1);
    let stranger = Rendezvous {
        relay: Some(Relay {
            addr,
            token: "tok".into(),
        }),
        secret: JobSecret::from_hex(&"cd".repeat(32), "test").unwrap(),
        ..stale
    };
    let err = stranger.broadcast_from_rank0(1, 3, None).expect_err("wrong secret");
    assert!(
        err.to_string().contains("closed the connection after our proof"),
        "{err}"
    );
    assert_eq!(
        server.join().expect("server"),
        Vec::<String>::new(),
        "a request got past the handshake"
    );

    let missing_token = Rendezvous::from_lookup(&|name| match name {
        "MASTER_ADDR" => Some("h".into()),
        "MASTER_PORT" => Some("1".into()),
        "FERROCLIP_RENDEZVOUS" => Some("h:1".into()),
        "FERROCLIP_JOB_SECRET" => Some("ab".repeat(32)),
        _ => None,
    });
    assert!(
        matches!(missing_token, Err(DistError::Env { ref var, .. }) if var == "FERROCLIP_RUN_TOKEN"),
        "{missing_token:?}"
    );
}

#[test]
fn environment_is_validated() {
    let env = |vars: &[(&str, &str)]| {
        let mut map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        map.entry("FERROCLIP_JOB_SECRET".into())
            .or_insert_with(|| "ab".repeat(32));
        Rendezvous::from_lookup(&|name| map.get(name).cloned())
    };
    let rdv = env(&[("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29500")]).expect("valid");
    assert_eq!(
        (rdv.host.as_str(), rdv.port, rdv.timeout),
        ("10.0.0.1", 29500, DEFAULT_TIMEOUT)
    );
    let rdv = env(&[
        ("MASTER_ADDR", "h"),
        ("MASTER_PORT", "1"),
        ("FERROCLIP_RENDEZVOUS_TIMEOUT_S", "2.5"),
    ])
    .expect("timeout");
    assert_eq!(rdv.timeout, Duration::from_millis(2500));
    for (vars, bad) in [
        (vec![("MASTER_PORT", "1")], "MASTER_ADDR"),
        (vec![("MASTER_ADDR", "h")], "MASTER_PORT"),
        (vec![("MASTER_ADDR", "h"), ("MASTER_PORT", "70000")], "MASTER_PORT"),
        (vec![("MASTER_ADDR", "h"), ("MASTER_PORT", "0")], "MASTER_PORT"),
        (
            vec![
                ("MASTER_ADDR", "h"),
                ("MASTER_PORT", "1"),
                ("FERROCLIP_RENDEZVOUS_TIMEOUT_S", "-1"),
            ],
            "FERROCLIP_RENDEZVOUS_TIMEOUT_S",
        ),
        (
            vec![("MASTER_ADDR", "h"), ("MASTER_PORT", "1"), ("FERROCLIP_JOB_SECRET", "")],
            "FERROCLIP_JOB_SECRET",
        ),
        (
            vec![
                ("MASTER_ADDR", "h"),
                ("MASTER_PORT", "1"),
                ("FERROCLIP_JOB_SECRET", "0011"),
            ],
            "FERROCLIP_JOB_SECRET",
        ),
    ] {
        match env(&vars) {
            Err(DistError::Env { var, .. }) => assert_eq!(var, bad),
            other => panic!("{vars:?}: expected an error naming {bad}, got {other:?}"),
        }
    }
}

#[test]
fn ranks_with_another_secret_are_refused_and_named_at_the_deadline() {
    let (listener, addrs) = local_listener();
    let deadline = Instant::now() + Duration::from_millis(1500);
    let stranger = JobSecret::from_hex(&"cd".repeat(32), "test").unwrap();
    let client = std::thread::spawn(move || fetch(&addrs, 1, 2, &stranger, deadline));
    let err = serve(&listener, 2, b"id", &secret(), deadline).expect_err("rank 1 never proves the secret");
    let text = err.to_string();
    assert!(
        text.contains("rank(s) 1 of 2") && text.contains("refused 1 connection(s)") && text.contains("wrong proof"),
        "{text}"
    );
    drop(listener);
    let err = client.join().expect("thread").expect_err("no payload for a stranger");
    assert!(err.to_string().contains("FERROCLIP_JOB_SECRET"), "{err}");
}

#[test]
fn rank0_listens_only_at_master_addr() {
    let rdv = on_a_free_loopback_port(Duration::from_secs(5));
    let listener = rdv.listen().expect("listen");
    assert_eq!(listener.local_addr().unwrap().ip().to_string(), "127.0.0.1");
    drop(listener);
    // An address that is not this host's: refused with MASTER_ADDR named.
    let elsewhere = Rendezvous {
        host: "192.0.2.1".into(),
        ..rdv
    };
    let err = elsewhere.listen().expect_err("not an address of this host");
    assert!(err.to_string().contains("MASTER_ADDR \"192.0.2.1\""), "{err}");
}
