//! One shard opened as a stream of uncompressed tar bytes, whatever it is stored as:
//! a plain `.tar`, a `.tar.gz`/`.tgz`, a `.tar.zst`, or `pipe:CMD` (the standard output of
//! `sh -c CMD`, webdataset's convention for s3/http, e.g. `pipe:curl -s URL`).
//!
//! Read errors (a corrupt gzip member or zstd frame, a pipe that fails) surface as
//! `io::Error`s from [`std::io::Read::read`] whose message names the shard, so the tar reader
//! counts them as a shard read error like any other. A pipe command runs in its own process
//! group; dropping the stream kills the group and reaps the command, so an abandoned pipe
//! leaves no process behind.
use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::read::MultiGzDecoder;

/// Prefix of a shard that is a shell command whose standard output is the tar stream.
pub const PIPE_PREFIX: &str = "pipe:";

/// How much of a pipe command's standard error is kept for error messages (the last bytes).
const STDERR_TAIL_BYTES: usize = 4096;

/// Unread bytes [`ShardStream::finish`] still reads from a pipe after the tar's end: tar
/// files end with zero padding up to a record (10 KiB by default). More than this means the
/// reader stopped early on purpose, and the command is stopped instead of drained.
const FINISH_DRAIN_LIMIT: u64 = 1 << 20;

/// How a shard is stored, decided by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardKind {
    /// An uncompressed tar file (`*.tar`, and any name not listed below).
    Tar,
    /// A gzip-compressed tar file (`*.tar.gz`, `*.tgz`), possibly of several gzip members.
    Gzip,
    /// A zstd-compressed tar file (`*.tar.zst`), possibly of several frames.
    Zstd,
    /// `pipe:CMD`: the standard output of `sh -c CMD`.
    Pipe,
}

/// The kind of `shard`, by name.
pub fn shard_kind(shard: &Path) -> ShardKind {
    let Some(name) = shard.to_str() else {
        // Not UTF-8: cannot be `pipe:` (commands come from configs, which are UTF-8) and the
        // suffix test is done on the raw file name below.
        return kind_from_file_name(shard.file_name().map(|n| n.as_encoded_bytes()));
    };
    if name.starts_with(PIPE_PREFIX) {
        return ShardKind::Pipe;
    }
    kind_from_file_name(shard.file_name().map(|n| n.as_encoded_bytes()))
}

fn kind_from_file_name(name: Option<&[u8]>) -> ShardKind {
    let Some(name) = name else {
        return ShardKind::Tar;
    };
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(b".tar.gz") || lower.ends_with(b".tgz") {
        ShardKind::Gzip
    } else if lower.ends_with(b".tar.zst") {
        ShardKind::Zstd
    } else {
        ShardKind::Tar
    }
}

/// True for the file names that are shards when a folder is expanded:
/// `*.tar`, `*.tar.gz`, `*.tgz`, `*.tar.zst`.
pub fn is_shard_file_name(name: &Path) -> bool {
    let Some(name) = name.file_name() else {
        return false;
    };
    let lower = name.as_encoded_bytes().to_ascii_lowercase();
    [&b".tar"[..], b".tar.gz", b".tgz", b".tar.zst"]
        .iter()
        .any(|suffix| lower.ends_with(suffix))
}

