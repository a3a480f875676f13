//! Moving worker output: line by line, prefixed with the rank on the console and
//! unprefixed into each rank's log file.
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::LaunchError;

/// A writer shared by the reader threads.
pub type SharedWriter = Arc<Mutex<dyn Write + Send>>;

/// Where the multiplexed worker output goes: worker stdout to `stdout`, worker
/// stderr to `stderr`, each line prefixed with `[rank R] `.
#[derive(Clone)]
pub struct Console {
    /// Receives the workers' stdout lines.
    pub stdout: SharedWriter,
    /// Receives the workers' stderr lines and the launcher's own notes.
    pub stderr: SharedWriter,
}

impl Console {
    /// The launcher's own stdout and stderr.
    pub fn std() -> Self {
        Self {
            stdout: Arc::new(Mutex::new(std::io::stdout())),
            stderr: Arc::new(Mutex::new(std::io::stderr())),
        }
    }

    /// Writes one line of the launcher's own to stderr. A closed console is not an
    /// error: the workers keep running and their logs are still written.
    pub(crate) fn note(&self, line: &str) {
        write_line(&self.stderr, b"[launch] ", line.as_bytes());
    }
}

/// Writes `prefix + line + '\n'` in one locked write; console errors are ignored
/// (a closed pipe must not stop the workers or the logs).
pub(crate) fn write_line(to: &SharedWriter, prefix: &[u8], line: &[u8]) {
    let mut buf = Vec::with_capacity(prefix.len() + line.len() + 1);
    buf.extend_from_slice(prefix);
    buf.extend_from_slice(line);
    buf.push(b'\n');
    if let Ok(mut w) = to.lock() {
        let _ = w.write_all(&buf);
        let _ = w.flush();
    }
}

/// One log file shared by a rank's stdout and stderr threads.
#[derive(Clone)]
pub(crate) struct RankLog {
    pub path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl RankLog {
    /// Creates (truncates) the log file.
    pub fn create(path: PathBuf) -> Result<Self, LaunchError> {
        let file = File::create(&path).map_err(|source| LaunchError::Log {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            path,
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// Appends one line (a newline is added).
    pub fn write_line(&self, line: &[u8]) -> std::io::Result<()> {
        let mut f = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("log lock poisoned"))?;
        f.write_all(line)?;
        f.write_all(b"\n")
    }
}

/// Creates the log folder and returns it.
pub(crate) fn create_log_dir(dir: &Path) -> Result<(), LaunchError> {
    std::fs::create_dir_all(dir).map_err(|source| LaunchError::Log {
        path: dir.to_path_buf(),
        source,
    })
}

/// Reads `reader` line by line until EOF and hands each line (without its
/// newline, trailing `\r` kept) to `on_line`. Non-UTF-8 bytes pass through.
pub(crate) fn for_each_line(reader: impl Read, mut on_line: impl FnMut(&[u8])) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => return,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                on_line(&buf);
            }
            // A read error on a pipe means the worker side is gone.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

/// A reader thread, and the signal (its channel closing) that it reached EOF.
pub(crate) struct Reader {
    handle: JoinHandle<Option<String>>,
    done: mpsc::Receiver<()>,
}

/// Runs `on_line` for every line of `reader` on a new thread. The thread keeps
/// draining the pipe after `on_line` fails (so a worker never blocks on a full
/// pipe) and returns the first failure.
pub(crate) fn spawn_reader(
    reader: impl Read + Send + 'static,
    mut on_line: impl FnMut(&[u8]) -> Result<(), String> + Send + 'static,
) -> Reader {
    let (done_tx, done) = mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        let mut first_error = None;
        for_each_line(reader, |line| {
            if let Err(e) = on_line(line) {
                first_error.get_or_insert(e);
            }
        });
        drop(done_tx);
        first_error
    });
    Reader { handle, done }
}

/// Forwards one worker stream: each line goes to the console with a `[rank R] `
/// prefix and unprefixed to the rank log.
pub(crate) fn pump_rank(
    reader: impl Read + Send + 'static,
    rank: usize,
    console: SharedWriter,
    log: RankLog,
) -> Reader {
    let prefix = format!("[rank {rank}] ");
    spawn_reader(reader, move |line| {
        write_line(&console, prefix.as_bytes(), line);
        log.write_line(line)
            .map_err(|e| format!("writing {} failed: {e}", log.path.display()))
    })
}

/// Joins the reader threads that finish before `deadline`, reporting their log
/// errors; a thread still blocked after it (a pipe held open by an escaped
/// grandchild) is left detached rather than hanging the launcher.
pub(crate) fn join_readers(readers: Vec<Reader>, patience: Duration, console: &Console) {
    let deadline = Instant::now() + patience;
    for Reader { handle, done } in readers {
        let left = deadline.saturating_duration_since(Instant::now());
        match done.recv_timeout(left) {
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Ok(Some(err)) = handle.join() {
                    console.note(&format!("warning: {err}"));
                }
            }
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {
                console
                    .note("warning: a worker's output pipe is still open (a stray child process?); not waiting for it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_on_newline_and_keep_a_last_partial_line() {
        let mut lines = Vec::new();
        for_each_line(&b"a\nb\xff\r\nlast"[..], |l| lines.push(l.to_vec()));
        assert_eq!(lines, vec![b"a".to_vec(), b"b\xff\r".to_vec(), b"last".to_vec()]);
    }
}
