//! Open MPI specifics: the `mpirun` command line, splitting its `--tag-output`
//! stream back into ranks, and reading which rank failed from its messages.
//!
//! With `--tag-output`, Open MPI 4.1 prefixes every line with `[JOB,RANK]<stdout>:`
//! (or `<stderr>:`) and sends it to mpirun's stdout (stderr). A worker's line that
//! lacks a trailing newline is not terminated: the next tag follows on the same
//! line, so tags are searched anywhere in a line, not only at its start.
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use protocol::env;

/// The `mpirun` invocation for `nproc` local ranks of `program args…`, with the
/// variables in `exports` set for every rank (`-x NAME`: mpirun forwards them
/// from its own environment, which also reaches ranks on other hosts), and
/// `placement` (hostfile, rsh agent, networks: [`crate::hosts::MpiHosts`]) before `-np`.
pub(crate) fn command(
    mpirun: &Path,
    nproc: usize,
    program: &Path,
    args: &[OsString],
    exports: &[(&str, OsString)],
    placement: &[OsString],
) -> Command {
    let mut cmd = Command::new(mpirun);
    cmd.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "--bind-to",
        "none",
        "--tag-output",
    ]);
    for (name, value) in exports {
        cmd.arg("-x").arg(name).env(name, value);
    }
    cmd.args(placement);
    cmd.arg("-np").arg(nproc.to_string()).arg(program).args(args);
    // Stale torchrun-style variables would take precedence over OMPI_COMM_WORLD_*
    // in the worker's rank discovery.
    for var in [env::RANK, env::WORLD_SIZE, env::LOCAL_RANK, env::LOCAL_WORLD_SIZE] {
        cmd.env_remove(var);
    }
    cmd
}

/// Splits one line of mpirun output into (rank, text) segments; text before the
/// first tag (mpirun's own messages) has no rank.
pub(crate) fn split_tagged(line: &[u8]) -> Vec<(Option<usize>, &[u8])> {
    let mut segments = Vec::new();
    let mut current: Option<usize> = None;
    let mut start = 0;
    let mut i = 0;
    while i < line.len() {
        if let Some((rank, end)) = parse_tag(line, i) {
            if i > start || current.is_some() {
                segments.push((current, &line[start..i]));
            }
            current = Some(rank);
            start = end;
            i = end;
        } else {
            i += 1;
        }
    }
    if start < line.len() || current.is_some() || segments.is_empty() {
        segments.push((current, &line[start..]));
    }
    segments
}

/// Parses `[digits,digits]<stdout>:` (or stderr/stddiag) at `at`; returns the
/// rank and the index after the colon.
fn parse_tag(s: &[u8], at: usize) -> Option<(usize, usize)> {
    let rest = s.get(at..)?.strip_prefix(b"[")?;
    let job_len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let rest = rest[job_len..].strip_prefix(b",").filter(|_| job_len > 0)?;
    let rank_len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let rank: usize = std::str::from_utf8(&rest[..rank_len]).ok()?.parse().ok()?;
    let rest = rest[rank_len..].strip_prefix(b"]<")?;
    let stream_len = ["stdout>:", "stderr>:", "stddiag>:"]
        .iter()
        .find(|tag| rest.starts_with(tag.as_bytes()))?
        .len();
    let consumed = (s.len() - at) - (rest.len() - stream_len);
    Some((rank, at + consumed))
}

/// What mpirun's messages say about the first failing rank.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Culprit {
    /// `Process name: [[J,1],R]` … `Exit code: C`.
    Exited { rank: usize, code: i32 },
    /// `process rank R with PID P on node H exited on signal S`.
    Signaled { rank: usize, signal: i32 },
}

/// Finds the failing rank in mpirun's (untagged) stderr lines.
pub(crate) fn culprit(lines: &[String]) -> Option<Culprit> {
    let mut rank_from_name = None;
    for line in lines {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Process name:") {
            // "[[9438,1],1]" → the number after the last comma.
            rank_from_name = rest
                .trim()
                .trim_end_matches(']')
                .rsplit(',')
                .next()
                .and_then(|r| r.parse().ok());
        } else if let Some(code) = line.strip_prefix("Exit code:") {
            if let (Some(rank), Ok(code)) = (rank_from_name, code.trim().parse()) {
                return Some(Culprit::Exited { rank, code });
            }
        } else if let Some(rest) = line.split("process rank ").nth(1) {
            let rank = rest.split_whitespace().next().and_then(|r| r.parse().ok());
            let signal = rest
                .split("exited on signal ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok());
            if let (Some(rank), Some(signal)) = (rank, signal) {
                return Some(Culprit::Signaled { rank, signal });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_are_forwarded_with_dash_x() {
        let cmd = command(
            Path::new("mpirun"),
            2,
            Path::new("w"),
            &["a".into()],
            &[("FERROCLIP_HEARTBEAT_DIR", "/hb".into())],
            &["--hostfile".into(), "/h".into()],
        );
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let x = args.iter().position(|a| a == "-x").expect("-x present");
        assert_eq!(args[x + 1], "FERROCLIP_HEARTBEAT_DIR");
        assert!(
            x < args.iter().position(|a| a == "w").unwrap(),
            "-x must precede the program: {args:?}"
        );
        let hostfile = args.iter().position(|a| a == "--hostfile").expect("placement present");
        assert!(hostfile < args.iter().position(|a| a == "-np").unwrap(), "{args:?}");
        let env: Vec<_> = cmd.get_envs().collect();
        assert!(env.contains(&(
            std::ffi::OsStr::new("FERROCLIP_HEARTBEAT_DIR"),
            Some(std::ffi::OsStr::new("/hb"))
        )));
    }

    #[test]
    fn tags_are_split_anywhere_in_a_line() {
        let line = b"[1,0]<stdout>:nonl[1,12]<stdout>:out 12";
        assert_eq!(
            split_tagged(line),
            vec![(Some(0), &b"nonl"[..]), (Some(12), &b"out 12"[..])]
        );
        assert_eq!(split_tagged(b"[1,1]<stderr>:"), vec![(Some(1), &b""[..])]);
        assert_eq!(split_tagged(b"-----"), vec![(None, &b"-----"[..])]);
        assert_eq!(split_tagged(b""), vec![(None, &b""[..])]);
        // Not a tag: the rank is missing.
        assert_eq!(split_tagged(b"[1,]<stdout>:x"), vec![(None, &b"[1,]<stdout>:x"[..])]);
    }

    #[test]
    fn culprit_is_read_from_open_mpi_4_1_messages() {
        let exited: Vec<String> = "mpirun detected that one or more processes exited with non-zero status, thus causing\n\
            the job to be terminated. The first process to do so was:\n\n  Process name: [[9438,1],1]\n  Exit code:    3"
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(culprit(&exited), Some(Culprit::Exited { rank: 1, code: 3 }));
        let signaled =
            vec!["mpirun noticed that process rank 0 with PID 0 on node vm exited on signal 9 (Killed).".to_string()];
        assert_eq!(culprit(&signaled), Some(Culprit::Signaled { rank: 0, signal: 9 }));
        assert_eq!(
            culprit(&["Primary job  terminated normally, but 1 process returned".to_string()]),
            None
        );
    }
}