/// A shard that cannot be opened, or a pipe command that failed.
#[derive(Debug, thiserror::Error)]
pub enum ShardOpenError {
    /// The shard file cannot be opened (or its decompressor cannot start).
    #[error("cannot open shard {}: {source}", shard.display())]
    Open {
        /// The shard.
        shard: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// `pipe:` with nothing after it.
    #[error("shard {shard:?}: empty pipe: command")]
    EmptyCommand {
        /// The shard as named.
        shard: String,
    },
    /// `sh` could not be started for a `pipe:` shard.
    #[error("cannot start shard command `{command}`: {source}")]
    Spawn {
        /// The command (without `pipe:`).
        command: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A `pipe:` command exited with a non-zero status or was killed by a signal.
    #[error("shard command `{command}` {status}; stderr: {stderr_tail:?}")]
    CommandFailed {
        /// The command (without `pipe:`).
        command: String,
        /// How it ended (`exited with status 3`, `was killed by signal 9`).
        status: String,
        /// The end of its standard error, lossily decoded.
        stderr_tail: String,
    },
    /// Reading the rest of a stream in [`ShardStream::finish`] failed.
    #[error("reading shard {}: {source}", shard.display())]
    Read {
        /// The shard.
        shard: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Open `shard` as a stream of its uncompressed tar bytes; the kind comes from the name
/// ([`shard_kind`]). A `pipe:` command is started here.
pub fn open_shard(shard: &Path) -> Result<ShardStream, ShardOpenError> {
    let open_file = || {
        File::open(shard).map_err(|source| ShardOpenError::Open {
            shard: shard.to_path_buf(),
            source,
        })
    };
    let inner = match shard_kind(shard) {
        ShardKind::Tar => Inner::Plain(BufReader::with_capacity(1 << 16, open_file()?)),
        ShardKind::Gzip => Inner::Gzip(MultiGzDecoder::new(open_file()?)),
        ShardKind::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(open_file()?).map_err(|source| ShardOpenError::Open {
                shard: shard.to_path_buf(),
                source,
            })?;
            Inner::Zstd(decoder)
        }
        ShardKind::Pipe => {
            // shard_kind only says Pipe for UTF-8 names.
            let name = shard.to_string_lossy();
            let command = name[PIPE_PREFIX.len()..].trim();
            if command.is_empty() {
                return Err(ShardOpenError::EmptyCommand {
                    shard: name.into_owned(),
                });
            }
            Inner::Pipe(PipeCommand::spawn(command)?)
        }
    };
    Ok(ShardStream {
        shard: shard.to_path_buf(),
        inner,
    })
}

/// The uncompressed tar bytes of one shard; see [`open_shard`].
pub struct ShardStream {
    shard: PathBuf,
    inner: Inner,
}

enum Inner {
    Plain(BufReader<File>),
    Gzip(MultiGzDecoder<File>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<File>>),
    Pipe(PipeCommand),
}

impl std::fmt::Debug for ShardStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardStream")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

impl ShardStream {
    /// The shard this stream reads.
    pub fn shard(&self) -> &Path {
        &self.shard
    }

    /// Skip `n` bytes of the uncompressed stream: a seek for plain files, read-and-discard
    /// otherwise. Skipping past the end is an `UnexpectedEof` error.
    pub fn skip(&mut self, n: u64) -> io::Result<()> {
        if let Inner::Plain(reader) = &mut self.inner {
            let position = reader.stream_position()?;
            let len = reader.get_ref().metadata()?.len();
            let target = position.checked_add(n).filter(|&t| t <= len).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{}: cannot skip {n} bytes at offset {position}: the file has {len}",
                        self.shard.display()
                    ),
                )
            })?;
            reader.seek(io::SeekFrom::Start(target))?;
            return Ok(());
        }
        let skipped = io::copy(&mut self.by_ref().take(n), &mut io::sink())?;
        if skipped < n {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: stream ended after {skipped} of {n} skipped bytes",
                    self.shard.display()
                ),
            ));
        }
        Ok(())
    }

    /// Call after reading the tar (the tar reader stops at the end-of-archive blocks, before
    /// the end of the stream).
    ///
    /// For a `pipe:` shard: read what is left (tar padding), wait for the command and report
    /// a non-zero exit or a signal as [`ShardOpenError::CommandFailed`] with the tail of its
    /// standard error. If much more than padding is left (the reader stopped early on
    /// purpose), the command is stopped and that is not an error.
    ///
    /// For `.tar.gz`/`.tar.zst`: read what is left (up to 1 MiB), which checks the gzip CRC
    /// and the zstd frame checksum; a corrupt or truncated end is [`ShardOpenError::Read`].
    /// Corrupt data before it may have decompressed without error, so a loader should count
    /// this as a shard read error. Always `Ok` for plain `.tar` files.
    pub fn finish(mut self) -> Result<(), ShardOpenError> {
        let Inner::Pipe(pipe) = &mut self.inner else {
            return self.finish_file();
        };
        if pipe.outcome.is_none() {
            let mut rest = pipe.stdout.as_mut().map(|s| s.take(FINISH_DRAIN_LIMIT + 1));
            let drained = match rest.as_mut() {
                Some(rest) => io::copy(rest, &mut io::sink()),
                None => Ok(0),
            };
            match drained {
                Ok(n) if n > FINISH_DRAIN_LIMIT => {
                    // Dropping kills and reaps the command: it was not at fault.
                    return Ok(());
                }
                Ok(_) => pipe.reap(),
                Err(source) => {
                    return Err(ShardOpenError::Read {
                        shard: self.shard.clone(),
                        source,
                    })
                }
            }
        }
        match pipe.outcome.take() {
            Some(Err(failed)) => Err(failed),
            _ => Ok(()),
        }
    }
}

