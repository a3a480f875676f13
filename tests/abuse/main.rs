//! The fault-and-abuse suite: each hostile input or fault, what must happen, and the figure
//! measured. Every test prints its row (`cargo test --test abuse -- --nocapture`); the table
//! with the figures of a run is in docs/security.md.
//!
//! | id | hostile input or fault | what must happen |
//! |----|------------------------|------------------|
//! | R1 | workers' rank 0: a client with another job's secret | refused and logged with its address; the real ranks form the world |
//! | R2 | … a valid answer recorded on one connection, replayed on another | refused (the nonce differs) |
//! | R3 | … 48 silent connections held open while the ranks arrive | the ranks are admitted at once; nothing waits on the silent ones |
//! | R4 | … garbage: an HTTP request, 1 MiB of noise, a hello without a proof | each refused; the world forms |
//! | R5 | … a flood past the limit of handshakes in progress (64) | connections beyond it turned away; a rank retries and gets in once the flood stops |
//! | L1 | launchers' rendezvous: a node with another job's secret | refused, listed with its address; the other nodes' world forms |
//! | L2 | … before authenticating: a 2 MiB line, JSON garbage, a `register` | each refused after at most 1 KiB |
//! | L3 | … 100 silent connections | the world forms at once |
//! | L4 | … relay: a worker with another secret; overwriting the published NCCL id | refused; the id is unchanged |
//! | L5 | … a flood past the limit of handshakes in progress (256) | the same as R5 for a node |
//! | D1 | a `.tar.zst` shard whose member inflates to 4 GiB | skipped as `oversized_member`, the next sample read, peak RSS bounded |
//! | D2 | a PNG claiming 100000 × 100000 px; a JPEG claiming 65000 × 65000 | skipped as `image_too_large` before decoding |
//! | D3 | JPEGs cut at 25–90 % or missing their end marker | every one skipped as `undecodable_image` (as PIL refuses them) |
//! | D4 | a shard cut mid-member; a shard of random bytes; a missing shard | counted, the other shards read in full |
//! | C1 | the newest checkpoint with a truncated file | skipped with a warning naming the file; the run resumes from the one before |
//! | C2 | the newest checkpoint with a file swapped in from another step | the same (its SHA-256 differs) |
//! | C3 | `state.json` naming `../../etc/passwd`; `latest` naming `../..`; a 100 MB `state.json` | refused; nothing outside the folder is read |
//! | K1 | a config with batch 10^12, 2^62, steps 10^18 | a clear error naming the field or a normal run; no panic, no allocation storm |
#[path = "../common/mod.rs"]
#[allow(dead_code)]
mod common;

mod checkpoints;
mod config;
mod data;
mod launchers;
mod rank0;

use std::process::{Command, Output, Stdio};
use std::time::Instant;

/// Prints one row of the table.
pub fn row(id: &str, case: &str, measured: &str) {
    eprintln!("| {id} | {case} | {measured} |");
}

/// What a finished child process left: its output, peak resident memory and wall time.
pub struct Measured {
    pub output: Output,
    pub peak_rss_mib: f64,
    pub seconds: f64,
}

/// Runs `cmd` to the end, measuring the peak RSS of that one child (`wait4`), which other
/// tests' children running at the same time do not disturb.
pub fn run_measured(mut cmd: Command) -> Measured {
    use std::io::Read;
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the child");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let stdout = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        out.read_to_end(&mut bytes).map(|_| bytes)
    });
    let stderr = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        err.read_to_end(&mut bytes).map(|_| bytes)
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing into the two locals above.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4");
    let seconds = started.elapsed().as_secs_f64();
    use std::os::unix::process::ExitStatusExt;
    let output = Output {
        status: std::process::ExitStatus::from_raw(status),
        stdout: stdout.join().unwrap().unwrap(),
        stderr: stderr.join().unwrap().unwrap(),
    };
    // The child is reaped; `Child`'s drop does not wait.
    drop(child);
    Measured {
        output,
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
        seconds,
    }
}

/// The `ferroclip` binary under test.
pub fn ferroclip() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroclip"));
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// Raises this process's soft limit of open files to its hard limit: the flood tests hold
/// hundreds of connections, both ends of each in this process, beside the other tests.
pub fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct; no other preconditions.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