impl ShardStream {
    /// Read what is left of a compressed file, up to the drain limit: a gzip trailer's CRC
    /// or a zstd frame's checksum is only checked at its end, after the tar's end-of-archive
    /// blocks, and corrupt data before it may have decompressed without an error.
    fn finish_file(mut self) -> Result<(), ShardOpenError> {
        if matches!(self.inner, Inner::Plain(_)) {
            return Ok(());
        }
        match io::copy(&mut self.by_ref().take(FINISH_DRAIN_LIMIT), &mut io::sink()) {
            Ok(_) => Ok(()),
            Err(source) => Err(ShardOpenError::Read {
                shard: self.shard.clone(),
                source,
            }),
        }
    }
}

impl Read for ShardStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = match &mut self.inner {
            Inner::Plain(reader) => reader.read(buf),
            Inner::Gzip(reader) => reader.read(buf),
            Inner::Zstd(reader) => reader.read(buf),
            Inner::Pipe(pipe) => return pipe.read(buf),
        };
        result.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.shard.display())))
    }
}

/// A running `sh -c CMD` whose standard output is read.
struct PipeCommand {
    command: String,
    child: Child,
    /// `None` once the end of the output was reached or the stream is being finished.
    stdout: Option<ChildStdout>,
    /// Collects the last bytes of standard error (draining it so the command never blocks
    /// on a full stderr pipe).
    stderr_reader: Option<JoinHandle<()>>,
    stderr_tail: Arc<Mutex<Vec<u8>>>,
    /// Set once the command was reaped: `Ok` for success, the error to report otherwise.
    outcome: Option<Result<(), ShardOpenError>>,
}

impl PipeCommand {
    fn spawn(command: &str) -> Result<Self, ShardOpenError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that dropping the stream can stop a whole pipeline
            // (`curl ... | zstd -d`) and not just `sh`.
            .process_group(0)
            .spawn()
            .map_err(|source| ShardOpenError::Spawn {
                command: command.to_string(),
                source,
            })?;
        let stdout = child.stdout.take();
        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let stderr_reader = child.stderr.take().map(|mut stderr| {
            let tail = Arc::clone(&stderr_tail);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                loop {
                    match stderr.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => {
                            let Ok(mut tail) = tail.lock() else { break };
                            tail.extend_from_slice(&chunk[..n]);
                            let excess = tail.len().saturating_sub(STDERR_TAIL_BYTES);
                            tail.drain(..excess);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
            })
        });
        Ok(PipeCommand {
            command: command.to_string(),
            child,
            stdout,
            stderr_reader,
            stderr_tail,
            outcome: None,
        })
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(stdout) = self.stdout.as_mut() {
            let n = stdout
                .read(buf)
                .map_err(|e| io::Error::new(e.kind(), format!("shard command `{}`: {e}", self.command)))?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // End of output: the command is done (or closed its output). Its exit status
            // decides whether this stream ended cleanly.
            self.reap();
        }
        match &self.outcome {
            Some(Err(failed)) => Err(io::Error::other(failed.to_string())),
            _ => Ok(0),
        }
    }

    /// Close the output, wait for the command, stop anything it left in its group, collect
    /// its stderr and record the outcome. Only called once the output reached its end.
    fn reap(&mut self) {
        self.stdout = None;
        let pid = self.child.id();
        // Wait without reaping, so the group id cannot be reused before the group is killed.
        wait_exited_keep_zombie(pid);
        kill_group(pid);
        let status = self.child.wait();
        if let Some(reader) = self.stderr_reader.take() {
            // Every writer of stderr is gone (the group was killed), so this returns.
            let _ = reader.join();
        }
        let stderr_tail = match self.stderr_tail.lock() {
            Ok(tail) => String::from_utf8_lossy(&tail).trim().to_string(),
            Err(_) => String::new(),
        };
        let failure = match status {
            Ok(status) if status.success() => None,
            Ok(status) => Some(describe_status(status)),
            Err(e) => Some(format!("could not be waited for: {e}")),
        };
        self.outcome = Some(match failure {
            None => Ok(()),
            Some(status) => Err(ShardOpenError::CommandFailed {
                command: self.command.clone(),
                status,
                stderr_tail,
            }),
        });
    }
}

impl Drop for PipeCommand {
    fn drop(&mut self) {
        if self.outcome.is_some() {
            return;
        }
        // Abandoned before its end: stop the whole group and reap `sh`. The stderr thread is
        // left to end on its own when the pipe closes.
        self.stdout = None;
        kill_group(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `exited with status 3` / `was killed by signal 9`.
fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

/// Block until process `pid` (our child) has exited, leaving it a zombie so its pid (and so
/// its process group id) stays reserved until `Child::wait` reaps it.
fn wait_exited_keep_zombie(pid: u32) {
    // SAFETY: waitid only writes into the siginfo_t we own; pid is our own child.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        loop {
            let rc = libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT);
            if rc == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return;
            }
        }
    }
}

/// SIGKILL every process in the group led by `pid` (the command started with
/// `process_group(0)`); a group that is already empty is fine.
fn kill_group(pid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill has no memory effects; a negative pid addresses our child's own group.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::ops::ControlFlow;

    use crate::error::SkipReason;
    use crate::tar_reader::for_each_sample_in;

    /// A tar of `samples` samples, each `NNN.txt` (a caption) + `NNN.bin` (`payload` bytes).
    fn tar_bytes(samples: usize, payload: usize) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for i in 0..samples {
            let caption = format!("caption {i}");
            // Pseudo-random payload so compression leaves real data to corrupt.
            let data: Vec<u8> = (0..payload)
                .map(|j| ((i * 7919 + j * 104_729) % 251) as u8 ^ (j >> 3) as u8)
                .collect();
            for (ext, bytes) in [("txt", caption.as_bytes()), ("bin", &data[..])] {
                let mut header = tar::Header::new_gnu();
                header.set_size(bytes.len() as u64);
                header.set_mode(0o644);
                header.set_cksum();
                builder
                    .append_data(&mut header, format!("{i:03}.{ext}"), bytes)
                    .unwrap();
            }
        }
        builder.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn zstd_with_checksum(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        encoder.include_checksum(true).unwrap();
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn read_all(shard: &Path) -> io::Result<Vec<u8>> {
        let mut stream = open_shard(shard).map_err(io::Error::other)?;
        let mut out = Vec::new();
        stream.read_to_end(&mut out)?;
        stream.finish().map_err(io::Error::other)?;
        Ok(out)
    }

    /// Samples read, and errors that end the shard over `shard`: a read error, one met
    /// inside a member's data (which the tar reader counts as a truncated member), or one
    /// from `finish()` (a zstd checksum is only checked at the end of its frame, after the
    /// tar's end-of-archive blocks).
    fn tar_reader_counts(shard: &Path) -> (usize, usize, Vec<String>) {
        let mut stream = open_shard(shard).unwrap();
        let (mut samples, mut read_errors, mut details) = (0, 0, Vec::new());
        for_each_sample_in(shard, &mut stream, |item| {
            match item {
                Ok(_) => samples += 1,
                Err(skip) if matches!(skip.reason, SkipReason::ShardReadError | SkipReason::TruncatedMember) => {
                    read_errors += 1;
                    details.push(skip.detail);
                }
                Err(_) => {}
            }
            ControlFlow::Continue(())
        });
        if read_errors == 0 {
            if let Err(e) = stream.finish() {
                read_errors += 1;
                details.push(e.to_string());
            }
        }
        (samples, read_errors, details)
    }

    #[test]
    fn shard_kind_by_name() {
        for (name, kind) in [
            ("d/0.tar", ShardKind::Tar),
            ("d/0.tar.gz", ShardKind::Gzip),
            ("d/0.TGZ", ShardKind::Gzip),
            ("d/0.tar.zst", ShardKind::Zstd),
            ("pipe:cat d/0.tar.zst", ShardKind::Pipe),
            ("d/pipe:0.tar", ShardKind::Tar),
        ] {
            assert_eq!(shard_kind(Path::new(name)), kind, "{name}");
        }
        assert!(is_shard_file_name(Path::new("a/0.tar.zst")));
        assert!(is_shard_file_name(Path::new("0.tgz")));
        assert!(!is_shard_file_name(Path::new("a/sizes.json")));
        assert!(!is_shard_file_name(Path::new("a/0.zst")));
    }

    #[test]
    fn shard_streams_of_every_kind_give_the_same_tar_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_bytes(5, 3000);
        let plain = dir.path().join("0.tar");
        std::fs::write(&plain, &tar).unwrap();
        let gz = dir.path().join("0.tar.gz");
        // Two gzip members back to back: MultiGzDecoder must read both.
        let half = tar.len() / 2;
        let mut two_members = gzip(&tar[..half]);
        two_members.extend(gzip(&tar[half..]));
        std::fs::write(&gz, two_members).unwrap();
        let tgz = dir.path().join("0.tgz");
        std::fs::write(&tgz, gzip(&tar)).unwrap();
        let zst = dir.path().join("0.tar.zst");
        std::fs::write(&zst, zstd_with_checksum(&tar)).unwrap();
        // `pipe:` through a plain `cat` of the uncompressed tar.
        let pipe_cat = PathBuf::from(format!("pipe:cat '{}'", plain.display()));
        for shard in [&plain, &gz, &tgz, &zst, &pipe_cat] {
            assert_eq!(read_all(shard).unwrap(), tar, "{}", shard.display());
            assert_eq!(tar_reader_counts(shard), (5, 0, vec![]), "{}", shard.display());
        }
    }

    #[test]
    fn shard_skip_lands_on_the_same_byte_for_every_kind() {
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_bytes(4, 2000);
        let plain = dir.path().join("s.tar");
        std::fs::write(&plain, &tar).unwrap();
        let zst = dir.path().join("s.tar.zst");
        std::fs::write(&zst, zstd_with_checksum(&tar)).unwrap();
        let pipe = PathBuf::from(format!("pipe:cat '{}'", plain.display()));
        for shard in [&plain, &zst, &pipe] {
            let mut stream = open_shard(shard).unwrap();
            stream.skip(1536).unwrap();
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).unwrap();
            assert_eq!(rest, tar[1536..], "{}", shard.display());
            stream.finish().unwrap();

            let mut stream = open_shard(shard).unwrap();
            let err = stream.skip(tar.len() as u64 + 1).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{}", shard.display());
        }
    }

    #[test]
    fn shard_with_corrupt_zstd_frame_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_bytes(40, 4000);
        let compressed = zstd_with_checksum(&tar);
        assert!(compressed.len() > 1000);

        // Bytes flipped in the middle of the frame.
        let mut flipped = compressed.clone();
        let middle = flipped.len() / 2;
        for byte in &mut flipped[middle..middle + 64] {
            *byte ^= 0x5a;
        }
        let corrupt = dir.path().join("corrupt.tar.zst");
        std::fs::write(&corrupt, &flipped).unwrap();
        let err = read_all(&corrupt).unwrap_err();
        assert!(err.to_string().contains("corrupt.tar.zst"), "{err}");
        // Flipped bytes inside members may decompress to wrong bytes without an error until
        // the frame checksum, which finish() reads: the error is still counted once.
        let (_, read_errors, details) = tar_reader_counts(&corrupt);
        assert_eq!(read_errors, 1, "{details:?}");
        assert!(details[0].contains("corrupt.tar.zst"), "{details:?}");

        // A frame cut short.
        let truncated = dir.path().join("truncated.tar.zst");
        std::fs::write(&truncated, &compressed[..compressed.len() * 2 / 3]).unwrap();
        assert!(read_all(&truncated).is_err());
        let (samples, read_errors, details) = tar_reader_counts(&truncated);
        assert_eq!(read_errors, 1, "{details:?}");
        assert!(details[0].contains("truncated.tar.zst"), "{details:?}");
        assert!(samples < 40);
    }

    #[test]
    fn shard_with_corrupt_gzip_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_bytes(20, 4000);
        let mut compressed = gzip(&tar);
        let middle = compressed.len() / 2;
        for byte in &mut compressed[middle..middle + 64] {
            *byte ^= 0xa5;
        }
        let corrupt = dir.path().join("corrupt.tar.gz");
        std::fs::write(&corrupt, &compressed).unwrap();
        assert!(read_all(&corrupt).is_err());
        let (_, read_errors, _) = tar_reader_counts(&corrupt);
        assert_eq!(read_errors, 1);
    }

    #[test]
    fn shard_pipe_that_fails_reports_status_and_stderr() {
        let shard = Path::new("pipe:echo 'no such bucket' >&2; exit 3");
        let mut stream = open_shard(shard).unwrap();
        let mut out = Vec::new();
        let read_err = stream.read_to_end(&mut out).unwrap_err();
        assert!(read_err.to_string().contains("exited with status 3"), "{read_err}");
        match stream.finish() {
            Err(ShardOpenError::CommandFailed {
                command,
                status,
                stderr_tail,
            }) => {
                assert!(command.contains("exit 3"));
                assert_eq!(status, "exited with status 3");
                assert_eq!(stderr_tail, "no such bucket");
            }
            other => panic!("expected CommandFailed, got {other:?}"),
        }

        // finish() without reading first also waits and reports.
        let stream = open_shard(Path::new("pipe:exit 3")).unwrap();
        let err = stream.finish().unwrap_err();
        assert!(err.to_string().contains("`exit 3` exited with status 3"), "{err}");
    }

    #[test]
    fn shard_pipe_with_a_missing_command_fails_cleanly() {
        let shard = Path::new("pipe:ferroclip-no-such-command-xyz --flag");
        let stream = open_shard(shard).unwrap();
        match stream.finish() {
            Err(ShardOpenError::CommandFailed {
                status, stderr_tail, ..
            }) => {
                assert_eq!(status, "exited with status 127");
                assert!(stderr_tail.contains("ferroclip-no-such-command-xyz"), "{stderr_tail}");
            }
            other => panic!("expected CommandFailed, got {other:?}"),
        }
        // The tar reader sees a shard read error, not an empty shard.
        let (samples, read_errors, details) = tar_reader_counts(shard);
        assert_eq!((samples, read_errors), (0, 1), "{details:?}");
        assert!(details[0].contains("status 127"), "{details:?}");
    }

    #[test]
    fn shard_pipe_killed_by_signal_is_reported() {
        let stream = open_shard(Path::new("pipe:kill -TERM $$")).unwrap();
        let err = stream.finish().unwrap_err();
        assert!(err.to_string().contains("killed by signal 15"), "{err}");
    }

    #[test]
    fn shard_pipe_dropped_early_stops_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("still-running");
        // Endless output, and a background sleeper in the same group that would create the
        // marker file if it survived.
        let command = format!("pipe:(sleep 2; touch '{}') & yes tar-bytes", marker.display());
        let mut stream = open_shard(Path::new(&command)).unwrap();
        let mut first = [0u8; 1000];
        stream.read_exact(&mut first).unwrap();
        let started = std::time::Instant::now();
        drop(stream);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        std::thread::sleep(std::time::Duration::from_millis(2500));
        assert!(!marker.exists(), "a process of the pipe's group outlived the stream");

        // finish() after reading only a part: the command is stopped, not drained forever.
        let mut stream = open_shard(Path::new("pipe:yes tar-bytes")).unwrap();
        stream.read_exact(&mut first).unwrap();
        stream.finish().unwrap();
    }

    #[test]
    fn shard_open_errors_name_the_shard() {
        let err = open_shard(Path::new("/no/such/dir/0.tar.zst")).unwrap_err();
        assert!(err.to_string().contains("/no/such/dir/0.tar.zst"), "{err}");
        assert!(matches!(
            open_shard(Path::new("pipe:  ")),
            Err(ShardOpenError::EmptyCommand { .. })
        ));
    }

    #[test]
    fn shard_stream_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<ShardStream>();
    }
}
